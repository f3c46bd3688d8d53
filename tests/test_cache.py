"""The inference cache: token-by-token decode gives the logits of one full forward for every variant
(sliding windows beyond the window, KV sharing, meta tokens, SSM state), its bytes equal the analytic
count, and the decode-step functions match their reference ops."""

import pytest
import torch
import torch.nn.functional as F

from ablate.bench.accounting import cache_bytes
from ablate.kernels import MaskSpec, attention_ref, causal_conv1d_ref, selective_scan_ref, ssd_scan_sequential_ref
from ablate.model.cache import AblateCache, meta_seed
from ablate.model.decode import conv_step, decode_attention, selective_state_update, ssd_state_update
from ablate.model.static_decode import StaticGreedyDecoder
from ablate.registry import build_model, resolve, variant_names

VARIANTS = variant_names()
PROMPT, NEW = 13, 6  # the prompt is longer than the tiny window (8): ring buffers wrap before decoding
TOL = 1e-4


def _model(name):
    return build_model(name, "tiny").eval()


@torch.no_grad()
def _decode(model, ids, prefill_chunks, cache=None):
    """Prefill ``ids[:, :sum(prefill_chunks)]`` in chunks, then feed the rest one token at a time."""
    cache = cache or AblateCache.for_model(model, ids.shape[0], ids.shape[1])
    out, start = [], 0
    for n in prefill_chunks:
        out.append(model(ids[:, start : start + n], past_key_values=cache).logits)
        start += n
    for t in range(start, ids.shape[1]):
        out.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
    return torch.cat(out, 1), cache


@pytest.mark.parametrize("name", VARIANTS)
def test_decode_matches_full_forward_and_analytic_bytes(name):
    model = _model(name)
    config = model.config
    ids = torch.randint(0, config.vocab_size, (2, PROMPT + NEW))
    with torch.no_grad():
        full = model(ids).logits
    stepwise, cache = _decode(model, ids, [PROMPT])
    torch.testing.assert_close(stepwise, full, atol=TOL, rtol=TOL)
    assert cache.seen_tokens == config.num_meta_tokens + PROMPT + NEW
    assert cache.nbytes() == 2 * cache_bytes(config, PROMPT + NEW, bytes_per_value=4).total


@pytest.mark.parametrize("name", VARIANTS)
def test_chunked_prefill_matches_full_forward(name):
    model = _model(name)
    ids = torch.randint(0, model.config.vocab_size, (2, PROMPT + NEW))
    with torch.no_grad():
        full = model(ids).logits
    # chunks shorter and longer than the window, and a one-token chunk between them
    chunked, _ = _decode(model, ids, [5, 1, 9, 2])
    torch.testing.assert_close(chunked, full, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", VARIANTS)
def test_static_decoder_matches_plain_decode(name):
    """The graph-ready path (whole static buffers, in-place state, device positions) run eagerly."""
    model = _model(name)
    ids = torch.randint(0, model.config.vocab_size, (3, PROMPT))
    with torch.no_grad():
        cache = AblateCache.for_model(model, 3, PROMPT + NEW)
        first = model(ids, past_key_values=cache).logits[:, -1].argmax(-1, keepdim=True)
        decoder = StaticGreedyDecoder(model, cache, use_graph=False)
        decoder.start(first)
        tokens, static_logits = [first], []
        for _ in range(NEW):
            static_logits.append(decoder.step().clone())
            tokens.append(decoder.tokens.clone())
        generated = torch.cat(tokens[:-1], 1)  # the tokens the steps fed
        plain, _ = _decode(model, torch.cat([ids, generated], 1), [PROMPT])
    torch.testing.assert_close(torch.stack(static_logits, 1), plain[:, PROMPT:], atol=TOL, rtol=TOL)
    assert torch.equal(torch.cat(tokens[1:], 1), plain[:, PROMPT:].argmax(-1))


def test_sliding_window_layers_hold_only_window_plus_meta():
    model = _model("table1-13-meta-tokens")
    c = model.config
    cache = AblateCache.for_model(model, 1, 50)
    sizes = {plan_window: table.size for plan_window, table in cache.tables.items()}
    assert sizes == {None: c.num_meta_tokens + 50, c.sliding_window: c.num_meta_tokens + c.sliding_window}
    # KV-sharing consumers hold nothing: one store per producer
    assert sorted(cache.kv) == sorted(i for i, s in enumerate(c.kv_source) if s == i)
    ids = torch.randint(0, c.vocab_size, (1, 20))
    _decode(model, ids, [20], cache)
    ring = cache.tables[c.sliding_window]
    m = c.num_meta_tokens
    held = sorted(ring.pos[0, m:].tolist())
    assert held == list(range(m + 20 - c.sliding_window, m + 20)), "the ring holds the last window positions"
    assert ring.pos[0, :m].tolist() == list(range(m))


def test_meta_seed_is_computed_once_and_follows_the_weights():
    model = _model("table1-13-meta-tokens")
    first = meta_seed(model, torch.float32, "cpu")
    assert meta_seed(model, torch.float32, "cpu") is first
    producer = next(iter(first.kv))
    before = first.kv[producer].k.clone()
    with torch.no_grad():
        model.model.meta_tokens.mul_(1.5)  # an in-place update, as an optimizer step does
    second = meta_seed(model, torch.float32, "cpu")
    assert second is not first
    assert not torch.allclose(second.kv[producer].k, before)


def test_seeded_cache_equals_running_the_meta_tokens():
    model = _model("table3-hymba")
    ids = torch.randint(0, model.config.vocab_size, (2, 11))
    seeded, _ = _decode(model, ids, [7])
    unseeded_cache = AblateCache.for_model(model, 2, 11, seed_meta=False)
    assert unseeded_cache.seen_tokens == 0
    unseeded, _ = _decode(model, ids, [7], unseeded_cache)
    torch.testing.assert_close(seeded, unseeded, atol=TOL, rtol=TOL)


def test_full_cache_refuses_more_tokens_than_allocated():
    model = _model("table3-llama3")
    cache = AblateCache.for_model(model, 1, 4)
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 4)), past_key_values=cache)
        with pytest.raises(ValueError, match="allocate a larger cache"):
            model(torch.randint(0, 256, (1, 1)), past_key_values=cache)


