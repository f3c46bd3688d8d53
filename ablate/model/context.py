"""What one forward pass shares across layers: positions, RoPE tables, padding, the K/V that
KV-sharing layers hand to later layers, masks built once per window."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ablate.kernels import attention_mask
from ablate.model.layers import rope_tables


@dataclass
class ForwardContext:
    positions: torch.Tensor  # (b or 1, l) absolute positions of the queries; meta tokens are 0..M-1
    num_meta: int
    head_dim: int
    rope_theta: float
    dtype: torch.dtype
    token_valid: torch.Tensor | None = None  # (b, l) False at padding
    cache: object | None = None  # the inference cache (ablate.model.cache), None when training
    shared_kv: dict = field(default_factory=dict)  # producer layer -> (k, v, k_positions, k_valid)
    _rope: tuple | None = None
    _masks: dict = field(default_factory=dict)

    @property
    def rope(self):
        if self._rope is None:
            self._rope = rope_tables(self.positions, self.head_dim, self.rope_theta, self.dtype)
        return self._rope

    def mask(self, window: int | None, k_positions: torch.Tensor, k_valid: torch.Tensor | None):
        """The attention mask for one layer kind. None means plain causal over aligned queries and
        keys, the case the fused kernels handle fastest."""
        aligned = k_positions.shape[-1] == self.positions.shape[-1] and self.cache is None
        if window is None and k_valid is None and aligned:
            return None
        key = (window, k_positions.data_ptr(), k_positions.shape, None if k_valid is None else k_valid.data_ptr())
        if key not in self._masks:
            self._masks[key] = attention_mask(self.positions, k_positions, window, self.num_meta, k_valid)
        return self._masks[key]
