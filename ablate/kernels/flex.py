"""FlexAttention fast path for ``MaskSpec`` masks: causal, sliding window, always-visible meta tokens,
packed documents and key padding, as a ``BlockMask``.

Why FlexAttention: SDPA's fused kernels take either no mask (plain causal) or a dense mask they
read in full; a sliding window of 1024 over 8192 tokens leaves ~85% of the score blocks empty, and
FlexAttention skips them (``shared/gpu-anchors.md``: 2.65 ms fwd+bwd at B=4 H=16 L=8192 D=64, SWA
1024 + 128 meta). The ``BlockMask`` is memoized on the ``MaskSpec``, which the forward context
shares between all layers of one kind, so it is built once per forward.

The mask is a function of indices (``mask_mod``) rather than a tensor: for an aligned forward
(queries and keys at the same consecutive positions) causality and the window are index
arithmetic; otherwise (a prefill or a step over a cache, whose slots may be out of order) the
absolute positions are looked up per index. FlexAttention evaluates ``mask_mod`` only on the
partially masked blocks, so the lookups cost little.

One semantic difference from the reference: a query that may see no key at all (only possible at a
padding position without meta tokens) gets zeros here, where the reference's dense mask lets it see
everything. Such outputs are discarded by the model either way.
"""

from __future__ import annotations

import functools

import torch

try:  # FlexAttention arrived in torch 2.5; the harness runs without it
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

    HAVE_FLEX = True
except ImportError:  # pragma: no cover - old torch
    HAVE_FLEX = False

# Each mask kind (window or not, meta tokens, padding, documents, aligned or over a cache) is its
# own specialisation of the compiled flex_attention and create_block_mask (dynamo guards on the
# mask_mod's closure), and each goes dynamic after its second length: one evaluation process (full
# forwards with and without padding, then generation over a cache) passes dynamo's default of 8
# per function, after which it runs flex_attention eagerly (dense scores). The kinds are few and
# fixed, so they get a budget of their own.
FLEX_RECOMPILE_LIMIT = 64


def _compiled_with_mask_budget(fn, **compile_kwargs):
    """``torch.compile(fn)``, called under the recompile budget for mask kinds."""
    compiled = torch.compile(fn, **compile_kwargs)

    def run(*args, **kwargs):
        limit = max(FLEX_RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)
        with torch._dynamo.config.patch(recompile_limit=limit):
            return compiled(*args, **kwargs)

    return run


def compile_flex(backend: str = "inductor"):
    """flex_attention under torch.compile with automatic dynamic shapes: the first shape compiles
    static (training's one packed shape keeps its specialised kernels); a second shape recompiles
    once with symbolic lengths that then serve every length. ``dynamic=False`` recompiled for each
    new length, and evaluation's batches all differ in length: after dynamo's recompile limit it
    ran flex_attention eagerly, which materialises every score (a 16k needle document asked for
    50 GiB on the H100)."""
    return _compiled_with_mask_budget(flex_attention, backend=backend, dynamic=None)


def compile_block_mask(backend: str = "inductor"):
    """create_block_mask under torch.compile with symbolic lengths from the first call. It builds the
    mask blockwise, never the whole lq x lk bool matrix. Static lengths are what torch's own
    ``_compile=True`` gives, and for a prefill over a seeded cache (8192 queries over 8320 keys,
    positions looked up per index) inductor's kernel then spent minutes in ptxas: the "stall" of the
    first paper suite (reports/bench-h100/flex-prefill/)."""
    return _compiled_with_mask_budget(create_block_mask, backend=backend, dynamic=True)


@functools.cache
def _compiled_block_mask():
    return compile_block_mask()


@functools.cache
def _compiled_flex():
    """flex_attention compiled once per process: in eager mode it runs a dense reference (the whole
    score matrix); compiled, it generates the block-sparse Triton kernels."""
    return compile_flex()


def _batch_of(*tensors) -> int | None:
    """The batch size the mask depends on, or None when every per-token tensor broadcasts (b=1)."""
    sizes = {t.shape[0] for t in tensors if t is not None}
    sizes.discard(1)
    return sizes.pop() if sizes else None


