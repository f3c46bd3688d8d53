"""Training-step benchmark: tokens/s and MFU of each Table 3 variant at the paper's scale.

    python -m ablate.bench.train_step --out DIR [--seqs 2048 8192] [--variants ...] [--activation-checkpointing]

One point per (variant, sequence length): a freshly initialised model (fp32 parameters, bf16
autocast, fused AdamW: the trainer's recipe), random tokens, the whole model compiled with
torch.compile (eager where compile fails, with a note), ``--warmup`` steps (compilation included)
then the median of ``--steps`` timed steps (CUDA events around forward, backward and optimizer
step). The batch starts at ``--tokens-per-step`` tokens and is halved when memory runs out.

Why the whole model rather than each block: the blocks read per-layer Python state (their layer
index, the forward context's K/V-sharing table and memoized masks), which ``torch.compile`` guards
on, so a per-block compile recompiles for every layer and falls back to eager after eight. One
compile of the whole forward has one graph break (where the context is made) and no recompiles.

Model FLOPs per step (what MFU counts), for B sequences of T = L + meta positions:
- dense: 6 x (parameters that multiply activations: everything but the input embedding table and
  the meta-token embeddings) x B x T, plus 6 x the LM head (counted even when tied to the
  embedding) x B x L (the head skips the meta positions);
- attention: for every layer that attends (KV-sharing consumers too), 6 x heads x (qk_dim + v_dim)
  x visible (query, key) pairs (fwd: 2 matmuls of 2 FLOPs per multiply-add; bwd twice the fwd), the
  pairs counted exactly: T(T+1)/2 for causal, min(i+1, window) plus the meta tokens beyond the
  window for each query i of a sliding-window layer;
- SSM scans are left out of MFU and reported beside it (``scan GF/tok``): Mamba2's chunked SSD
  (intra-chunk C B^T and its product with x over half a chunk on average, chunk states, the state
  read-out) and Mamba's selective scan (~7 FLOPs per channel and state per step), x3 for fwd+bwd.
MFU = model FLOPs per step / step time / 772e12 (bf16 matmul peak measured on the lent H100,
shared/gpu-anchors.md). Meta tokens are model computation every sequence pays, so they count in
FLOPs; tokens/s counts the L training tokens only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ablate.bench.throughput import free_memory, is_oom

PEAK_FLOPS = 772e12  # bf16 dense matmul, measured on the lent H100 (shared/gpu-anchors.md)
TABLE3 = ["table3-mamba2", "table3-mamba2-ffn", "table3-llama3", "table3-samba", "table3-hymba"]


# ---------------------------------------------------------------------------------------------------
# model FLOPs


def visible_pairs(length: int, window: int | None, meta: int) -> int:
    """(query, key) pairs an aligned causal layer computes over ``length`` positions, the first
    ``meta`` of them meta tokens (visible to every later query even past the window)."""
    if window is None or window >= length:
        return length * (length + 1) // 2
    i = torch.arange(length, dtype=torch.float64)
    in_window = torch.clamp(i + 1, max=window)
    meta_beyond = torch.clamp(torch.clamp(i - window + 1, min=0), max=meta)
    return int((in_window + meta_beyond).sum().item())


def matmul_params(model) -> int:
    """Parameters that multiply activations once per position: all but the input embedding table and
    the meta-token embeddings, plus the LM head (its weight is the embedding table when tied)."""
    inner = model.model
    skip = {id(inner.embed_tokens.weight)}
    if inner.meta_tokens is not None:
        skip.add(id(inner.meta_tokens))
    n = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    if id(model.lm_head.weight) in skip:  # tied: the LM head's matmul still runs
        n += model.lm_head.weight.numel()
    return n


def scan_flops_per_position(config) -> float:
    """Forward + backward FLOPs of the SSM scans per position (all layers), outside MFU."""
    if not config.has_ssm:
        return 0.0
    n = config.ssm_state_size
    if config.ssm_type == "mamba2":
        h, p, g, q = config.ssm_num_heads, config.ssm_head_dim, config.ssm_n_groups, config.ssm_chunk_size
        # per position: C B^T over half a chunk (per group), its product with x over half a chunk,
        # the chunk state and the state read-out (per head), 2 FLOPs per multiply-add
        fwd = g * q * n + h * (q * p + 4 * p * n)
    else:
        fwd = 7 * config.ssm_inner_size * n
    return 3.0 * fwd * config.num_hidden_layers


@dataclass
class Flops:
    dense: float  # per step
    attention: float
    scan: float
    positions: int  # per sequence, meta tokens included

    @property
    def model(self) -> float:
        return self.dense + self.attention


def step_flops(model, batch: int, seq: int) -> Flops:
    c = model.config
    positions = seq + c.num_meta_tokens
    head = model.lm_head.weight.numel()
    # the blocks run over every position, meta tokens included; the LM head only over the L tokens
    dense = 6.0 * ((matmul_params(model) - head) * positions + head * seq) * batch
    attention = 0.0
    if c.has_attention:
        qk, v = c.resolved_head_dim, c.resolved_v_head_dim
        for i in range(c.num_hidden_layers):
            pairs = visible_pairs(positions, c.layer_window(i), c.num_meta_tokens)
            attention += 6.0 * c.num_attention_heads * (qk + v) * pairs * batch
    return Flops(dense, attention, scan_flops_per_position(c) * batch * positions, positions)


# ---------------------------------------------------------------------------------------------------
# which implementation each op gets


def backends_in_use(config, batch: int, seq: int, device, dtype) -> dict:
    """The implementation ``auto`` picks for each op at this point's shapes, asked of the dispatcher
    with small stand-in tensors of the right dtype, head dims and masks (availability depends on
    those, not on sizes)."""
    from ablate.kernels.attention import _ATTENTION, MaskSpec
    from ablate.kernels.backend import OPS

    def name_of(op, fn):
        if fn is op.reference:
            return "reference"
        return next((k for k, (f, _) in op.fast_paths.items() if f is fn), getattr(fn, "__name__", "?"))

    out = {}
    act = dtype if device.type == "cuda" else torch.float32
    length = 64
    if config.has_attention:
        q = torch.zeros(1, config.num_attention_heads, length, config.resolved_head_dim, device=device, dtype=act)
        k = torch.zeros(1, config.num_key_value_heads, length, config.resolved_head_dim, device=device, dtype=act)
        v = torch.zeros(1, config.num_key_value_heads, length, config.resolved_v_head_dim, device=device, dtype=act)
        pos = torch.arange(length, device=device)[None]
        kinds = {}
        for i in range(config.num_hidden_layers):
            w = config.layer_window(i)
            # the real sequence decides whether a window binds
            spec = MaskSpec(pos, pos, 1 if (w is not None and w < seq) else None, config.num_meta_tokens, aligned=True)
            kinds["swa" if w is not None else "full"] = name_of(_ATTENTION, _ATTENTION.choose(None, q, k, v, spec))
        out["attention"] = ",".join(f"{kind}:{name}" for kind, name in sorted(kinds.items()))
    if config.has_ssm and config.ssm_type == "mamba2":
        op = OPS["ssd"]
        h, p, n, g = config.ssm_num_heads, config.ssm_head_dim, config.ssm_state_size, config.ssm_n_groups
        z = lambda *s, dt=act: torch.zeros(*s, device=device, dtype=dt)  # noqa: E731
        args = (z(1, length, h, p), z(1, length, h, dt=torch.float32), z(h, dt=torch.float32), z(1, length, g, n), z(1, length, g, n),
                z(h, dt=torch.float32), None, config.ssm_chunk_size, None)
        out["ssd"] = name_of(op, op.choose(None, *args))
    if config.has_ssm and config.ssm_type == "mamba":
        op = OPS["selective_scan"]
        d, n = config.ssm_inner_size, config.ssm_state_size
        z = lambda *s, dt=act: torch.zeros(*s, device=device, dtype=dt)  # noqa: E731
        args = (z(1, d, length), z(1, d, length), z(d, n, dt=torch.float32), z(1, n, length), z(1, n, length),
                z(d, dt=torch.float32), z(1, d, length), z(d, dt=torch.float32), True, None, None)
        out["selective_scan"] = name_of(op, op.choose(None, *args))
    if "conv1d" in OPS and config.has_ssm:
        op = OPS["conv1d"]
        ch = config.ssm_inner_size
        args = (torch.zeros(1, ch, length, device=device, dtype=act), torch.zeros(ch, config.ssm_conv_kernel, device=device),
                torch.zeros(ch, device=device), "silu", None, None)
        out["conv1d"] = name_of(op, op.choose(None, *args))
    return out


# ---------------------------------------------------------------------------------------------------
# one point


@dataclass
class Point:
    variant: str
    seq: int
    scale: str
    batch: int = 0
    tokens_per_s: float = 0.0
    step_ms: float = 0.0
    step_ms_all: list = field(default_factory=list)
    mfu: float = 0.0
    model_tflops_per_s: float = 0.0
    gflop_per_token: float = 0.0  # model FLOPs per training token (meta positions included), fwd+bwd
    dense_gflop_per_token: float = 0.0
    attention_gflop_per_token: float = 0.0
    scan_gflop_per_token: float = 0.0  # not in MFU
    params: int = 0
    matmul_params: int = 0
    peak_gib: float | None = None
    compiled: bool = False
    warmup_s: float = 0.0  # first steps, compilation included
    backends: dict = field(default_factory=dict)
    status: str = "ok"
    note: str = ""


class _Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
        else:
            self.t1 = time.perf_counter()

    def ms(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end)
        return (self.t1 - self.t0) * 1e3


def _loss_fn(model):
    def loss(ids, labels):
        logits = model(input_ids=ids).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    return loss


def run_point(name: str, seq: int, args, say) -> Point:
    from ablate.registry import build_model, resolve

    device = torch.device(args.device)
    variant = resolve(name, args.scale)
    config = variant.config
    point = Point(name, seq, args.scale)
    if seq + config.num_meta_tokens > config.max_position_embeddings:
        # RoPE tables are computed from positions, so a longer context only needs the limit raised
        variant = resolve(name, args.scale, overrides={"max_position_embeddings": seq + config.num_meta_tokens})
        config = variant.config
    bf16 = args.dtype == "bf16"
    point.backends = backends_in_use(config, 1, seq, device, torch.bfloat16 if bf16 else torch.float32)
    if "reference" in point.backends.get("selective_scan", "") and device.type == "cuda" and not args.allow_reference:
        point.status, point.note = "skipped", "no fast selective scan on this device: the reference loops over every step in Python"
        return point

    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(variant)
    model.train()
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    point.params = sum(p.numel() for p in model.parameters())
    point.matmul_params = matmul_params(model)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    loss_fn = _loss_fn(model)
    compiled = args.compile
    # static shapes: a batch halved after an OOM recompiles for exactly that shape
    if compiled:
        from ablate.train.parallelize import allow_per_layer_recompiles

        allow_per_layer_recompiles(len(model.model.layers))
    step_fn = torch.compile(loss_fn, dynamic=False) if compiled else loss_fn
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    batch = args.batch or max(1, args.tokens_per_step // seq)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def one_step(ids, labels):
        with autocast:
            loss = step_fn(ids, labels)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss

    while True:
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen).to(device)
        labels = torch.randint(0, config.vocab_size, (batch, seq), generator=gen).to(device)
        try:
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                loss = one_step(ids, labels)
            if not torch.isfinite(loss.detach()).item():
                point.note += " non-finite loss;"
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            point.warmup_s = time.perf_counter() - t0
            times = []
            for _ in range(args.steps):
                with _Timer(device) as t:
                    one_step(ids, labels)
                times.append(t.ms())
            break
        except Exception as e:  # noqa: BLE001 - OOM halves the batch; a compile failure falls back to eager
            optim.zero_grad(set_to_none=True)
            ids = labels = loss = None
            free_memory()
            if is_oom(e) and batch > 1:
                say(f"{name} seq {seq}: out of memory at batch {batch}, halving")
                batch //= 2
                continue
            if is_oom(e):
                point.status, point.note = "oom", "out of memory at batch 1"
                return point
            if compiled:
                say(f"{name} seq {seq}: compiled step failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); eager")
                point.note += f" compile failed: {type(e).__name__}: {str(e).splitlines()[0][:160]};"
                compiled, step_fn = False, loss_fn
                torch._dynamo.reset()
                continue
            point.status, point.note = "error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            traceback.print_exc()
            return point

    flops = step_flops(model, batch, seq)
    step_s = statistics.median(times) / 1e3
    tokens = batch * seq
    point.batch, point.compiled = batch, compiled
    point.step_ms, point.step_ms_all = step_s * 1e3, [round(t, 3) for t in times]
    point.tokens_per_s = tokens / step_s
    point.model_tflops_per_s = flops.model / step_s / 1e12
    point.mfu = flops.model / step_s / PEAK_FLOPS
    point.gflop_per_token = flops.model / tokens / 1e9
    point.dense_gflop_per_token = flops.dense / tokens / 1e9
    point.attention_gflop_per_token = flops.attention / tokens / 1e9
    point.scan_gflop_per_token = flops.scan / tokens / 1e9
    if device.type == "cuda":
        point.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    model = optim = step_fn = loss_fn = one_step = None  # free before the next point (not `del`: one_step closes over them)
    free_memory()
    return point


# ---------------------------------------------------------------------------------------------------
# the run


def table(points: list[Point]) -> str:
    head = f"{'variant':<18} {'seq':>5} {'batch':>5} {'tok/s':>9} {'step ms':>8} {'MFU %':>6} {'GF/tok':>7} {'attn':>6} {'scan':>6} {'peak GiB':>8} {'warm s':>6}  backends / note"
    lines = [head, "-" * len(head)]
    for p in points:
        if p.status != "ok":
            lines.append(f"{p.variant:<18} {p.seq:>5} {'':>5} {p.status:>9}  {p.note}")
            continue
        be = " ".join(f"{k}={v}" for k, v in p.backends.items())
        peak = f"{p.peak_gib:.1f}" if p.peak_gib is not None else "-"
        lines.append(
            f"{p.variant:<18} {p.seq:>5} {p.batch:>5} {p.tokens_per_s:>9,.0f} {p.step_ms:>8.1f} {100 * p.mfu:>6.1f} "
            f"{p.gflop_per_token:>7.2f} {p.attention_gflop_per_token:>6.2f} {p.scan_gflop_per_token:>6.2f} {peak:>8} {p.warmup_s:>6.0f}  "
            f"{'' if p.compiled else '[eager] '}{be}{(' | ' + p.note.strip()) if p.note.strip() else ''}"
        )
    return "\n".join(lines)


def _env(device) -> dict:
    import platform

    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    from ablate.rundir import git_sha

    env["git"] = git_sha()  # honours ABLATE_GIT_SHA (a lent machine's copy may carry a stale .git)
    return env


def main(argv=None) -> list[Point]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for train_step.json and train_step.md")
    ap.add_argument("--variants", nargs="+", default=TABLE3)
    ap.add_argument("--seqs", nargs="+", type=int, default=[2048, 8192])
    ap.add_argument("--scale", default="paper", help="tiny | proxy | paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bf16 (autocast; default on cuda) | fp32 (default on cpu)")
    ap.add_argument("--tokens-per-step", type=int, default=16384, help="starting batch x seq; halved on OOM")
    ap.add_argument("--batch", type=int, default=0, help="fixed starting batch (overrides --tokens-per-step)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps; the median is reported")
    ap.add_argument("--compile", dest="compile", action="store_true", default=True)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--allow-reference", action="store_true", help="run points whose selective scan would be the Python reference")
    ap.add_argument("--budget-s", type=float, default=0, help="skip the remaining points after this many seconds (0: no limit)")
    args = ap.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def say(msg):
        print(f"[train_step] {msg}", flush=True)

    start = time.perf_counter()
    points: list[Point] = []
    for seq in args.seqs:
        for name in args.variants:
            if args.budget_s and time.perf_counter() - start > args.budget_s:
                points.append(Point(name, seq, args.scale, status="skipped", note="time budget spent"))
                continue
            t0 = time.perf_counter()
            try:
                p = run_point(name, seq, args, say)
            except Exception as e:  # noqa: BLE001 - one point's failure must not lose the others
                traceback.print_exc()
                p = Point(name, seq, args.scale, status="error", note=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            free_memory()
            torch._dynamo.reset()
            say(f"{name} seq {seq}: {p.status} in {time.perf_counter() - t0:.0f} s"
                + (f", {p.tokens_per_s:,.0f} tok/s, MFU {100 * p.mfu:.1f}%" if p.status == "ok" else f" ({p.note})"))
            points.append(p)
            (args.out / "train_step.json").write_text(json.dumps(
                {"env": _env(torch.device(args.device)), "args": {k: str(v) for k, v in vars(args).items()}, "peak_flops": PEAK_FLOPS,
                 "points": [asdict(q) for q in points]}, indent=2))
    text = table(points)
    (args.out / "train_step.md").write_text("```\n" + text + "\n```\n")
    print(f"\ntraining step, scale {args.scale}, {args.dtype}, compile {'on' if args.compile else 'off'}"
          f"{', activation checkpointing' if args.activation_checkpointing else ''}; MFU against {PEAK_FLOPS / 1e12:.0f} TFLOP/s; "
          f"total {time.perf_counter() - start:.0f} s")
    print(text)
    return points


if __name__ == "__main__":
    main()