def test_row_views_prefill_like_the_whole_batch():
    model = _model("table1-13-meta-tokens")
    ids = torch.randint(0, model.config.vocab_size, (4, 12))
    whole, whole_cache = _decode(model, ids, [10])
    cache = AblateCache.for_model(model, 4, 12)
    with torch.no_grad():
        for start in (0, 3):
            view = cache.rows(start, min(start + 3, 4))
            model(ids[start : start + 3, :10], past_key_values=view)
        cache.adopt(view)
        rest = [model(ids[:, t : t + 1], past_key_values=cache).logits for t in (10, 11)]
    torch.testing.assert_close(torch.cat(rest, 1), whole[:, 10:], atol=TOL, rtol=TOL)


def test_fill_rows_from_copies_prefilled_rows():
    model = _model("table3-samba")
    cache = AblateCache.for_model(model, 5, 8)
    with torch.no_grad():
        view = cache.rows(0, 2)
        model(torch.randint(0, 256, (2, 6)), past_key_values=view)
    cache.adopt(view)
    cache.fill_rows_from(2)
    for tensor in cache._batch_tensors():
        assert torch.equal(tensor[2], tensor[0]) and torch.equal(tensor[3], tensor[1]) and torch.equal(tensor[4], tensor[0])


def test_reset_keeps_buffer_addresses_and_restarts_from_the_seed():
    model = _model("table1-13-meta-tokens")
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    cache = AblateCache.for_model(model, 2, 9)
    first, _ = _decode(model, ids, [9], cache)
    pointers = [t.data_ptr() for t in cache._batch_tensors()]
    cache.reset(meta_seed(model, torch.float32, "cpu"))
    assert [t.data_ptr() for t in cache._batch_tensors()] == pointers
    again, _ = _decode(model, ids, [9], cache)
    torch.testing.assert_close(again, first)


# ---- decode steps against their reference ops ---------------------------------------------------
def test_conv_step_matches_causal_conv1d_ref():
    b, c, k, l = 2, 6, 4, 7
    x, w, bias = torch.randn(b, c, l), torch.randn(c, k), torch.randn(c)
    ref, ref_state = causal_conv1d_ref(x, w, bias, "silu")
    state = torch.zeros(b, c, k - 1)
    steps = torch.stack([conv_step(x[:, :, t], state, w, bias) for t in range(l)], -1)
    torch.testing.assert_close(steps, ref)
    torch.testing.assert_close(state, ref_state)


