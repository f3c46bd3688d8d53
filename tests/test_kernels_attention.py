"""Attention fast paths against the reference: SDPA (forward and gradients), FlexAttention (forward on
CPU: torch refuses its CPU backward; gradients are checked on the GPU by ``ablate.bench.fastpaths``),
and the FlexAttention mask itself, pair by pair, against ``MaskSpec.dense``."""

import pytest
import torch

from ablate.kernels import MaskSpec, attention_ref
from ablate.kernels.attention import _ATTENTION, attention, attention_sdpa
from ablate.kernels.flex import HAVE_FLEX, _batch_of, attention_flex, block_mask_for, flex_available, mask_mod_for


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _aligned(b, length, window=None, meta=0, docs=None, pad=None):
    pos = torch.arange(length).unsqueeze(0)
    seq = docs
    return MaskSpec(pos, pos, window, meta, key_valid=pad, aligned=True, q_seq=seq, k_seq=seq)


def _documents(b, length):
    # random document boundaries per row, every row starting a new document somewhere
    cuts = torch.rand(b, length) < 0.15
    cuts[:, 0] = False
    return cuts.long().cumsum(-1)


def _cache_step(b, lq, lk, window, meta):
    """Queries at the end of a ring-buffer cache: keys out of order, some slots unwritten."""
    total = lk + 5
    k_pos = torch.stack([torch.randperm(total)[:lk] for _ in range(b)])
    k_pos[:, :meta] = torch.arange(meta)  # meta tokens sit in the first slots
    q_pos = torch.arange(total - lq, total).unsqueeze(0).expand(b, -1)
    valid = torch.rand(b, lk) > 0.2
    valid[:, :meta] = True
    return MaskSpec(q_pos, k_pos, window, meta, key_valid=valid, aligned=False)


