"""The training-step benchmark: its FLOP accounting (checked against the masks and the parameters it
claims to count) and one quick CPU run of the whole command at scale tiny."""

import json

import torch

from ablate.bench.train_step import main, matmul_params, step_flops, visible_pairs
from ablate.kernels import MaskSpec
from ablate.registry import build_model, resolve


def test_visible_pairs_count_exactly_what_the_mask_allows():
    for length, window, meta in [(50, None, 0), (50, 7, 0), (50, 7, 3), (50, 60, 5), (9, 3, 4)]:
        pos = torch.arange(length)[None]
        dense = MaskSpec(pos, pos, window, meta, aligned=True).dense()
        assert visible_pairs(length, window, meta) == int(dense.sum()), (length, window, meta)


def test_matmul_params_leave_out_embeddings_but_count_the_tied_head():
    model = build_model(resolve("table3-hymba", "tiny"))
    c = model.config
    assert c.tie_word_embeddings and c.num_meta_tokens > 0
    total = sum(p.numel() for p in model.parameters())
    # tied: the table counts once among the parameters; the head's matmul still runs
    assert matmul_params(model) == total - c.num_meta_tokens * c.hidden_size


def test_llama_flops_match_the_textbook_count():
    model = build_model(resolve("table3-llama3", "tiny"))
    c = model.config
    b, seq = 3, 40
    f = step_flops(model, b, seq)
    n = sum(p.numel() for p in model.parameters())  # tied embeddings: the table doubles as the head
    assert f.dense == 6 * n * b * seq
    d = c.hidden_size // c.num_attention_heads
    assert f.attention == c.num_hidden_layers * 12 * c.num_attention_heads * d * (seq * (seq + 1) // 2) * b
    assert f.scan == 0


def test_meta_tokens_cost_the_blocks_but_not_the_head():
    model = build_model(resolve("table3-hymba", "tiny"))
    c = model.config
    b, seq, m = 2, 30, c.num_meta_tokens
    head = c.vocab_size * c.hidden_size
    body = matmul_params(model) - head
    assert step_flops(model, b, seq).dense == 6 * (body * (seq + m) + head * seq) * b


def test_cpu_run_writes_a_row_per_point(tmp_path):
    points = main([
        "--out", str(tmp_path), "--scale", "tiny", "--device", "cpu", "--no-compile",
        "--variants", "table3-mamba2", "table3-hymba",
        "--seqs", "16", "--batch", "1", "--warmup", "1", "--steps", "1",
    ])
    assert [p.status for p in points] == ["ok"] * 2
    record = json.loads((tmp_path / "train_step.json").read_text())
    rows = {p["variant"]: p for p in record["points"]}
    assert set(rows) == {"table3-mamba2", "table3-hymba"}
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["step_ms"] > 0 and 0 < row["mfu"] < 1
        assert row["gflop_per_token"] > 0
    assert rows["table3-mamba2"]["attention_gflop_per_token"] == 0 and rows["table3-mamba2"]["scan_gflop_per_token"] > 0
    assert rows["table3-hymba"]["backends"]["attention"].startswith("full:")
    assert (tmp_path / "train_step.md").read_text().count("\n") >= 5
