"""The throughput / cache benchmark on CPU at tiny scale: the record it writes, batch halving on
out-of-memory, the prefill budget, run directories, the paper suite, and the transformers anchors."""

import json
import os
import time

import pytest
import torch
from typer.testing import CliRunner

from ablate.bench import paper_suite
from ablate.bench.anchors import anchor_family, build_anchor, hf_llama_config, hf_mamba2_config
from ablate.bench.throughput import BenchOOM, Protocol, bench_ablate, with_batch_halving
from ablate.cli import app
from ablate.model.hf_import import from_transformers
from ablate.registry import build_model, resolve

SCHEMA = {"variant", "scale", "protocol", "prefill_tokens_per_s", "decode_tokens_per_s", "decode_bound_tokens_per_s",
          "peak_memory_gb", "cache_mb_measured", "cache_mb_analytic", "config_hash", "provenance"}
PROTOCOL_KEYS = {"prompt_len", "gen_tokens", "batch_requested", "batch", "dtype", "device"}
runner = CliRunner()


def _tiny_protocol(**kwargs):
    base = dict(prompt_len=12, gen_tokens=3, batch=3, dtype="fp32", device="cpu", prefill_rows=2)
    return Protocol(**{**base, **kwargs})


def test_bench_measures_and_cache_bytes_agree():
    model = build_model("table1-13-meta-tokens", "tiny").eval()
    result = bench_ablate(model, _tiny_protocol())
    assert result["protocol"]["batch"] == 3 and result["prefilled_rows"] == 3
    assert result["cache_exact"] and result["cache_mb_measured"] == result["cache_mb_analytic"]
    assert result["cache_tokens"] == 12 + 2 + 3  # prompt + warm-up + timed steps
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    bound = result["decode_bound_tokens_per_s"]
    assert bound == pytest.approx(3 / ((result["weight_bytes"] + result["cache_bytes"]) / 3.0e12))
    assert result["decode_bound_fraction"] == pytest.approx(result["decode_tokens_per_s"] / bound)


