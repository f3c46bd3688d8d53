"""The model config (a transformers ``PreTrainedConfig``) and its validation.

One config class describes every variant; which blocks a model stacks and how each layer attends
is data in it. The per-layer layout (full vs sliding-window attention, which layer's K/V a layer
reuses) is derived here from symbolic patterns, so a variant keeps its meaning at every scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import PreTrainedConfig

BLOCKS = ("attention", "ssm", "sequential", "hybrid")
SSM_TYPES = ("mamba", "mamba2")
FUSIONS = ("mean", "concat")
FULL_ATTENTION_PATTERNS = ("all", "none", "first_middle_last")
KV_SHARING_PATTERNS = ("none", "sliding_pairs", "pairs")


class ConfigError(ValueError):
    """A config that cannot build a model. ``field`` names the offending field."""

    def __init__(self, field: str, message: str, source: str | None = None):
        self.field, self.message, self.source = field, message, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}field '{field}': {message}")


class AblateConfig(PreTrainedConfig):
    """Config of every ablate model. Fields are grouped: shape, attention, SSM, hybrid fusion."""

    model_type = "ablate"

    # shape
    vocab_size: int = 32000
    hidden_size: int = 512
    num_hidden_layers: int = 4
    block: str = "attention"  # attention | ssm | sequential | hybrid
    ffn: bool = True  # for ssm blocks: followed by a SwiGLU FFN or not
    intermediate_size: int = 1376
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 8192
    # training on packed sequences: keep attention and SSM state inside each document (the trainer
    # passes seq_idx). With meta tokens, later documents of a pack still see the meta tokens through
    # attention, but their SSM state restarts from zero rather than from the meta tokens' state.
    document_masking: bool = False

    # attention
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    head_dim: int | None = None  # query/key head dim; default: hidden / heads (hybrid: SSM inner width / heads)
    v_head_dim: int | None = None  # value head dim; default: head_dim (Hymba-1.5B: 64 for Q/K, 128 for V)
    attention_bias: bool = False
    rope_theta: float = 10000.0
    sliding_window: int | None = None
    full_attention_layers: str | list[int] = "all"  # all | none | first_middle_last | [layer indices]
    kv_sharing: str | list[list[int]] = "none"  # none | sliding_pairs | pairs | [[producer, consumers...], ...]
    num_meta_tokens: int = 0

    # SSM
    ssm_type: str = "mamba"  # mamba (selective scan, diagonal A per channel) | mamba2 (SSD, scalar A per head)
    ssm_expand: int = 2
    ssm_state_size: int = 16
    ssm_conv_kernel: int = 4
    ssm_dt_rank: int | str = "auto"  # mamba: ceil(hidden / 16)
    ssm_head_dim: int = 64  # mamba2
    ssm_n_groups: int = 1  # mamba2: B/C groups
    ssm_chunk_size: int = 64  # mamba2: SSD chunk length
    ssm_bias: bool = False  # bias of a standalone SSM mixer's in/out projections
    ssm_conv_bias: bool = True
    ssm_dt_min: float = 0.001
    ssm_dt_max: float = 0.1
    ssm_dt_init_floor: float = 1e-4
    ssm_dt_bc_norm: bool = False  # RMSNorm on dt, B and C (Hymba's SSM heads)

    # hybrid-head block
    fusion: str = "mean"  # mean | concat
    hybrid_proj_bias: bool = True  # bias of the hybrid block's shared in/out projections

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        problems = config_problems(self)
        if problems:
            field, message = problems[0]
            raise ConfigError(field, message)

    # ---- derived layout -------------------------------------------------------------------
    @property
    def has_attention(self) -> bool:
        return self.block in ("attention", "sequential", "hybrid")

    @property
    def has_ssm(self) -> bool:
        return self.block in ("ssm", "sequential", "hybrid")

    @property
    def resolved_head_dim(self) -> int:
        if self.head_dim is not None:
            return self.head_dim
        width = self.ssm_inner_size if self.block == "hybrid" else self.hidden_size
        return width // self.num_attention_heads

    @property
    def resolved_v_head_dim(self) -> int:
        return self.v_head_dim if self.v_head_dim is not None else self.resolved_head_dim

    @property
    def attention_width(self) -> int:
        """Width of the attention output (heads x value head dim)."""
        return self.num_attention_heads * self.resolved_v_head_dim

    @property
    def query_width(self) -> int:
        return self.num_attention_heads * self.resolved_head_dim

    @property
    def key_width(self) -> int:
        return self.num_key_value_heads * self.resolved_head_dim

    @property
    def value_width(self) -> int:
        return self.num_key_value_heads * self.resolved_v_head_dim

    @property
    def ssm_inner_size(self) -> int:
        return self.ssm_expand * self.hidden_size

    @property
    def ssm_conv_channels(self) -> int:
        """Channels of an SSM layer's causal conv: x (Mamba), or x, B and C (Mamba2)."""
        extra = 2 * self.ssm_n_groups * self.ssm_state_size if self.ssm_type == "mamba2" else 0
        return self.ssm_inner_size + extra

    @property
    def resolved_dt_rank(self) -> int:
        return math.ceil(self.hidden_size / 16) if self.ssm_dt_rank == "auto" else int(self.ssm_dt_rank)

    @property
    def ssm_num_heads(self) -> int:  # mamba2
        return self.ssm_inner_size // self.ssm_head_dim

    @property
    def full_attention_layer_ids(self) -> list[int]:
        return resolve_full_attention_layers(self.full_attention_layers, self.num_hidden_layers)

    @property
    def layer_attention(self) -> list[str | None]:
        """Per layer: 'full', 'sliding' or None (no attention)."""
        if not self.has_attention:
            return [None] * self.num_hidden_layers
        if self.sliding_window is None:
            return ["full"] * self.num_hidden_layers
        full = set(self.full_attention_layer_ids)
        return ["full" if i in full else "sliding" for i in range(self.num_hidden_layers)]

    @property
    def kv_source(self) -> list[int | None]:
        """Per layer: the index of the layer whose K/V it attends over (itself when it computes its
        own), None without attention."""
        return resolve_kv_sharing(self.kv_sharing, self.layer_attention)

    def layer_window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_attention[layer] == "sliding" else None


