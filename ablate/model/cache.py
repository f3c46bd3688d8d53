"""The inference cache: exactly what each variant needs to continue a sequence, and its byte count.

Per layer, from ``layer_plans``:

- a full-attention layer that computes its own K/V: keys and values for the meta tokens and every
  token, token i of the row (meta tokens first, padding included) in slot i;
- a sliding-window layer that computes its own K/V: the meta tokens plus a ring buffer of
  ``min(window, capacity)`` slots, token i in slot ``M + (i - M) % ring``;
- a layer that reuses another layer's K/V: nothing (it attends over its producer's store);
- an SSM layer: the conv state (the last ``kernel - 1`` inputs) and the recurrent state.

Slot bookkeeping (the absolute position each slot holds, and which slots hold a real token in each
row) is the same for every layer of one attention kind, so it is kept once per kind (``SlotTable``)
and every layer of that kind hands the attention the same position / validity tensors: masks are
built once per kind per step.

Meta tokens do not depend on the prompt: their K/V and the SSM state after them are computed once per
model (and dtype / device / weights, see ``meta_seed``) and copied into each new cache, which then
starts at position M.

Two ways to read a full-attention store in a one-token decode step: ``static_decode=False`` gives
the written prefix (shapes grow by one each step); ``static_decode=True`` gives the whole
preallocated buffer with a validity mask, so every decode step has the same shapes and the same
buffer addresses, as a CUDA graph needs.

Slots and positions are counted apart. Slots (where a token is stored) advance together for the
whole batch; positions (what RoPE and the window see) advance per row and skip padding, so a
left-padded row computes what it would alone (``transformers`` gets the same from ``position_ids``).
Both counters live on the device, so a decode step needs no Python-side position.

Every state is kept in the cache's dtype, the SSM recurrent state included (as the inference caches
of mamba_ssm and ``transformers`` keep it); the step math runs in fp32. That is what the analytic
count (``ablate.bench.accounting.cache_bytes``) assumes, so ``nbytes`` equals it exactly;
``ssm_state_dtype=torch.float32`` keeps the recurrent state wider, and then holds more.

The cache is a ``transformers`` ``Cache`` so that ``generate()`` treats it as one (see
``AblateForCausalLM._prepare_cache_for_generation``); it is not a list of HF cache layers.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from ablate.config import AblateConfig, layer_plans


class SlotTable:
    """Slot bookkeeping shared by every layer of one attention kind (full, or one window width).

    pos: (B, S) position held by each slot in each row; valid: (B, S) the slot holds a real token of
    that row (False: unwritten, or padding)."""

    def __init__(self, window: int | None, num_meta: int, capacity: int, batch: int, device):
        self.window, self.num_meta = window, num_meta
        self.ring = None if window is None else min(window, capacity)
        self.size = num_meta + (capacity if window is None else self.ring)
        self.pos = torch.zeros(batch, self.size, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch, self.size, dtype=torch.bool, device=device)
        self.any_invalid = False  # some written slot holds padding: attention needs ``valid``
        self._memo_step, self._memo = -1, None

    def reset(self) -> None:
        self.pos.zero_()
        self.valid.zero_()
        self.any_invalid = False
        self._memo_step, self._memo = -1, None

    def slots(self, index: torch.Tensor) -> torch.Tensor:
        """Slot of each token index (the batch-wide slot counter), on device (usable in a CUDA graph)."""
        if not self.ring:  # full attention, or a ring of 0 slots (a cache for the meta tokens only)
            return index
        m = self.num_meta
        return torch.where(index < m, index, m + (index - m).remainder(self.ring))

    def written(self, seen: int) -> int:
        """Slots written after ``seen`` tokens: they form a prefix (meta slots, then the ring in order
        until it wraps)."""
        m = self.num_meta
        if self.ring is None:
            return seen
        return min(seen, m) + min(max(seen - m, 0), self.ring)


@dataclass
class KeyView:
    """How the layers of one kind read their store during one forward (computed once per kind)."""

    mode: str  # fresh | prefix | whole | concat
    k_pos: torch.Tensor
    k_valid: torch.Tensor | None
    end: int = 0  # prefix: slots to read
    old: int = 0  # concat: slots written before this chunk
    src: torch.Tensor | None = None  # concat: chunk indices to store
    dst: torch.Tensor | None = None  # slots written (for write-first modes: one per chunk token)


@dataclass
class KVStore:
    k: torch.Tensor  # (B, kv_heads, S, head_dim)
    v: torch.Tensor  # (B, kv_heads, S, v_head_dim)
    table: SlotTable


class AblateCache(Cache):
    """K/V stores, ring buffers and SSM states for one batch, allocated for ``capacity`` tokens after
    the meta tokens. See the module docstring for the layout."""

    def __init__(
        self,
        config: AblateConfig,
        batch_size: int,
        capacity: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        ssm_state_dtype: torch.dtype | None = None,
    ):
        super().__init__(layers=[])
        self.config = config
        self.batch, self.capacity = batch_size, capacity
        self.dtype, self.device = dtype, torch.device(device)
        self.num_meta = config.num_meta_tokens
        self.static_decode = False
        self.seen_tokens = 0  # tokens (meta included) stored per row so far, padding included: the slot counter
        self._next_slot = torch.zeros(1, dtype=torch.long, device=self.device)  # seen_tokens, on device
        self._next_pos = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # per row: real tokens so far
        self.per_row = False  # some row has skipped padding: positions differ between rows
        self._step = 0
        self.tables: dict[int | None, SlotTable] = {}
        self.kv: dict[int, KVStore] = {}
        self.conv: dict[int, torch.Tensor] = {}
        self.ssm: dict[int, torch.Tensor] = {}
        kvh, d, dv = config.num_key_value_heads, config.resolved_head_dim, config.resolved_v_head_dim
        for plan in layer_plans(config):
            if plan.owns_kv:
                if plan.window not in self.tables:
                    self.tables[plan.window] = SlotTable(plan.window, self.num_meta, capacity, batch_size, self.device)
                table = self.tables[plan.window]
                k = torch.zeros(batch_size, kvh, table.size, d, dtype=dtype, device=self.device)
                v = torch.zeros(batch_size, kvh, table.size, dv, dtype=dtype, device=self.device)
                self.kv[plan.index] = KVStore(k, v, table)
        if config.has_ssm:
            state_dtype = ssm_state_dtype or dtype
            for i in range(config.num_hidden_layers):
                self.conv[i], self.ssm[i] = _ssm_buffers(config, batch_size, dtype, state_dtype, self.device)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def for_model(cls, model, batch_size: int, capacity: int, dtype=None, device=None, seed_meta: bool = True, **kwargs) -> "AblateCache":
        """A cache for ``model`` (an AblateForCausalLM or AblateModel), seeded with the meta tokens'
        K/V and SSM state unless ``seed_meta`` is False (then the first forward runs them)."""
        p = next(model.parameters())
        cache = cls(model.config, batch_size, capacity, dtype or p.dtype, device or p.device, **kwargs)
        if seed_meta and cache.num_meta:
            cache.seed(meta_seed(model, cache.dtype, cache.device))
        return cache

    def seed(self, seed: "AblateCache") -> None:
        """Start from the meta tokens: copy a batch-1 cache that has processed only them."""
        if seed.seen_tokens != self.num_meta or self.seen_tokens != 0:
            raise ValueError(f"can only seed a fresh cache from one that holds the {self.num_meta} meta tokens")
        m = self.num_meta
        for i, store in self.kv.items():
            src = seed.kv[i]
            store.k[:, :, :m].copy_(src.k[:, :, :m].expand(self.batch, -1, -1, -1))
            store.v[:, :, :m].copy_(src.v[:, :, :m].expand(self.batch, -1, -1, -1))
        for table in self.tables.values():
            table.pos[:, :m].copy_(torch.arange(m, device=self.device).expand(self.batch, -1))
            table.valid[:, :m] = True
        for i in self.conv:
            self.conv[i].copy_(seed.conv[i].expand_as(self.conv[i]))
            self.ssm[i].copy_(seed.ssm[i].expand_as(self.ssm[i]))
        self._next_pos.fill_(m)
        self._set_seen(m)

    def reset(self, seed: "AblateCache | None" = None) -> None:
        """Back to empty (then seeded, when given), in place: buffer addresses do not change, so a
        captured CUDA graph stays valid."""
        for table in self.tables.values():
            table.reset()
        for store in self.kv.values():
            store.k.zero_()
            store.v.zero_()
        for i in self.conv:
            self.conv[i].zero_()
            self.ssm[i].zero_()
        self._next_pos.zero_()
        self.per_row = False
        self._set_seen(0)
        if seed is not None:
            self.seed(seed)

    def _set_seen(self, n: int) -> None:
        """Move the slot counter (positions are not touched)."""
        self.seen_tokens = n
        self._next_slot.fill_(n)
        self._step += 1

    # ---- the hooks the model calls -------------------------------------------------------------
    def positions(self, length: int, token_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Positions of the next ``length`` tokens: (1, length) while every row is at the same
        position, else (B, length). A padding token gets the position of the row's next real token
        (it is masked out anyway)."""
        if token_valid is not None:
            self.per_row = True
            return self._next_pos.unsqueeze(1) + (token_valid.long().cumsum(1) - token_valid.long())
        start = self._next_pos if self.per_row else self._next_pos[:1]
        return start.unsqueeze(1) + torch.arange(length, device=self.device)

    def advance(self, n: int, token_valid: torch.Tensor | None = None) -> None:
        """After a forward over ``n`` tokens (``token_valid``: which were real, per row)."""
        if token_valid is not None:
            self._next_pos.add_(token_valid.sum(1))
            self._next_slot.add_(n)
        else:  # one kernel for both counters (a decode step replays it every token)
            torch._foreach_add_([self._next_pos, self._next_slot], n)
        self.seen_tokens += n
        self._step += 1

    def _slot_index(self, length: int) -> torch.Tensor:
        return self._next_slot + torch.arange(length, device=self.device)

    def _read_pos(self, table: "SlotTable", end: int | None = None) -> torch.Tensor:
        pos = table.pos if self.per_row else table.pos[:1]
        return pos if end is None else pos[:, :end]

    def update_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, token_valid: torch.Tensor | None):
        """Store a chunk's K/V (b, kv_heads, l, d) and return what the layer attends over:
        (k, v, key positions, key validity or None)."""
        store = self.kv[layer]
        view = self._view(store.table, positions, token_valid)
        k, v = k.to(store.k.dtype), v.to(store.v.dtype)
        if view.mode == "concat":
            keys = (torch.cat([store.k[:, :, : view.old], k], 2), torch.cat([store.v[:, :, : view.old], v], 2)) if view.old else (k, v)
            store.k.index_copy_(2, view.dst, k.index_select(2, view.src))
            store.v.index_copy_(2, view.dst, v.index_select(2, view.src))
            return keys[0], keys[1], view.k_pos, view.k_valid
        store.k.index_copy_(2, view.dst, k)
        store.v.index_copy_(2, view.dst, v)
        if view.mode == "fresh":
            return k, v, view.k_pos, view.k_valid
        return self._attended(store, view)

    def decode_slot(self, layer: int, positions: torch.Tensor, token_valid: torch.Tensor | None):
        """For a one-token step that writes its K/V itself (``ablate.model.decode.rope_store_kv``):
        (K store, V store, slot index (1,), and what the layer then attends over as ``update_kv``
        returns it). None where the step must go through ``update_kv`` (the first token)."""
        store = self.kv[layer]
        view = self._view(store.table, positions, token_valid)
        if positions.shape[-1] != 1 or view.mode not in ("whole", "prefix"):
            return None
        return store.k, store.v, view.dst, self._attended(store, view)

    @staticmethod
    def _attended(store: KVStore, view: KeyView):
        if view.mode == "prefix":
            return store.k[:, :, : view.end], store.v[:, :, : view.end], view.k_pos, view.k_valid
        return store.k, store.v, view.k_pos, view.k_valid

    def ssm_state(self, layer: int):
        """(conv state, recurrent state) to continue from; (None, None) before the first token."""
        if self.seen_tokens == 0:
            return None, None
        return self.conv[layer], self.ssm[layer]

    def ssm_buffers(self, layer: int):
        """The state buffers themselves (zeros before the first token), for in-place decode steps."""
        return self.conv[layer], self.ssm[layer]

    def set_ssm_state(self, layer: int, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> None:
        self.conv[layer].copy_(conv_state)
        self.ssm[layer].copy_(ssm_state)

    def _view(self, table: SlotTable, positions: torch.Tensor, token_valid: torch.Tensor | None) -> KeyView:
        if table._memo_step != self._step:
            table._memo = self._plan_view(table, positions, token_valid)
            table._memo_step = self._step
        return table._memo

    def _plan_view(self, table: SlotTable, positions: torch.Tensor, token_valid: torch.Tensor | None) -> KeyView:
        seen, length = self.seen_tokens, positions.shape[-1]
        if token_valid is not None:
            table.any_invalid = True
        if table.ring is None and seen + length > table.size:
            raise ValueError(
                f"cache holds {self.capacity} tokens after {self.num_meta} meta tokens; this forward would "
                f"reach {seen + length - self.num_meta}: allocate a larger cache"
            )
        if table.ring is not None and length > 1:
            return self._plan_concat(table, positions, token_valid)
        # write first, then read: the store still holds every key the chunk needs (a full layer never
        # overwrites; a ring overwrites only the slot that the one new query no longer sees)
        if table.ring == 0 and seen >= self.num_meta:
            raise ValueError("cache was allocated for 0 tokens after the meta tokens: nothing can be decoded")
        dst = table.slots(self._slot_index(length))
        table.pos.index_copy_(1, dst, positions.expand(self.batch, -1))
        table.valid.index_copy_(1, dst, token_valid if token_valid is not None else _ones(self.batch, length, self.device))
        if seen == 0:
            return KeyView("fresh", positions, token_valid, dst=dst)
        if table.ring is not None or (self.static_decode and length == 1):
            return KeyView("whole", self._read_pos(table), table.valid, dst=dst)
        end = seen + length
        return KeyView("prefix", self._read_pos(table, end), table.valid[:, :end] if table.any_invalid else None, end=end, dst=dst)

    def _plan_concat(self, table: SlotTable, positions: torch.Tensor, token_valid: torch.Tensor | None) -> KeyView:
        """A chunk of several tokens in a ring layer: attend over (slots written so far + the chunk),
        then store the chunk's meta tokens and its last ``ring`` tokens."""
        seen, length, m = self.seen_tokens, positions.shape[-1], table.num_meta
        old = table.written(seen)
        chunk_valid = token_valid
        if old:
            k_pos = torch.cat([self._read_pos(table, old).expand(positions.shape[0], -1), positions], 1)
            if table.any_invalid:
                new_valid = token_valid if token_valid is not None else _ones(self.batch, length, self.device)
                chunk_valid = torch.cat([table.valid[:, :old], new_valid], 1)
            else:
                chunk_valid = None
        else:
            k_pos = positions
        first_kept = max(m, seen + length - table.ring)
        src, dst = [], []
        for i in range(length):
            p = seen + i
            if p < m:
                src.append(i), dst.append(p)
            elif p >= first_kept:
                src.append(i), dst.append(m + (p - m) % table.ring)
        src_t = torch.tensor(src, dtype=torch.long, device=self.device)
        dst_t = torch.tensor(dst, dtype=torch.long, device=self.device)
        table.pos.index_copy_(1, dst_t, positions.expand(self.batch, -1).index_select(1, src_t))
        new_valid = token_valid if token_valid is not None else _ones(self.batch, length, self.device)
        table.valid.index_copy_(1, dst_t, new_valid.index_select(1, src_t))
        return KeyView("concat", k_pos, chunk_valid, old=old, src=src_t, dst=dst_t)

    # ---- size --------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes of state held: K/V stores, conv and recurrent states. The slot bookkeeping (one
        position per slot and one validity flag per row and slot, per attention kind) is not
        counted: it is not model state, and the analytic count leaves it out too."""
        tensors = [t for s in self.kv.values() for t in (s.k, s.v)] + list(self.conv.values()) + list(self.ssm.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def bookkeeping_nbytes(self) -> int:
        return sum(t.pos.numel() * t.pos.element_size() + t.valid.numel() for t in self.tables.values())

    # ---- rows: micro-batched prefill, beam search ----------------------------------------------
    def rows(self, start: int, stop: int) -> "AblateCache":
        """A cache over rows [start, stop) sharing this cache's storage (writes land here). After
        prefilling every row through views, call ``adopt(view)`` to take over their progress."""
        view = object.__new__(AblateCache)
        view.__dict__.update(self.__dict__)
        view.batch = stop - start
        view._next_slot = self._next_slot.clone()
        view._next_pos = self._next_pos[start:stop]  # a view: the rows' positions advance here
        view.tables = {}
        for key, table in self.tables.items():
            t = object.__new__(SlotTable)
            t.__dict__.update(table.__dict__)
            t.pos, t.valid = table.pos[start:stop], table.valid[start:stop]
            t._memo_step, t._memo = -1, None
            view.tables[key] = t
        view.kv = {i: KVStore(s.k[start:stop], s.v[start:stop], view.tables[s.table.window]) for i, s in self.kv.items()}
        view.conv = {i: c[start:stop] for i, c in self.conv.items()}
        view.ssm = {i: c[start:stop] for i, c in self.ssm.items()}
        return view

    def adopt(self, view: "AblateCache") -> None:
        """Take over the progress of a row view (every row must have advanced as far)."""
        for key, table in self.tables.items():
            table.any_invalid = table.any_invalid or view.tables[key].any_invalid
        self.per_row = self.per_row or view.per_row
        self._set_seen(view.seen_tokens)

    def fill_rows_from(self, done: int) -> None:
        """Copy rows [0, done) cyclically into rows [done, B): a full batch of states without
        prefilling every row (for benchmarks, where decode cost does not depend on the contents)."""
        if done >= self.batch:
            return
        index = torch.arange(done, self.batch, device=self.device) % done
        for tensor in self._batch_tensors():
            tensor[done:] = tensor.index_select(0, index)

    def _batch_tensors(self) -> list[torch.Tensor]:
        out = [t for s in self.kv.values() for t in (s.k, s.v)] + [t for tb in self.tables.values() for t in (tb.pos, tb.valid)]
        return out + list(self.conv.values()) + list(self.ssm.values()) + [self._next_pos]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for tensor in self._batch_tensors():
            tensor.copy_(tensor.index_select(0, beam_idx.to(tensor.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    # ---- transformers Cache API --------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens of the input processed so far (meta tokens excluded), as ``generate`` counts."""
        return max(self.seen_tokens - self.num_meta, 0)

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.capacity

    @property
    def batch_size(self) -> int:
        return self.batch

    @property
    def is_compileable(self) -> bool:
        # generate() must not build 4D masks or auto-compile for us; the bench captures CUDA graphs itself
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("AblateCache cannot roll back SSM state or ring buffers (no assisted decoding)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("AblateCache is allocated for its final batch; expand the inputs before prefill")

    def __len__(self) -> int:
        return self.config.num_hidden_layers

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"AblateCache(batch={self.batch}, capacity={self.capacity}, seen={self.seen_tokens}, {self.nbytes() / 1e6:.2f} MB)"


def _ones(b: int, l: int, device) -> torch.Tensor:
    return torch.ones(b, l, dtype=torch.bool, device=device)


def _ssm_buffers(config: AblateConfig, batch: int, dtype, state_dtype, device):
    """(conv state (B, channels, kernel - 1), recurrent state) of one SSM layer, zeros."""
    if config.ssm_type == "mamba2":
        shape = (batch, config.ssm_num_heads, config.ssm_head_dim, config.ssm_state_size)
    else:
        shape = (batch, config.ssm_inner_size, config.ssm_state_size)
    channels = config.ssm_conv_channels
    # stored tap-major, seen as (B, channels, kernel - 1): the decode step's loads and stores of one
    # tap then run along contiguous channels
    conv = torch.zeros(batch, config.ssm_conv_kernel - 1, channels, dtype=dtype, device=device).transpose(1, 2)
    return conv, torch.zeros(*shape, dtype=state_dtype, device=device)


# ---- meta tokens: computed once per model ------------------------------------------------------
_SEEDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _weights_key(model, dtype, device) -> tuple:
    # a parameter's version counter moves on every in-place update (optimizer step, load_state_dict);
    # its data pointer moves when it is replaced (.to(), from_pretrained)
    return (dtype, str(device), tuple((p.data_ptr(), p._version) for p in model.parameters()))


@torch.no_grad()
def meta_seed(model, dtype: torch.dtype, device) -> AblateCache:
    """A batch-1 cache holding only the meta tokens' K/V and SSM state, for this model's current
    weights at ``dtype`` on ``device``; computed once and reused until the weights change."""
    backbone = getattr(model, "model", model)
    key = _weights_key(backbone, dtype, device)
    hit = _SEEDS.get(backbone)
    if hit is not None and hit[0] == key:
        return hit[1]
    seed = AblateCache(backbone.config, 1, 0, dtype, device)
    p = next(backbone.parameters())
    empty = torch.zeros(1, 0, backbone.config.hidden_size, dtype=p.dtype, device=p.device)
    backbone(inputs_embeds=empty, past_key_values=seed)
    _SEEDS[backbone] = (key, seed)
    return seed


# ---- left-padded prompts with meta tokens and SSM state -----------------------------------------
def needs_rowwise_prefill(config: AblateConfig, cache: AblateCache, token_valid: torch.Tensor) -> bool:
    """A left-padded chunk that the batched forward would get wrong: with meta tokens, padding
    between them and a row's first token would decay the SSM state and fill the conv window with
    zeros. (Without meta tokens the batched forward is exact: the state stays zero through
    padding.) Only left padding over a seeded cache is rerouted."""
    if not (config.has_ssm and config.num_meta_tokens and cache.seen_tokens >= config.num_meta_tokens):
        return False
    if bool(token_valid.all()):
        return False
    # left padding: once a row's tokens start, they do not stop
    return bool((token_valid.int().diff(dim=1) >= 0).all())


def rowwise_prefill(backbone, inputs_embeds: torch.Tensor, token_valid: torch.Tensor, cache: AblateCache) -> torch.Tensor:
    """Prefill each row alone, its padding skipped rather than fed: its tokens are stored in the slots
    they have in the batch (padded slots stay invalid), at the positions they would have alone, and
    its SSM state goes straight from the meta tokens to its first token. Returns the final hidden
    states (b, l, hidden), zeros at padding."""
    b, l, _ = inputs_embeds.shape
    start = cache.seen_tokens
    out = inputs_embeds.new_zeros(b, l, backbone.config.hidden_size)
    pads = (~token_valid).sum(dim=1).tolist()
    for row, pad in enumerate(pads):
        view = cache.rows(row, row + 1)
        for table in view.tables.values():
            table.any_invalid = True
        view._set_seen(start + pad)
        if pad < l:
            h = backbone(inputs_embeds=inputs_embeds[row : row + 1, pad:], past_key_values=view).last_hidden_state
            out[row, pad:] = h[0]
    for table in cache.tables.values():
        table.any_invalid = True
    cache.per_row = True
    cache._set_seen(start + l)
    return out