def test_batch_halves_on_out_of_memory_until_it_fits():
    def run(batch):
        if batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"batch": batch}

    assert with_batch_halving(run, 16) == ({"batch": 2}, [16, 8, 4])
    with pytest.raises(BenchOOM):
        with_batch_halving(lambda b: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory")), 4)
    with pytest.raises(ValueError, match="not an OOM"):  # other errors are not retried
        with_batch_halving(lambda b: (_ for _ in ()).throw(ValueError("not an OOM")), 4)


def test_prefill_budget_copies_prefilled_rows_and_times_past_the_first_chunk():
    model = build_model("table3-samba", "tiny").eval()
    prompt_calls = []

    def slow_first_prefill(module, args, kwargs):
        # the first prefill chunk stands in for one that compiles kernels
        if kwargs["input_ids"].shape[1] == 12:
            prompt_calls.append(1)
            if len(prompt_calls) == 1:
                time.sleep(1.0)

    model.register_forward_pre_hook(slow_first_prefill, with_kwargs=True)
    result = bench_ablate(model, _tiny_protocol(batch=4, prefill_rows=1, prefill_budget_s=0.0))
    # the (zero) budget stopped it after the second chunk: the first alone gives no timed rate
    assert result["prefilled_rows"] == 2 and len(prompt_calls) == 2
    assert result["prefill_tokens_per_s"] > 12 / 0.5  # the slow first chunk is not in the rate
    assert result["protocol"]["batch"] == 4 and result["decode_tokens_per_s"] > 0


def test_bench_cli_on_a_run_directory_writes_bench_json(tmp_path):
    model = build_model("table3-llama3", "tiny")
    run = tmp_path / "run"
    model.save_pretrained(run / "model")
    (run / "run.json").write_text(json.dumps({"variant": "table3-llama3", "scale": "tiny", "config_hash": "abc123"}))
    result = runner.invoke(app, ["bench", str(run), "--seq-len", "10", "--batch", "2", "--gen-tokens", "2", "--dtype", "fp32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "bench.json").read_text())
    assert SCHEMA <= set(record) and PROTOCOL_KEYS <= set(record["protocol"])
    assert record["variant"] == "table3-llama3" and record["config_hash"] == "abc123"
    assert record["protocol"]["prompt_len"] == 10 and record["cache_exact"]


def test_bench_cli_bare_variant_prints_or_writes(tmp_path):
    args = ["bench", "table1-01-mamba", "--scale", "tiny", "--seq-len", "8", "--batch", "2", "--gen-tokens", "2", "--dtype", "fp32", "--device", "cpu"]
    printed = runner.invoke(app, args)
    assert printed.exit_code == 0, printed.output
    assert "table1-01-mamba" in printed.output and not list(tmp_path.iterdir())
    written = runner.invoke(app, args + ["--out", str(tmp_path / "b")])
    assert written.exit_code == 0, written.output
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["variant"] == "table1-01-mamba"


def test_bench_cli_rejects_unknown_variant_in_one_line():
    result = runner.invoke(app, ["bench", "table1-99-nope", "--scale", "tiny", "--device", "cpu"])
    assert result.exit_code == 2
    assert "unknown variant" in result.output and len(result.output.strip().splitlines()) == 1


def test_paper_suite_runs_entries_and_records_a_failure(tmp_path, monkeypatch):
    real = paper_suite.run_entry

    def flaky(entry, scale, protocol, say):
        if entry == "table1-06-llama":
            raise RuntimeError("kernel exploded")
        if entry == "table3-samba" and os.environ.get("ABLATE_ATTENTION_BACKEND") != "sdpa":
            raise RuntimeError("flex compile failed")  # fixed by the fallback backend
        return real(entry, scale, protocol, say)

    monkeypatch.setattr(paper_suite, "run_entry", flaky)
    out = tmp_path / "suite"
    args = ["--out", str(out), "--scale", "tiny", "--device", "cpu", "--dtype", "fp32", "--seq-len", "10", "--batch", "2",
            "--gen-tokens", "2", "--only", "table1-13-meta-tokens", "--only", "table1-06-llama", "--only", "anchor:table3-llama3",
            "--only", "table3-samba"]
    import typer

    cli = typer.Typer()
    cli.command()(paper_suite.main)
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    ok = json.loads((out / "table1-13-meta-tokens.json").read_text())
    assert ok["cache_exact"] and "provenance" in ok
    failed = json.loads((out / "table1-06-llama.json").read_text())["error"]
    assert failed.startswith("RuntimeError: kernel exploded") and "ABLATE_ATTENTION_BACKEND" in failed
    retried = json.loads((out / "table3-samba.json").read_text())
    assert retried["fallback"]["first_error"] == "RuntimeError: flex compile failed" and retried["decode_tokens_per_s"] > 0
    assert "ABLATE_ATTENTION_BACKEND" not in os.environ, "the fallback backend must not leak into later entries"
    assert "kernel exploded" in (out / "table1-06-llama.error.txt").read_text()
    anchor = json.loads((out / "anchor-table3-llama3.json").read_text())
    assert anchor["kind"] == "transformers" and anchor["anchor_class"] == "LlamaForCausalLM" and anchor["decode_tokens_per_s"] > 0
    md = (out / "bench.md").read_text()
    assert "table1-13-meta-tokens" in md and "kernel exploded" in md and "Command:" in md
    assert len((out / "bench.csv").read_text().strip().splitlines()) == 5


def test_suite_order_puts_the_ratio_pair_first():
    entries = paper_suite.suite_entries()
    assert entries[:2] == ["table1-13-meta-tokens", "table1-06-llama"]
    assert {e for e in entries if not e.startswith("anchor:")} == {n for n in __import__("ablate.registry").registry.variant_names() if n.startswith(("table1-", "table3-"))}
    assert {"anchor:table1-06-llama", "anchor:table3-llama3", "anchor:table3-mamba2"} <= set(entries)


@pytest.mark.parametrize("name", ["table3-llama3", "table1-06-llama", "table3-mamba2"])
def test_anchor_config_is_the_reverse_of_the_importer(name):
    config = resolve(name, "tiny").config
    anchor = build_anchor(config, torch.float32, "cpu")
    back = from_transformers(anchor).config
    for field in ("hidden_size", "num_hidden_layers", "vocab_size", "tie_word_embeddings", "block"):
        assert getattr(back, field) == getattr(config, field), field
    if anchor_family(config) == "llama":
        for field in ("num_attention_heads", "num_key_value_heads", "resolved_head_dim", "intermediate_size", "rope_theta"):
            assert getattr(back, field) == getattr(config, field), field
    else:
        for field in ("ssm_state_size", "ssm_head_dim", "ssm_n_groups", "ssm_expand", "ssm_conv_kernel", "ssm_chunk_size"):
            assert getattr(back, field) == getattr(config, field), field


def test_no_anchor_for_hybrids():
    assert anchor_family(resolve("table1-13-meta-tokens", "tiny").config) is None
    assert anchor_family(resolve("table3-samba", "tiny").config) is None
    assert hf_llama_config(resolve("table3-llama3", "paper").config).num_key_value_heads == 8
    assert hf_mamba2_config(resolve("table3-mamba2", "paper").config).num_heads == 64


def test_graph_check_agrees_with_full_forward_eagerly_on_cpu():
    from ablate.bench.graph_check import check_variant

    result = check_variant("table1-13-meta-tokens", "tiny", "cpu", torch.float32)
    assert result["max_abs_diff"] < 1e-4 and result["graph"] is False


def test_decode_profile_lists_the_kernels_of_one_step_on_cpu():
    """The profile script's CPU smoke path: a prefilled row copied into the batch, one eager step
    profiled, its ops ranked by time."""
    from ablate.bench.decode_profile import profile_variant

    r = profile_variant("table1-13-meta-tokens", batch=3, keys=24, backend="reference", scale="tiny", device="cpu", prefill_rows=2)
    assert "ABLATE_DECODE_ATTENTION_BACKEND" not in os.environ  # the forced backend does not outlive the call
    assert r["graph_ms"] is None and r["eager_gpu_ms"] > 0 and r["floor_ms"] > 0
    times = [k["ms_per_step"] for k in r["kernels"]]
    assert times and times == sorted(times, reverse=True) and all(k["calls_per_step"] >= 1 for k in r["kernels"])


@pytest.mark.parametrize("op", ["gate_up_silu", "greedy_tokens"])
def test_decode_profile_toggles_the_op_it_is_told_and_refuses_unknown_ones(op):
    import typer

    from ablate.bench.decode_profile import profile_variant

    r = profile_variant("table3-mamba2-ffn", 2, 8, "reference", op, scale="tiny", device="cpu")
    assert r["backend"] == "reference" and f"ABLATE_{op.upper()}_BACKEND" not in os.environ
    with pytest.raises(typer.BadParameter, match="unknown op 'gate_up'.*gate_up_silu"):
        profile_variant("table3-mamba2-ffn", 2, 8, "reference", "gate_up", scale="tiny", device="cpu")


def test_decode_attention_bench_masks_what_each_layer_sees():
    """The benchmark's inputs: a full layer sees every key, a sliding-window layer its meta tokens and
    its ring (which has wrapped), a padded row fewer; one entry per distinct shape of the paper variants."""
    from ablate.bench.decode_attention import attention_shapes, inputs

    shapes = attention_shapes(8192, 32)
    assert any(s[5] is None for s in shapes) and any(s[5] is not None for s in shapes)
    assert any("table1-06-llama" in v for v in shapes.values()) and any("table3-hymba" in v for v in shapes.values())
    for shape in [(4, 2, 8, 8, 40, None, 0), (4, 2, 8, 8, 14, 10, 4)]:
        q, k, v, spec = inputs(shape, 2, "cpu", torch.float32, padded=True)
        seen = spec.dense().reshape(2, -1).sum(-1).tolist()
        keys = shape[4]
        assert seen == [keys - keys // 4, keys], (shape, seen)  # row 0 loses a quarter of the slots after the meta tokens
        assert k.shape == (2, 2, keys, 8) and q.shape == (2, 4, 1, 8)


def test_decode_steps_benchmarks_the_ffn_of_every_variant_that_has_one():
    from ablate.bench.decode_steps import ffn_shapes

    ffn = {v for names in ffn_shapes().values() for v in names}
    assert {"table3-mamba2-ffn", "table3-samba", "table3-hymba", "table1-06-llama"} <= ffn
    assert not ffn & {"table3-mamba2", "table1-01-mamba"}