def mask_mod_for(spec):
    """The ``mask_mod(b, h, q_idx, kv_idx) -> bool`` that says what ``spec.dense()`` says (less the
    see-everything fallback for empty rows)."""
    window, meta = spec.window, spec.num_meta
    kv_valid, q_seq, k_seq = spec.key_valid, spec.q_seq, spec.k_seq
    # per-index tables, indexed with the batch index only where they vary over the batch
    def row(t, b, i):
        return t[b if t.shape[0] > 1 else 0, i]

    if spec.aligned:
        k_pos = spec.k_pos

        def positions(b, q_idx, kv_idx):
            # consecutive positions: differences of indices are differences of positions; only the
            # meta test needs the absolute key position
            return q_idx, kv_idx, row(k_pos, b, kv_idx)

    else:
        q_pos, k_pos = spec.q_pos, spec.k_pos

        def positions(b, q_idx, kv_idx):
            kp = row(k_pos, b, kv_idx)
            return row(q_pos, b, q_idx), kp, kp

    def mask_mod(b, h, q_idx, kv_idx):
        qp, kp, k_abs = positions(b, q_idx, kv_idx)
        allowed = kp <= qp
        is_meta = k_abs < meta
        if window is not None:
            allowed = allowed & ((qp - kp < window) | is_meta)
        if q_seq is not None:
            allowed = allowed & ((row(q_seq, b, q_idx) == row(k_seq, b, kv_idx)) | is_meta)
        if kv_valid is not None:
            allowed = allowed & row(kv_valid, b, kv_idx)
        return allowed

    return mask_mod


def block_mask_for(spec, lq: int, lk: int, device) -> "BlockMask":
    """The spec's BlockMask, built once and shared by every layer that uses this spec."""

    def build():
        b = _batch_of(spec.q_pos, spec.k_pos, spec.key_valid, spec.q_seq, spec.k_seq)
        # inside an outer torch.compile the mask construction is traced into that graph instead
        compiled = device.type == "cuda" and not torch.compiler.is_compiling()
        build_mask = _compiled_block_mask() if compiled else create_block_mask
        return build_mask(mask_mod_for(spec), b, None, lq, lk, device=device)

    return spec.memo(("flex_block_mask", lq, lk, str(device)), build)


def attention_flex(q, k, v, spec, scale: float | None = None) -> torch.Tensor:
    """q: (b, hq, lq, d); k: (b, hkv, lk, d); v: (b, hkv, lk, dv). The softmax runs in fp32 inside
    the kernel, as in the reference."""
    block_mask = block_mask_for(spec, q.shape[-2], k.shape[-2], q.device)
    gqa = q.shape[1] != k.shape[1]
    if q.is_cuda and not torch.compiler.is_compiling():
        fn = _compiled_flex()
    else:
        # inside an outer torch.compile, dynamo traces flex_attention itself; on CPU the eager
        # reference runs (forward only: FlexAttention refuses CPU backward)
        fn = flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


def _pow2(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def flex_available(q, k, v, spec, *_, **__) -> bool:
    """Auto-choice: CUDA only (the CPU path is a slow eager reference without backward), masks that
    fused SDPA cannot skip (window, meta tokens, documents, padding: plain causal goes to SDPA's
    cuDNN / flash kernels, which the anchors show faster), and not single-token decode (SDPA with
    one mask row is cheaper than building a block mask per step). Head dims: powers of two from 16,
    which every torch that ships flex compiles; value and key head dims may differ, and where they
    do (Hymba: 64 / 128) flex takes plain causal too: SDPA's flash kernel refuses that case and its
    fallback, the memory-efficient kernel, runs 2.8x slower than flex (gpu-anchors.md); cuDNN's
    support for it is unconfirmed (``ablate.bench.fastpaths`` times both)."""
    if not HAVE_FLEX or not q.is_cuda:
        return False
    # a prefill over a cache (meta tokens seeded, ring buffers) is flex's too: 1.3-1.4x SDPA's dense
    # mask at 8k on the H100 (reports/bench-h100/flex-prefill/)
    if q.shape[-2] < 16 or (spec.plain_causal and q.shape[-1] == v.shape[-1]):
        return False
    return _pow2(q.shape[-1]) and _pow2(v.shape[-1]) and q.dtype in (torch.bfloat16, torch.float16, torch.float32)
