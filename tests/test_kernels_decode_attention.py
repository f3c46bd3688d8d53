"""Triton decode attention vs the reference attention, on CPU through Triton's interpreter. The GPU
parity run at the paper's decode shapes is `python -m ablate.bench.decode_attention`."""

from __future__ import annotations

import pytest
import torch

from ablate.kernels.attention import MaskSpec, attention_ref
from ablate.model.decode import decode_attention
from kernel_support import use_interpreter

pytest.importorskip("triton", reason="the Triton fast path needs triton installed")

KERNEL_MODULE = "ablate.kernels.triton.decode_attention"


@pytest.fixture(params=["auto", "4", "1"], ids=["auto-splits", "4-splits", "one-pass"])
def interpreted(request, monkeypatch):
    """Tiles of 16 keys so the tests' caches span several; the keys split over programs (each writes
    a partial softmax, a second kernel merges them: as many as the launch heuristic picks, or four,
    a tile each) or read in one pass per (sequence, KV head)."""
    config = {"ABLATE_DECODE_ATTENTION_CONFIG": "16,1,1"}
    if request.param != "auto":
        config["ABLATE_DECODE_ATTENTION_SPLITS"] = request.param
    monkeypatch.delenv("ABLATE_DECODE_ATTENTION_BACKEND", raising=False)  # it would override backend="triton"
    use_interpreter(monkeypatch, KERNEL_MODULE, "_decode_attention_kernel", **config)


def _check(q, k, v, spec, dtype, tol):
    q, k, v = (t.to(dtype) for t in (q, k, v))
    ref = attention_ref(q.double(), k.double(), v.double(), spec)
    out = decode_attention(q, k, v, spec, backend="triton")
    assert out.shape == ref.shape and out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gqa_over_a_wrapped_ring_with_meta_tokens_and_padding(interpreted, dtype, tol):
    """Three query heads per KV head, head sizes off the tile (8, 12), a sliding-window ring buffer
    that has wrapped (slots out of order) behind two meta slots, unwritten slots in one sequence."""
    g = torch.Generator().manual_seed(0)
    b, hq, hkv, d, dv, meta, window = 3, 6, 2, 8, 12, 2, 30
    ring = torch.arange(40, 70)
    k_pos = torch.cat([torch.arange(meta), ring.roll(7)]).unsqueeze(0)  # 32 slots
    valid = torch.ones(b, k_pos.shape[1], dtype=torch.bool)
    valid[1, 20:27] = False
    q = torch.randn(b, hq, 1, d, generator=g)
    k = torch.randn(b, hkv, k_pos.shape[1], d, generator=g)
    v = torch.randn(b, hkv, k_pos.shape[1], dv, generator=g)
    spec = MaskSpec(torch.tensor([[69]]), k_pos, window, meta, valid)
    _check(q, k, v, spec, dtype, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_multi_head_full_cache_with_a_partial_tile_and_a_fully_masked_split(interpreted, dtype, tol):
    """One query head per KV head over 53 keys (the last tile partial); the window leaves the keys
    between the meta tokens and the last few masked, so a whole split of them sees nothing."""
    g = torch.Generator().manual_seed(1)
    b, h, d, lk = 2, 3, 16, 53
    pos = torch.arange(lk).unsqueeze(0)
    q = torch.randn(b, h, 1, d, generator=g)
    k, v = torch.randn(b, h, lk, d, generator=g), torch.randn(b, h, lk, d, generator=g)
    _check(q, k, v, MaskSpec(torch.tensor([[lk - 1]]), pos, window=6, num_meta=2), dtype, tol)
    # and a plain causal cache whose tail slots are not written yet
    valid = (pos < 41).expand(b, lk)
    _check(q, k, v, MaskSpec(torch.tensor([[40]]), pos, key_valid=valid), dtype, tol)


def test_launch_choice_reads_a_short_cache_in_one_pass_per_head_with_small_tiles(monkeypatch):
    """A short cache (a sliding-window ring) takes 32-key tiles and no key splits once the
    (sequence, KV head) pairs cover the SMs; a long cache, or too few pairs, keeps the split-K
    launch. (CPU: the heuristic counts 4 SMs.)"""
    from ablate.kernels.triton.decode_attention import launch_config, num_splits

    monkeypatch.delenv("ABLATE_DECODE_ATTENTION_CONFIG", raising=False)
    monkeypatch.delenv("ABLATE_DECODE_ATTENTION_SPLITS", raising=False)
    cpu = torch.device("cpu")
    assert launch_config(256) == (32, 2, 3) and launch_config(8224) == (64, 4, 3)
    assert num_splits(8, 256, 32, cpu) == 1
    assert num_splits(2, 256, 32, cpu) == 8  # two pairs on four SMs: split to ~4 programs per SM
    assert num_splits(2, 8224, 64, cpu) == 8
    monkeypatch.setenv("ABLATE_DECODE_ATTENTION_SPLITS", "3")
    assert num_splits(8, 256, 32, cpu) == 3


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_short_cache_with_the_default_launch(monkeypatch, dtype, tol):
    """The launch a short cache gets by default (32-key tiles, one pass per head) over a wrapped
    ring with meta slots and grouped heads."""
    monkeypatch.delenv("ABLATE_DECODE_ATTENTION_BACKEND", raising=False)
    monkeypatch.delenv("ABLATE_DECODE_ATTENTION_CONFIG", raising=False)
    monkeypatch.delenv("ABLATE_DECODE_ATTENTION_SPLITS", raising=False)
    use_interpreter(monkeypatch, KERNEL_MODULE, "_decode_attention_kernel")
    g = torch.Generator().manual_seed(2)
    b, hq, hkv, d, meta = 4, 4, 2, 16, 3
    ring = torch.arange(100, 170).roll(11)
    k_pos = torch.cat([torch.arange(meta), ring]).unsqueeze(0)  # 73 slots: three tiles, the last partial
    q = torch.randn(b, hq, 1, d, generator=g)
    k, v = torch.randn(b, hkv, k_pos.shape[1], d, generator=g), torch.randn(b, hkv, k_pos.shape[1], d, generator=g)
    _check(q, k, v, MaskSpec(torch.tensor([[169]]), k_pos, 70, meta), dtype, tol)