# ---- symbolic patterns ----------------------------------------------------------------------
def resolve_full_attention_layers(pattern, num_layers: int) -> list[int]:
    if pattern == "all":
        return list(range(num_layers))
    if pattern == "none":
        return []
    if pattern == "first_middle_last":
        # as Hymba-1.5B's 32 layers: 0, 15, 31
        return sorted({0, (num_layers - 1) // 2, num_layers - 1})
    return sorted(int(i) for i in pattern)


def resolve_kv_sharing(pattern, layer_attention: list[str | None]) -> list[int | None]:
    source: list[int | None] = [i if kind else None for i, kind in enumerate(layer_attention)]
    if pattern == "none":
        return source
    if pattern in ("sliding_pairs", "pairs"):
        # within each run of consecutive attention layers of one kind, layers pair up: the first of a
        # pair computes K/V, the second reuses them; a run of odd length starts with a triple, as in
        # Hymba-1.5B's kv_reuse_group ([16, 17, 18] after the middle full layer). "sliding_pairs"
        # leaves full-attention layers unshared (Hymba).
        runs: list[list[int]] = []
        for i, kind in enumerate(layer_attention):
            if kind == "sliding" or (pattern == "pairs" and kind == "full"):
                if runs and runs[-1][-1] == i - 1 and layer_attention[i - 1] == kind:
                    runs[-1].append(i)
                    continue
                runs.append([i])
        for run in runs:
            if len(run) < 2:
                continue
            groups = [run[:3]] + [run[j : j + 2] for j in range(3, len(run), 2)] if len(run) % 2 else [run[j : j + 2] for j in range(0, len(run), 2)]
            for group in groups:
                for consumer in group[1:]:
                    source[consumer] = group[0]
        return source
    for group in pattern:
        first = int(group[0])
        for consumer in group[1:]:
            source[int(consumer)] = first
    return source


# ---- validation -----------------------------------------------------------------------------
_TYPE_NAMES = {"int": int, "float": (int, float), "bool": bool, "str": str, "None": type(None), "list": list}


def _accepted_types(annotation: str) -> tuple:
    """The runtime types a field annotation such as ``int | str`` or ``str | list[int]`` admits."""
    types: list = []
    for part in annotation.split("|"):
        base = part.strip().split("[", 1)[0]
        accepted = _TYPE_NAMES.get(base)
        if accepted is None:
            return (object,)
        types.extend(accepted if isinstance(accepted, tuple) else (accepted,))
    return tuple(types)


def _type_problems(c: "AblateConfig") -> list[tuple[str, str]]:
    out = []
    for name, annotation in AblateConfig.__annotations__.items():
        value = getattr(c, name, None)
        accepted = _accepted_types(str(annotation))
        is_bool = isinstance(value, bool)
        if not isinstance(value, accepted) or (is_bool and bool not in accepted):
            out.append((name, f"must be {str(annotation).replace(' | ', ' or ')}, got {value!r}"))
    return out


def config_problems(c: AblateConfig) -> list[tuple[str, str]]:
    """Every inconsistency, as (field, message); empty when the config can build a model."""
    out: list[tuple[str, str]] = []

    def need(ok: bool, field: str, message: str) -> None:
        if not ok:
            out.append((field, message))

    out.extend(_type_problems(c))
    if out:
        return out
    need(c.block in BLOCKS, "block", f"unknown block {c.block!r}; one of {', '.join(BLOCKS)}")
    for f in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size"):
        need(isinstance(getattr(c, f), int) and getattr(c, f) > 0, f, f"must be a positive integer, got {getattr(c, f)!r}")
    if out:
        return out
    if c.has_attention:
        h, kv = c.num_attention_heads, c.num_key_value_heads
        need(h > 0, "num_attention_heads", f"must be positive, got {h}")
        need(kv > 0, "num_key_value_heads", f"must be positive, got {kv}")
        if h > 0 and kv > 0:
            need(h % kv == 0, "num_key_value_heads", f"{h} attention heads are not divisible by {kv} KV heads")
        if c.head_dim is None and h > 0:
            width = c.ssm_inner_size if c.block == "hybrid" else c.hidden_size
            need(width % h == 0, "num_attention_heads", f"width {width} is not divisible by {h} heads; set head_dim")
        if c.head_dim is not None:
            need(c.head_dim > 0 and c.head_dim % 2 == 0, "head_dim", f"must be a positive even number (RoPE), got {c.head_dim}")
        if c.v_head_dim is not None:
            need(c.v_head_dim > 0, "v_head_dim", f"must be positive, got {c.v_head_dim}")
        w = c.sliding_window
        if w is not None:
            need(isinstance(w, int) and w > 0, "sliding_window", f"must be a positive integer, got {w!r}")
            need(
                not isinstance(w, int) or w <= c.max_position_embeddings,
                "sliding_window",
                f"window {w} is larger than the context (max_position_embeddings {c.max_position_embeddings})",
            )
        fal = c.full_attention_layers
        if isinstance(fal, str):
            need(fal in FULL_ATTENTION_PATTERNS, "full_attention_layers", f"unknown pattern {fal!r}; one of {', '.join(FULL_ATTENTION_PATTERNS)} or a list of layer indices")
        else:
            bad = [i for i in fal if not (isinstance(i, int) and 0 <= i < c.num_hidden_layers)]
            need(not bad, "full_attention_layers", f"layer indices {bad} outside 0..{c.num_hidden_layers - 1}")
        if w is None:
            need(fal in ("all",) or c.full_attention_layers == list(range(c.num_hidden_layers)), "full_attention_layers",
                 "lists full-attention layers but sliding_window is not set")
        ks = c.kv_sharing
        if isinstance(ks, str):
            need(ks in KV_SHARING_PATTERNS, "kv_sharing", f"unknown pattern {ks!r}; one of {', '.join(KV_SHARING_PATTERNS)} or a list of layer groups")
        elif not out:
            kinds = c.layer_attention
            seen: set[int] = set()
            for group in ks:
                ids = list(group)
                if any(not (isinstance(i, int) and 0 <= i < c.num_hidden_layers) for i in ids):
                    need(False, "kv_sharing", f"group {ids} has layer indices outside 0..{c.num_hidden_layers - 1}")
                    continue
                need(ids == sorted(ids) and len(set(ids)) == len(ids), "kv_sharing", f"group {ids} must list increasing layers, the producer first")
                need(len({kinds[i] for i in ids}) == 1, "kv_sharing", f"group {ids} mixes full and sliding-window layers")
                need(not (seen & set(ids)), "kv_sharing", f"layer(s) {sorted(seen & set(ids))} appear in more than one group")
                seen |= set(ids)
        need(c.num_meta_tokens >= 0, "num_meta_tokens", f"must be >= 0, got {c.num_meta_tokens}")
        need(c.num_meta_tokens < c.max_position_embeddings, "num_meta_tokens", "leaves no room in the context")
    else:
        need(c.sliding_window is None, "sliding_window", f"block {c.block!r} has no attention")
        need(c.kv_sharing in ("none", []), "kv_sharing", f"block {c.block!r} has no attention")
    if c.has_ssm:
        need(c.ssm_type in SSM_TYPES, "ssm_type", f"unknown SSM {c.ssm_type!r}; one of {', '.join(SSM_TYPES)}")
        need(c.ssm_conv_kernel >= 1, "ssm_conv_kernel", f"must be >= 1, got {c.ssm_conv_kernel}")
        need(c.ssm_state_size >= 1, "ssm_state_size", f"must be >= 1, got {c.ssm_state_size}")
        if c.ssm_type == "mamba2":
            need(c.ssm_inner_size % c.ssm_head_dim == 0, "ssm_head_dim", f"SSM width {c.ssm_inner_size} is not divisible by head dim {c.ssm_head_dim}")
            if c.ssm_inner_size % c.ssm_head_dim == 0:
                need(c.ssm_num_heads % c.ssm_n_groups == 0, "ssm_n_groups", f"{c.ssm_num_heads} SSM heads are not divisible by {c.ssm_n_groups} groups")
            need(c.block != "hybrid", "ssm_type", "the hybrid-head block runs Mamba (v1) heads, as Hymba does; use ssm_type: mamba")
        need(c.ssm_dt_rank == "auto" or (isinstance(c.ssm_dt_rank, int) and c.ssm_dt_rank > 0), "ssm_dt_rank", f"must be 'auto' or a positive integer, got {c.ssm_dt_rank!r}")
    if c.block == "hybrid":
        need(c.fusion in FUSIONS, "fusion", f"unknown fusion {c.fusion!r}; one of {', '.join(FUSIONS)}")
    return out


@dataclass(frozen=True)
class LayerPlan:
    """What one layer does, derived from the config (used by the model, the cache and accounting)."""

    index: int
    attention: str | None  # full | sliding | None
    window: int | None
    kv_source: int | None

    @property
    def owns_kv(self) -> bool:
        return self.attention is not None and self.kv_source == self.index


def layer_plans(c: AblateConfig) -> list[LayerPlan]:
    kinds, sources = c.layer_attention, c.kv_source
    return [LayerPlan(i, kinds[i], c.layer_window(i), sources[i]) for i in range(c.num_hidden_layers)]