def _specs(b, length):
    """(name, spec, lk) for every kind of mask the model builds."""
    pad = torch.ones(b, length, dtype=torch.bool)
    pad[0, : length // 3] = False  # left padding in row 0 (after meta tokens would be 0.. anyway)
    pad[:, :2] = True
    return [
        ("causal", _aligned(b, length), length),
        ("swa", _aligned(b, length, window=7), length),
        ("swa+meta", _aligned(b, length, window=5, meta=3), length),
        ("documents+meta", _aligned(b, length, meta=2, docs=_documents(b, length)), length),
        ("swa+documents", _aligned(b, length, window=6, docs=_documents(b, length)), length),
        ("padding+meta", _aligned(b, length, window=9, meta=2, pad=pad), length),
        ("cache-prefill", _cache_step(b, length, length + 11, 8, 3), length + 11),
        ("cache-decode", _cache_step(b, 1, length + 4, 6, 2), length + 4),
    ]


def _qkv(b, hq, hkv, lq, lk, d, dv, dtype, grad=True):
    q = torch.randn(b, hq, lq, d, dtype=dtype)
    k = torch.randn(b, hkv, lk, d, dtype=dtype)
    v = torch.randn(b, hkv, lk, dv, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _seen_rows(spec):
    """(b or 1, 1, lq, 1) bool: queries that may see at least one key (the others' output is
    discarded by the model, and backends may fill it differently)."""
    qp, kp = spec.q_pos.unsqueeze(-1), spec.k_pos.unsqueeze(-2)
    allowed = kp <= qp
    if spec.key_valid is not None:
        allowed = allowed & spec.key_valid.unsqueeze(-2)
    return allowed.any(-1)[:, None, :, None]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("length", [13, 37])
def test_sdpa_matches_reference_forward_and_gradients(dtype, tol, length):
    b, hq, hkv, d, dv = 2, 4, 2, 16, 32  # GQA, value heads wider than keys (as Hymba-1.5B)
    for name, spec, lk in _specs(b, length):
        lq = spec.q_pos.shape[-1]
        q, k, v = _qkv(b, hq, hkv, lq, lk, d, dv, dtype)
        ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
        out = attention_sdpa(q, k, v, spec)
        ref = attention_ref(*ref_in, spec)
        assert out.shape == (b, hq, lq, dv)
        assert _rel(out, ref) < tol, name
        grad = torch.randn_like(ref)
        out.backward(grad.to(dtype))
        ref.backward(grad)
        for t, r, which in zip((q, k, v), ref_in, "qkv"):
            assert _rel(t.grad, r.grad) < tol * 2, (name, which)


@pytest.mark.skipif(not HAVE_FLEX, reason="this torch has no FlexAttention")
@pytest.mark.parametrize("length", [11, 40])
def test_flex_matches_reference_forward(length):
    # CPU FlexAttention is the eager (dense) implementation: it checks our mask and call, not the
    # Triton kernels (the GPU script does that, with gradients)
    b, hq, hkv, d, dv = 2, 4, 2, 16, 32
    for name, spec, lk in _specs(b, length):
        lq = spec.q_pos.shape[-1]
        q, k, v = _qkv(b, hq, hkv, lq, lk, d, dv, torch.float32, grad=False)
        out = attention_flex(q, k, v, spec)
        ref = attention_ref(q.double(), k.double(), v.double(), spec)
        seen = _seen_rows(spec)
        assert torch.isfinite(out).all(), name
        assert _rel(out * seen, ref * seen) < 1e-5, name


@pytest.mark.skipif(not HAVE_FLEX, reason="this torch has no FlexAttention")
def test_compiled_flex_serves_many_lengths_without_hitting_the_recompile_limit():
    """Evaluation calls flex with a new length per batch: the compiled wrapper must go dynamic after
    the first recompile, not compile once per length until dynamo gives up and runs it eagerly
    (dense scores: 50 GiB for one 16k document on the GPU)."""
    from torch._dynamo.utils import counters

    from ablate.kernels.flex import compile_flex

    torch._dynamo.reset()
    counters.clear()
    fn = compile_flex(backend="eager")  # the compile decisions, without inductor's build time
    for length in range(20, 36):  # twice dynamo's default recompile limit
        spec = _aligned(1, length, window=8, meta=2)
        q = k = v = torch.randn(1, 2, length, 16)
        out = fn(q, k, v, block_mask=block_mask_for(spec, length, length, q.device))
        assert out.shape == (1, 2, length, 16)
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
    torch._dynamo.reset()


@pytest.mark.skipif(not HAVE_FLEX, reason="this torch has no FlexAttention")
def test_compiled_flex_serves_every_mask_kind_within_its_recompile_budget():
    """Every mask kind the model builds is its own compiled specialisation, and each goes dynamic
    after a second length: more than dynamo's default 8 per function in one process, after which
    it would run flex_attention eagerly (dense scores). Here, hitting the limit fails the test."""
    from ablate.kernels.flex import compile_flex

    torch._dynamo.reset()
    fn = compile_flex(backend="eager")
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for length in (20, 27):  # the second length makes each kind's compile dynamic
            for name, spec, lk in _specs(2, length):
                lq = spec.q_pos.shape[-1]
                if lq < 16:  # single-token steps do not take flex
                    continue
                q, k, v = _qkv(2, 2, 2, lq, lk, 16, 16, torch.float32, grad=False)
                out = fn(q, k, v, block_mask=block_mask_for(spec, lq, lk, q.device))
                seen = _seen_rows(spec)
                ref = attention_ref(q.double(), k.double(), v.double(), spec)
                assert _rel(out * seen, ref * seen) < 1e-5, (name, length)
    torch._dynamo.reset()


@pytest.mark.skipif(not HAVE_FLEX, reason="this torch has no FlexAttention")
def test_compiled_block_mask_is_symbolic_in_length_from_the_first_call():
    """The compiled mask builder must not specialise on the first lengths: static lengths are what
    stalled ptxas for minutes on a prefill over a seeded cache. One graph per mask kind serves every
    length, and the mask equals the eagerly built one."""
    from torch._dynamo.utils import counters

    from ablate.kernels.flex import compile_block_mask

    torch._dynamo.reset()
    counters.clear()
    build_mask = compile_block_mask(backend="eager")
    kinds = ("cache-prefill", "padding+meta")
    for length in (20, 27, 33):
        for name, spec, lk in _specs(2, length):
            if name not in kinds:
                continue
            lq = spec.q_pos.shape[-1]
            b = _batch_of(spec.q_pos, spec.k_pos, spec.key_valid, spec.q_seq, spec.k_seq)
            got = build_mask(mask_mod_for(spec), b, None, lq, lk, device=torch.device("cpu"))
            want = block_mask_for(spec, lq, lk, torch.device("cpu"))
            assert torch.equal(got.to_dense(), want.to_dense()), (name, length)
    assert counters["stats"]["unique_graphs"] <= len(kinds), dict(counters["stats"])
    torch._dynamo.reset()


@pytest.mark.skipif(not HAVE_FLEX, reason="this torch has no FlexAttention")
def test_flex_mask_mod_equals_dense_mask_pair_by_pair():
    b, length = 3, 29
    for name, spec, lk in _specs(b, length):
        lq = spec.q_pos.shape[-1]
        mod = mask_mod_for(spec)
        bi = torch.arange(b)[:, None, None]
        qi = torch.arange(lq)[None, :, None]
        ki = torch.arange(lk)[None, None, :]
        got = mod(bi, torch.zeros_like(bi), qi, ki)
        want = spec.dense()
        want = want.squeeze(1) if want.dim() == 4 else want
        seen = _seen_rows(spec)[:, 0]  # rows that see nothing differ by design
        assert torch.equal((got & seen).expand(b, lq, lk), (want & seen).expand(b, lq, lk)), name


@pytest.mark.skipif(not HAVE_FLEX, reason="this torch has no FlexAttention")
def test_flex_block_mask_is_built_once_per_spec_and_skips_blocks():
    length = 1024
    spec = _aligned(1, length, window=128, meta=16)
    first = block_mask_for(spec, length, length, torch.device("cpu"))
    assert block_mask_for(spec, length, length, torch.device("cpu")) is first
    # 8 x 8 blocks of 128: causal keeps 36, the window (one block back) and the meta block keep at
    # most 8 + 7 + 6 = 21 of them: the kernel skips the rest
    kept = first.to_dense().sum().item()
    assert kept <= 21, kept


def test_auto_choice_on_cpu_is_sdpa_and_flex_declines():
    q, k, v = _qkv(1, 2, 1, 9, 9, 16, 16, torch.float32, grad=False)
    spec = _aligned(1, 9, window=4, meta=2)
    assert not flex_available(q, k, v, spec)
    assert _ATTENTION.choose(None, q, k, v, spec) is attention_sdpa
    out = attention(q, k, v, spec, backend="reference")
    assert torch.allclose(attention(q, k, v, spec), out, atol=1e-5)


def test_unknown_backend_is_an_error_listing_the_known():
    q, k, v = _qkv(1, 2, 1, 4, 4, 16, 16, torch.float32, grad=False)
    with pytest.raises(ValueError, match="flex"):
        attention(q, k, v, _aligned(1, 4), backend="nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn needs CUDA (and the flash_attn package)")
def test_flash_attn_matches_reference_when_installed():
    pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    from ablate.kernels.attention import attention_flash_attn, flash_attn_available

    b, h, length, d = 2, 4, 77, 64
    q, k, v = (torch.randn(b, h, length, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    for spec in (_aligned(b, length), _aligned(b, length, window=16)):
        spec = MaskSpec(spec.q_pos.cuda(), spec.k_pos.cuda(), spec.window, 0, aligned=True)
        assert flash_attn_available(q, k, v, spec)
        out = attention_flash_attn(q, k, v, spec)
        ref = attention_ref(q.double(), k.double(), v.double(), spec)
        assert _rel(out, ref) < 2e-2
    meta = MaskSpec(spec.q_pos, spec.k_pos, 16, 4, aligned=True)
    assert not flash_attn_available(q, k, v, meta)
