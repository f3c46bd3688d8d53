"""Data: source specs, mixing by weight, prepare (local text/jsonl/parquet, default offline mix),
the manifest, packed windows and document indices, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from train_support import tiny_data  # noqa: F401  (fixture)

from ablate.data.packed import PackedWindows, TokenStream, document_index, read_manifest
from ablate.data.prepare import prepare
from ablate.data.sources import DataError, mix, parse_sources
from ablate.data.tokenizer import load_tokenizer


def test_source_spec_parsing_and_errors(tmp_path):
    s = parse_sources("python-stdlib@0.8,synthetic:mqar@0.1,synthetic:phonebook@0.1")
    assert [x.kind for x in s] == ["python-stdlib", "synthetic", "synthetic"]
    assert abs(sum(x.weight for x in s) - 1) < 1e-9 and abs(s[0].weight - 0.8) < 1e-9
    hub = parse_sources("HuggingFaceTB/smollm-corpus:cosmopedia-v2@3,HuggingFaceTB/smollm-corpus:fineweb-edu-dedup@1")
    assert hub[0].kind == "hub" and hub[0].config == "cosmopedia-v2" and abs(hub[0].weight - 0.75) < 1e-9
    (tmp_path / "a.jsonl").write_text('{"content": "x"}\n')
    local = parse_sources(f"{tmp_path}/a.jsonl#content")
    assert local[0].kind == "local" and local[0].text_field == "content"
    for bad, needle in [
        (f"{tmp_path}/missing.txt", "no such file"),
        ("synthetic:nope", "unknown synthetic task"),
        ("python-stdlib@abc", "not a number"),
        ("python-stdlib@0", "must be positive"),
        (str(tmp_path / "emptydir") + "/", "no such file"),
        ("", "empty source spec"),
    ]:
        with pytest.raises(DataError, match=needle):
            parse_sources(bad)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="has no .txt"):
        parse_sources(str(tmp_path / "emptydir"))


def test_needle_training_source():
    """``synthetic:needle``: needle documents that end with their own answer, of varied lengths."""
    import itertools
    import re

    from ablate.data.sources import documents

    (src,) = parse_sources("synthetic:needle")
    docs = [text for text, _ in itertools.islice(documents(src), 20)]
    for text in docs:
        city, number = re.search(r"special magic number for (\w+) is (\d{7})\.", text).groups()
        assert text.endswith(f"The special magic number for {city} is {number}.\n")
    assert len({len(t) for t in docs}) > 10


def test_mix_follows_weights_and_stops_at_first_exhausted():
    a = iter(["aa"] * 1000)  # 2 units each
    b = iter(["b"] * 50)  # runs out first
    out = list(mix([a, b], [0.75, 0.25], len))
    units = [sum(len(x) for i, x in out if i == k) for k in (0, 1)]
    assert units[1] == 50  # b exhausted, then the mix stops
    assert abs(units[0] / sum(units) - 0.75) < 0.02


def test_prepare_local_files_roundtrip(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text("def alpha():\n    return 1\n" * 40)
    (src / "b.txt").write_text("class Beta:\n    pass\n" * 40)
    (src / "c.jsonl").write_text("".join(json.dumps({"text": f"record number {i} " * 20}) + "\n" for i in range(30)))
    pd.DataFrame({"text": [f"parquet row {i} " * 20 for i in range(30)], "id": range(30)}).to_parquet(src / "d.parquet")
    out = tmp_path / "prepared"
    m = prepare(str(src), "bpe:300", out, val_fraction=0.05, quiet=True)
    assert (out / "manifest.json").exists() and not list(tmp_path.glob(".prepared.tmp-*"))
    assert m["documents"] == 2 + 30 + 30 and m["splits"]["val"]["documents"] >= 1
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] <= 300
    assert len(m["sources"][0]["files"]) == 4 and all(len(f["sha256"]) == 64 for f in m["sources"][0]["files"])
    # the first document decodes back to the first file's text, followed by EOS
    tok = load_tokenizer(out / "tokenizer")
    stream = TokenStream(out, "train")
    eos = m["tokenizer"]["eos_id"]
    ids = stream.read(0, len(stream))
    first_end = int(np.argmax(ids == eos))
    assert tok.decode(ids[:first_end].tolist()) == (src / "a.txt").read_text()
    assert (ids == eos).sum() == m["splits"]["train"]["documents"]
    # a loaded (not trained) tokenizer: the one just saved, given as a directory
    m2 = prepare(str(src / "c.jsonl"), str(out / "tokenizer"), tmp_path / "p2", val_fraction=0, quiet=True)
    assert m2["tokenizer"]["kind"] != "bpe" and m2["splits"]["train"]["documents"] == 30
    # a bare tokenizer.json (no tokenizer_config.json): its EOS is found by name
    m3 = prepare(str(src / "c.jsonl"), str(out / "tokenizer" / "tokenizer.json"), tmp_path / "p3", val_fraction=0, quiet=True)
    assert m3["tokenizer"]["eos_token"] == "<|endoftext|>" and m3["splits"]["train"]["tokens"] == m2["splits"]["train"]["tokens"]


def test_prepare_failures_leave_nothing_behind(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"body": "no text field here"}\n')
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match="no 'text' field .*SOURCE#FIELD"):
        prepare(str(tmp_path / "x.jsonl"), "bpe:300", out, quiet=True)
    assert not out.exists() and not list(tmp_path.glob(".prepared.tmp-*"))
    with pytest.raises(DataError, match="hub"):
        prepare("someone/some-dataset", "bpe:300", out, max_tokens=100, quiet=True)
    with pytest.raises(DataError, match="not loadable.*offline default"):
        prepare(str(tmp_path / "x.jsonl#body"), "someone/no-such-tokenizer", out, quiet=True)
    assert not out.exists()


def test_default_mix_manifest(tiny_data):
    m = read_manifest(tiny_data)
    shares = {s["spec"]: s["tokens"] / m["tokens"] for s in m["sources"]}
    # the mix follows its weights by tokens (to within one document)
    assert abs(shares["python-stdlib"] - 0.8) < 0.08 and abs(shares["synthetic:mqar"] - 0.1) < 0.03
    stdlib = next(s for s in m["sources"] if s["spec"] == "python-stdlib")
    assert stdlib["files"] and stdlib["documents"] == len(stdlib["files"]) and all(f["path"].endswith(".py") for f in stdlib["files"])
    assert 0.02 < m["splits"]["val"]["tokens"] / m["tokens"] < 0.08
    assert m["tokenizer"]["vocab_size"] == 256 and m["tokenizer"]["eos_token"] == "<|endoftext|>"


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        read_manifest(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not a prepared data dir"):
        read_manifest(tmp_path / "other")


def test_document_index_and_batches(tiny_data):
    assert document_index(np.array([[5, 0, 7, 8, 0, 9]]), eos=0).tolist() == [[0, 0, 1, 1, 1, 2]]
    m = read_manifest(tiny_data)
    w = PackedWindows(TokenStream(tiny_data, "train"), 32, m["tokenizer"]["eos_id"], seed=3, document_masking=True)
    b = w.train_micro_batch(step=5, global_batch=8, micro=0, micro_batch=8, rank=0, world=1)
    assert b.input_ids.shape == (8, 32) and b.seq_idx.shape == (8, 32)
    assert (b.labels[:, :-1] == b.input_ids[:, 1:]).all()  # labels are the next tokens
    # the same global batch, split over 2 ranks x 2 micro steps, in order
    parts = [w.train_micro_batch(5, 8, micro, 2, rank, 2).input_ids for micro in range(2) for rank in range(2)]
    assert (np.concatenate(parts) == b.input_ids.numpy()).all()
    # deterministic from (seed, step), different across steps and seeds
    again = PackedWindows(TokenStream(tiny_data, "train"), 32, m["tokenizer"]["eos_id"], seed=3)
    assert (again.train_micro_batch(5, 8, 0, 8, 0, 1).input_ids == b.input_ids).all()
    assert not (w.train_micro_batch(6, 8, 0, 8, 0, 1).input_ids == b.input_ids).all()
    # every window appears once per epoch
    n = w.num_windows
    assert sorted(w.slot_windows(np.arange(n)).tolist()) == list(range(n))


def test_data_cli(tmp_path, tiny_data):
    from typer.testing import CliRunner

    from ablate.cli import app

    (tmp_path / "doc.txt").write_text("hello world, this is a document\n" * 50)
    r = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "doc.txt"), "--tokenizer", "bpe:260", "--out", str(tmp_path / "p"), "--val-fraction", "0"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["data", "show", str(tiny_data)])
    assert r.exit_code == 0 and "python-stdlib" in r.output and "synthetic:mqar" in r.output
    r = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "q")])
    assert r.exit_code == 2 and "no such file" in r.output and len(r.output.strip().splitlines()) == 1


def test_bpe_with_room_for_all_bytes_is_lossless():
    from ablate.data.tokenizer import train_bpe

    texts = ["def f(x):\n    return x + 1\n" * 20, "plain English text, repeated. " * 20]
    tok = train_bpe(iter(texts), 600)
    assert len(tok) <= 600 and tok.unk_token is None
    odd = "naïve café — 😀 \x00\t end"  # bytes never seen in training still round-trip
    assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd


@pytest.mark.parametrize("task", ["mqar", "phonebook"])
def test_synthetic_recall_is_plain_induction_in_tokens(task):
    """With a byte-level BPE trained on the task, the query's last token occurs once in the context,
    directly followed there by the answer's tokens: recall is plain induction (find the current
    token earlier, copy what followed it). Fails for a name at the start of a line, a value glued to
    "=", a separator or "is" between key and value, or keys sharing their last token."""
    from ablate.data import synthetic
    from ablate.data.tokenizer import train_bpe

    tok = train_bpe(synthetic.training_documents(task, 400, seed=1), 400)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for e in synthetic.eval_examples(task, 20):
        context, query, answer = ids(e.context), ids(e.context + e.query), ids(e.context + e.query + e.answer)
        assert query[: len(context)] == context and answer[: len(query)] == query  # splits on token edges
        last = query[-1]
        assert context.count(last) == 1, (e.context, e.query)
        i = context.index(last)
        value = answer[len(query) :]
        assert context[i + 1 : i + 1 + len(value)] == value, (e.query, e.answer)