def test_selective_state_update_matches_selective_scan_ref():
    b, d, n, l = 2, 5, 4, 6
    u, delta, z = torch.randn(b, d, l), torch.randn(b, d, l), torch.randn(b, d, l)
    A, B, C = -torch.rand(d, n), torch.randn(b, n, l), torch.randn(b, n, l)
    D, bias = torch.randn(d), torch.randn(d)
    h0 = torch.randn(b, d, n)
    ref, ref_state = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, h0)
    state = h0.clone()
    ys = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t], bias) for t in range(l)]
    torch.testing.assert_close(torch.stack(ys, -1), ref)
    torch.testing.assert_close(state, ref_state)


def test_ssd_state_update_matches_sequential_ref():
    b, l, h, p, g, n = 2, 5, 4, 3, 2, 6
    x, dt = torch.randn(b, l, h, p), torch.rand(b, l, h)
    A, B, C, D = -torch.rand(h), torch.randn(b, l, g, n), torch.randn(b, l, g, n), torch.randn(h)
    h0 = torch.randn(b, h, p, n)
    ref, ref_state = ssd_scan_sequential_ref(x, dt, A, B, C, D, h0)
    state = h0.clone()
    A_log = torch.log(-A)  # the step takes the decay rate's log, as the model holds it
    ys = [ssd_state_update(state, x[:, t], dt[:, t], A_log, B[:, t], C[:, t], D) for t in range(l)]
    torch.testing.assert_close(torch.stack(ys, 1), ref)
    torch.testing.assert_close(state, ref_state)
    # dt's bias and softplus taken inside the step
    raw, bias = torch.randn(b, l, h), torch.randn(h)
    ref, ref_state = ssd_scan_sequential_ref(x, F.softplus(raw + bias), A, B, C, D, h0)
    state = h0.clone()
    ys = [ssd_state_update(state, x[:, t], raw[:, t], A_log, B[:, t], C[:, t], D, bias, True) for t in range(l)]
    torch.testing.assert_close(torch.stack(ys, 1), ref)
    torch.testing.assert_close(state, ref_state)


@pytest.mark.parametrize("padded", [False, True])
def test_decode_attention_matches_reference_over_a_ring(padded):
    """GQA, a window, meta tokens, slots out of order and (optionally) invalid slots."""
    b, hq, hkv, d, dv, m, window = 3, 6, 2, 8, 4, 2, 5
    k_pos = torch.tensor([[0, 1, 12, 13, 9, 10, 11]])  # meta slots, then a ring that has wrapped
    q_pos = torch.tensor([[13]])
    valid = torch.ones(b, 7, dtype=torch.bool)
    if padded:
        valid[1, 4:6] = False
    q, k, v = torch.randn(b, hq, 1, d), torch.randn(b, hkv, 7, d), torch.randn(b, hkv, 7, dv)
    spec = MaskSpec(q_pos, k_pos, window, m, valid if padded else None)
    torch.testing.assert_close(decode_attention(q, k, v, spec), attention_ref(q, k, v, spec))


def test_conv_state_is_stored_tap_major():
    """Callers see (batch, channels, taps - 1); the storage keeps each tap's channels contiguous, which
    the conv step kernel's coalesced loads rely on."""
    for name in ("table1-01-mamba", "table3-mamba2"):
        config = resolve(name, "tiny").config
        cache = AblateCache(config, 3, 8, torch.float32, "cpu")
        conv = next(iter(cache.conv.values()))
        channels = config.ssm_conv_channels
        assert conv.shape == (3, channels, config.ssm_conv_kernel - 1)
        assert conv.stride() == ((config.ssm_conv_kernel - 1) * channels, 1, channels)


def test_ssm_state_can_be_kept_wider_than_the_cache_dtype():
    config = resolve("table1-01-mamba", "tiny").config
    cache = AblateCache(config, 2, 8, torch.bfloat16, "cpu", ssm_state_dtype=torch.float32)
    assert all(t.dtype == torch.float32 for t in cache.ssm.values())
    assert cache.nbytes() > 2 * cache_bytes(config, 8, 2).total  # the analytic count assumes one dtype


