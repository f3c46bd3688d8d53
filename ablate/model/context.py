"""What one forward pass shares across layers: positions, RoPE tables, padding, the K/V that
KV-sharing layers hand to later layers, masks built once per window."""

from __future__ import annotations

import torch

from ablate.kernels import MaskSpec
from ablate.model.layers import rope_tables


class ForwardContext:
    """Deliberately a plain class, not a dataclass: FSDP2's forward hooks rebuild dataclasses, dicts
    and tuples that reach a module as arguments, which would hand every layer its own copy (a
    producer's K/V invisible to its consumers, masks and RoPE tables rebuilt per layer). A plain
    object passes through untouched, so all layers of one forward share one context."""

    def __init__(
        self,
        positions: torch.Tensor | None,  # (b or 1, l) absolute positions of the queries (meta tokens 0..M-1); None: none read
        num_meta: int,
        head_dim: int,
        rope_theta: float,
        dtype: torch.dtype,
        token_valid: torch.Tensor | None = None,  # (b, l) False at padding
        cache: object | None = None,  # the inference cache (ablate.model.cache), None when training
        seq_idx: torch.Tensor | None = None,  # (b, l) document index of each token when packed documents must not mix
    ):
        self.positions, self.num_meta, self.head_dim = positions, num_meta, head_dim
        self.rope_theta, self.dtype = rope_theta, dtype
        self.token_valid, self.cache, self.seq_idx = token_valid, cache, seq_idx
        self.shared_kv: dict = {}  # producer layer -> (k, v, k_positions, k_valid)
        self._rope: tuple | None = None
        self._masks: dict = {}

    @property
    def rope(self):
        if self._rope is None:
            self._rope = rope_tables(self.positions, self.head_dim, self.rope_theta, self.dtype)
        return self._rope

    def mask(self, window: int | None, k_positions: torch.Tensor, k_valid: torch.Tensor | None) -> MaskSpec:
        """The mask description for one layer kind, shared by every layer that attends over the same
        keys (so a backend builds its mask once per forward)."""
        key = (window, k_positions.data_ptr(), tuple(k_positions.shape), None if k_valid is None else k_valid.data_ptr())
        if key not in self._masks:
            # keys are exactly the queries (no cache, or a cache's first chunk, which hands back the
            # query positions themselves)
            aligned = k_positions is self.positions
            seq = self.seq_idx if aligned else None
            self._masks[key] = MaskSpec(self.positions, k_positions, window, self.num_meta, k_valid, aligned, seq, seq)
        return self._masks[key]