# ---- the fused Triton decode steps -------------------------------------------------------------
TRITON_CHECK = r"""
import os
import torch
import torch.nn.functional as F
from ablate.model.decode import conv_step_ref, segment_rms_norm_ref, selective_state_update_ref, ssd_state_update_ref
from ablate.model.decode_triton import conv_step_triton, segment_rms_norm_triton, selective_state_update_triton, ssd_state_update_triton
from ablate.model.layers import rms_norm
from ablate.model.ssm import mamba_step_ref
from ablate.model.decode_triton import mamba_step_triton

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
    # sizes that are not powers of two (masked lanes) and strided views, as the model passes them
    b, h, p, g, n = 2, 4, 6, 2, 5
    x = torch.randn(b, 1, h * p + 3, device=device, dtype=dtype)[:, 0, : h * p].view(b, h, p)
    dt, A_log, D = torch.rand(b, h, device=device), torch.randn(h, device=device), torch.randn(h, device=device)
    B, C = torch.randn(b, g, n, device=device, dtype=dtype), torch.randn(b, g, n, device=device, dtype=dtype)
    state = torch.randn(b, h, p, n, device=device, dtype=dtype)
    ref_state = state.clone()
    ref = ssd_state_update_ref(ref_state, x, dt, A_log, B, C, D)
    torch.testing.assert_close(ssd_state_update_triton(state, x, dt, A_log, B, C, D), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(state, ref_state, atol=tol, rtol=tol)
    # dt's bias and softplus inside the step equal them applied before it
    raw, dt_bias = torch.randn(b, h, device=device), torch.randn(h, device=device)
    raw[0, 0] = 25.0  # past softplus's threshold
    ref = ssd_state_update_ref(ref_state, x, F.softplus(raw + dt_bias), A_log, B, C, D)
    torch.testing.assert_close(ssd_state_update_triton(state, x, raw, A_log, B, C, D, dt_bias, True), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(state, ref_state, atol=tol, rtol=tol)

    b, d, n = 3, 10, 6
    u, delta, z = (torch.randn(b, d, device=device, dtype=dtype) for _ in range(3))
    delta[0, 0] = 25.0  # past softplus's threshold
    A, D, bias = -torch.rand(d, n, device=device), torch.randn(d, device=device, dtype=dtype), torch.randn(d, device=device, dtype=dtype)
    B, C = torch.randn(b, 1, n + 2, device=device, dtype=dtype)[:, 0, :n], torch.randn(b, n, device=device, dtype=dtype)
    state = torch.randn(b, d, n, device=device, dtype=dtype)
    ref_state = state.clone()
    ref = selective_state_update_ref(ref_state, u, delta, A, B, C, D, z, bias)
    torch.testing.assert_close(selective_state_update_triton(state, u, delta, A, B, C, D, z, bias), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(state, ref_state, atol=tol, rtol=tol)

    # the conv step: x a strided slice (as the in_proj output gives it), channels past one block,
    # Mamba's 4 taps and a 2-tap conv (a one-slot state), with and without bias and SiLU; the state
    # tap-major as the cache stores it, and channel-major
    for taps, c, with_bias, activation, tap_major in ((4, 300, True, "silu", True), (4, 300, True, "silu", False), (2, 7, False, None, True)):
        x = torch.randn(b, 1, c + 5, device=device, dtype=dtype)[:, 0, 2 : c + 2]
        w, cb = torch.randn(c, taps, device=device, dtype=dtype), torch.randn(c, device=device, dtype=dtype)
        state = torch.randn(b, taps - 1, c, device=device, dtype=dtype).transpose(1, 2) if tap_major else torch.randn(b, c, taps - 1, device=device, dtype=dtype)
        ref_state = state.clone()
        bias_arg = cb if with_bias else None
        ref = conv_step_ref(x, ref_state, w, bias_arg, activation)
        torch.testing.assert_close(conv_step_triton(x, state, w, bias_arg, activation), ref, atol=tol, rtol=tol)
        torch.testing.assert_close(state, ref_state, atol=0, rtol=0)  # the roll moves values, no arithmetic

    # dt, B, C norms of Hymba's SSM heads: three segments of one row, widths not powers of two
    x = torch.randn(b, 1, 5 + 3 + 3, device=device, dtype=dtype) * 3
    weights = tuple(torch.randn(w, device=device, dtype=dtype) for w in (5, 3, 3))
    ref = segment_rms_norm_ref(x, weights, 1e-5)
    torch.testing.assert_close(ref[..., 5:8], rms_norm(x[..., 5:8], weights[1], 1e-5))
    torch.testing.assert_close(segment_rms_norm_triton(x, weights, 1e-5), ref, atol=tol, rtol=tol)

    # a Mamba step after x_proj (dt/B/C norms, dt's projection, the update) in one kernel: 17 rows
    # and 40 channels over blocks of 16, with and without the norms. dt is a product rounded to the
    # dtype, so in bf16 either side may round a dt to its neighbour, which the state and y amplify:
    # there the kernel's error against the step in fp32 must stay within twice the reference's own
    b, d, n, r = 17, 40, 6, 5
    u, z = (torch.randn(b, d, device=device, dtype=dtype) for _ in range(2))
    dbc = torch.randn(b, 1, r + 2 * n + 3, device=device, dtype=dtype)[:, 0, : r + 2 * n] * 2
    w_dt, dt_bias = torch.randn(d, r, device=device, dtype=dtype) * r**-0.5, torch.randn(d, device=device, dtype=dtype)
    A_log, Dd = torch.randn(d, n, device=device) * 0.5, torch.randn(d, device=device, dtype=dtype)
    norms = tuple(torch.randn(w, device=device, dtype=dtype) for w in (r, n, n))
    state = torch.randn(b, d, n, device=device, dtype=dtype)
    err = lambda got, want: ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    for with_norms in (norms, None):
        exact_state = state.float()
        wide = lambda t: None if t is None else (tuple(w.float() for w in t) if isinstance(t, tuple) else t.float())
        exact = mamba_step_ref(*map(wide, (u, dbc, z)), exact_state, *map(wide, (w_dt, dt_bias, A_log, Dd, with_norms)), 1e-5)
        ref_state, got_state = state.clone(), state.clone()
        ref = mamba_step_ref(u, dbc, z, ref_state, w_dt, dt_bias, A_log, Dd, with_norms, 1e-5)
        os.environ["ABLATE_MAMBA_STEP_CONFIG"] = "16,16,4"
        got = mamba_step_triton(u, dbc, z, got_state, w_dt, dt_bias, A_log, Dd, with_norms, 1e-5)
        del os.environ["ABLATE_MAMBA_STEP_CONFIG"]
        if dtype == torch.float32:
            assert err(got, ref) < 1e-5 and err(got_state, ref_state) < 1e-5
        else:
            assert err(got, exact) <= 2 * err(ref, exact) + 1e-3, (err(got, exact), err(ref, exact))
            assert err(got_state, exact_state) <= 2 * err(ref_state, exact_state) + 1e-3

    # the FFN's gate/up projection with its SiLU gate: F = 40 features over tiles of 32 (a gate tile
    # past F reads up's rows, masked), K = 72 over blocks of 32 (the descriptors pad the last), 1, 5
    # and 3 x 7 rows
    from ablate.kernels.triton.swiglu import gate_up_silu_triton
    from ablate.model.layers import gate_up_silu_ref
    os.environ["ABLATE_GATE_UP_CONFIG"] = "32,32,2,4"
    w = torch.randn(80, 72, device=device, dtype=dtype) / 72**0.5
    for shape in ((1, 72), (5, 72), (3, 7, 72)):
        x = torch.randn(*shape, device=device, dtype=dtype)
        ref = gate_up_silu_ref(x, w)
        got = gate_up_silu_triton(x, w)
        assert got.shape == ref.shape == (*shape[:-1], 40) and got.dtype == dtype
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    del os.environ["ABLATE_GATE_UP_CONFIG"]

    # the greedy pick: 5,000 logits per row (two blocks of 4,096, the last masked), the row's maximum
    # repeated across lanes and blocks (the first index wins), a row all equal, a row of -inf
    from ablate.kernels.triton.argmax import greedy_tokens_triton
    logits = torch.randn(4, 5000, device=device).to(dtype)
    logits[0, [4500, 10, 4097]] = 9.0
    logits[1] = 1.0
    logits[2] = float("-inf")
    logits[3, 4999] = 9.0
    out = torch.full((4, 1), -1, dtype=torch.long, device=device)
    assert greedy_tokens_triton(logits, out) is out
    assert out.view(-1).tolist() == [10, 0, 0, 4999] == logits.argmax(-1).tolist()
print("ok")
"""


def test_triton_decode_steps_match_their_references():
    """The fused kernels against the PyTorch steps, fp32 and bf16. On CPU they run under Triton's
    interpreter, which must be switched on before triton is first imported: hence a fresh process."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton", reason="triton is not installed: the fused decode steps are optional")
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.parametrize("name", ["table1-13-meta-tokens", "table3-samba"])
def test_decode_through_the_fused_mamba_step_matches_full_forward(monkeypatch, name):
    """Mamba heads' decode step after x_proj as one Triton kernel (under the interpreter on CPU), with
    Hymba's dt/B/C norms and without (Samba): token-by-token logits equal one full forward, and the
    fused step is the one that ran."""
    pytest.importorskip("triton", reason="triton is not installed: the fused decode steps are optional")
    from kernel_support import use_interpreter

    from ablate.model import ssm

    use_interpreter(monkeypatch, "ablate.model.decode_triton", "_mamba_step_kernel")
    ran = _record_fast_paths(monkeypatch, ssm._MAMBA_STEP, reference=("SELECTIVE_SCAN", "CONV1D", "ATTENTION"))
    model, ids = _two_layer_model_and_ids(name)
    with torch.no_grad():
        full = model(ids).logits
    stepped, _ = _decode(model, ids, [5])
    torch.testing.assert_close(stepped, full, atol=TOL, rtol=TOL)
    assert len(ran) == 4 * model.config.num_hidden_layers  # every SSM layer of every step


@pytest.mark.parametrize("name", ["table3-mamba2-ffn", "table1-06-llama"])
def test_decode_through_the_fused_gate_up_matches_full_forward(monkeypatch, name):
    """The FFN's gate/up projection and SiLU gate as one Triton kernel (under the interpreter on
    CPU): prefill and token-by-token decode through it give the logits of a full forward through the
    reference, and it ran in every FFN of every call."""
    pytest.importorskip("triton", reason="triton is not installed: the fused decode steps are optional")
    from kernel_support import use_interpreter

    from ablate.model import layers

    use_interpreter(monkeypatch, "ablate.kernels.triton.swiglu", "_gate_up_silu_kernel", ABLATE_GATE_UP_CONFIG="16,16,2,4")
    ran = _record_fast_paths(monkeypatch, layers._GATE_UP_SILU, reference=("SSD", "CONV1D", "ATTENTION"))
    model, ids = _two_layer_model_and_ids(name)
    with torch.no_grad():
        monkeypatch.setenv("ABLATE_GATE_UP_SILU_BACKEND", "reference")
        full = model(ids).logits
        monkeypatch.delenv("ABLATE_GATE_UP_SILU_BACKEND")
    assert not ran
    stepped, _ = _decode(model, ids, [5])
    torch.testing.assert_close(stepped, full, atol=TOL, rtol=TOL)
    ffns = sum(isinstance(m, layers.SwiGLU) for m in model.modules())
    assert ffns == 2 and len(ran) == 5 * ffns  # the prefill and four steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d, dv, cos_rows", [(8, 16, 1), (12, 12, 3)])
def test_rope_store_kernel_matches_its_reference(monkeypatch, dtype, d, dv, cos_rows):
    """RoPE on a step's queries and keys and the K/V write into one cache slot, as one Triton kernel
    (under the interpreter on CPU): q, k, v are views into one packed projection as the layer makes
    them, the head dimension need not be a power of two, cos/sin per row or shared; every other
    slot of the cache stays as it was. Without K/V it rotates the queries only."""
    pytest.importorskip("triton", reason="triton is not installed: the fused decode steps are optional")
    from kernel_support import use_interpreter

    use_interpreter(monkeypatch, "ablate.kernels.triton.rope_store", "_rope_store_kernel")
    from ablate.kernels.triton.rope_store import rope_store_kv_triton
    from ablate.model.decode import rope_store_kv_ref
    from ablate.model.layers import rope_tables

    b, hq, hkv, slots = 3, 6, 2, 5
    packed = torch.randn(b, 1, hq * d + hkv * d + hkv * dv).to(dtype)
    q, k, v = torch.split(packed, [hq * d, hkv * d, hkv * dv], dim=-1)
    q = q.view(b, 1, hq, d).transpose(1, 2)
    k = k.view(b, 1, hkv, d).transpose(1, 2)
    v = v.view(b, 1, hkv, dv).transpose(1, 2)
    cos, sin = rope_tables(torch.arange(cos_rows).view(cos_rows, 1) + 7, d, 10000.0, dtype)
    stores = [torch.randn(b, hkv, slots, w).to(dtype) for w in (d, dv)]
    dst = torch.tensor([3])
    tol = {"atol": 1e-2, "rtol": 1e-2} if dtype == torch.bfloat16 else {"atol": 1e-6, "rtol": 1e-6}

    ref_stores = [s.clone() for s in stores]
    want = rope_store_kv_ref(q, cos, sin, k, v, *ref_stores, dst)
    got = rope_store_kv_triton(q, cos, sin, k, v, *stores, dst)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(stores[0], ref_stores[0], **tol)
    assert torch.equal(stores[1], ref_stores[1])  # values are copied, not computed
    assert not torch.equal(stores[0][:, :, 3], torch.zeros_like(stores[0][:, :, 3]))
    torch.testing.assert_close(rope_store_kv_triton(q, cos, sin), rope_store_kv_ref(q, cos, sin), **tol)


@pytest.mark.parametrize("name", ["table1-10-llama-kv-compression", "table3-hymba"])
@pytest.mark.parametrize("static", [False, True])
def test_decode_through_the_fused_rope_store_matches_full_forward(monkeypatch, name, static):
    """Every attention layer's decode step through the one-kernel RoPE + cache write (under the
    interpreter on CPU): full layers (the written prefix, or the whole store in a static decode),
    sliding windows past their ring, a layer reading an earlier layer's K/V, meta tokens. Token by
    token the logits equal one full forward, and the kernel ran in every attention layer of every
    step after the first token."""
    pytest.importorskip("triton", reason="triton is not installed: the fused decode steps are optional")
    from kernel_support import use_interpreter

    from ablate.config import layer_plans
    from ablate.model import decode

    use_interpreter(monkeypatch, "ablate.kernels.triton.rope_store", "_rope_store_kernel")
    others = ("ATTENTION", "DECODE_ATTENTION", "SELECTIVE_SCAN", "CONV1D", "CONV_STEP", "MAMBA_STEP", "SEGMENT_RMS_NORM", "GATE_UP_SILU")
    ran = _record_fast_paths(monkeypatch, decode._ROPE_STORE, reference=others)
    torch.manual_seed(0)
    model = build_model(resolve(name, "tiny", overrides={"num_hidden_layers": 6})).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16))  # 11 steps: past the window of 8
    cache = AblateCache.for_model(model, 2, 16)
    cache.static_decode = static
    with torch.no_grad():
        full = model(ids).logits
        stepped, _ = _decode(model, ids, [5], cache)
    torch.testing.assert_close(stepped, full, atol=TOL, rtol=TOL)
    plans = layer_plans(model.config)
    assert any(p.window for p in plans) and not all(p.owns_kv for p in plans)
    assert len(ran) == 11 * len(plans)


def _record_fast_paths(monkeypatch, op, reference: tuple[str, ...]) -> list:
    """The shapes every call of ``op``'s fast paths sees, appended to the returned list; the
    ``reference`` ops (prefill's, slow under the interpreter) pinned to their references."""
    for name in reference:
        monkeypatch.setenv(f"ABLATE_{name}_BACKEND", "reference")
    ran = []
    monkeypatch.setattr(op, "fast_paths", {k: (_recording(fn, ran), ok) for k, (fn, ok) in op.fast_paths.items()})
    return ran


def _two_layer_model_and_ids(name: str):
    torch.manual_seed(0)
    model = build_model(resolve(name, "tiny", overrides={"num_hidden_layers": 2})).eval()
    return model, torch.randint(0, model.config.vocab_size, (2, 9))


def _recording(fn, ran):
    def wrapper(*args):
        ran.append(args[0].shape)
        return fn(*args)

    return wrapper


@pytest.mark.parametrize("scale", ["tiny", "proxy", "paper"])
def test_cache_bytes_equal_ablate_variants_at_every_scale(scale):
    """What `ablate variants` prints (FP16, 8192 tokens) is what a cache allocated for 8192 tokens
    holds, for every variant (allocated on the meta device: shapes only, no memory)."""
    for name in VARIANTS:
        config = resolve(name, scale).config
        cache = AblateCache(config, 3, 8192, torch.float16, "meta")
        assert cache.nbytes() == 3 * cache_bytes(config, 8192).total, name
