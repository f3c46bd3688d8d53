"""Reading prepared data: memmapped token shards cut into packed training windows.

A split's shards read as one token stream. Window ``i`` is tokens ``[i*L, i*L + L + 1)``: inputs are
its first L tokens, labels its last L (documents are packed back to back, each ending with EOS).
Which windows make step ``s``'s global batch is a pure function of (seed, step): window slots
``s*G .. s*G + G - 1`` of an endless sequence of epochs, each epoch a fresh permutation drawn from
(seed, epoch). There is no iterator state to save, so a resumed run reads exactly the batches an
uninterrupted one would, at any world size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ablate.data.prepare import MANIFEST, TOKENIZER_DIR
from ablate.data.sources import DataError


def read_manifest(data_dir: str | Path) -> dict:
    """The manifest of a prepared directory, or one line saying what is wrong with it."""
    d = Path(data_dir)
    if not d.exists():
        raise DataError(f"data dir {d}: does not exist; prepare one with `ablate data prepare SOURCE --out {d}`")
    if not d.is_dir():
        raise DataError(f"data dir {d}: is not a directory")
    path = d / MANIFEST
    if not path.exists():
        what = "is empty" if not any(d.iterdir()) else f"has no {MANIFEST} (not a prepared data dir)"
        raise DataError(f"data dir {d}: {what}; prepare it with `ablate data prepare SOURCE --out {d}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg})") from None
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["shards"]:
            f = d / shard["file"]
            if not f.exists():
                raise DataError(f"data dir {d}: shard {shard['file']} listed in {MANIFEST} is missing")
            expected = shard["tokens"] * np.dtype(manifest["dtype"]).itemsize
            if f.stat().st_size != expected:
                raise DataError(f"data dir {d}: shard {shard['file']} has {f.stat().st_size} bytes, {MANIFEST} says {expected}")
    return manifest


class TokenStream:
    """One split's shards as a single read-only token sequence (memmapped; nothing read up front)."""

    def __init__(self, data_dir: str | Path, split: str, manifest: dict | None = None):
        self.dir = Path(data_dir)
        manifest = manifest or read_manifest(self.dir)
        dtype = np.dtype(manifest["dtype"])
        shards = [s for s in manifest["splits"][split]["shards"] if s["tokens"]]
        self.arrays = [np.memmap(self.dir / s["file"], dtype=dtype, mode="r", shape=(s["tokens"],)) for s in shards]
        self.starts = np.cumsum([0] + [a.shape[0] for a in self.arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64, across shard boundaries."""
        parts = []
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            a, base = self.arrays[k], int(self.starts[k])
            take = min(stop, base + a.shape[0]) - start
            parts.append(a[start - base : start - base + take])
            start += take
            k += 1
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (b, L)
    labels: torch.Tensor  # (b, L)
    seq_idx: torch.Tensor | None  # (b, L) document index within each row, when document masking


def document_index(input_ids: np.ndarray, eos: int) -> np.ndarray:
    """Per token, the index of its document within the row: the count of EOS tokens strictly before
    it (a document's EOS belongs to that document)."""
    is_eos = (input_ids == eos).astype(np.int64)
    return np.cumsum(is_eos, axis=-1) - is_eos


class PackedWindows:
    """Fixed-length windows of a token stream, and the deterministic batch of any step."""

    def __init__(self, stream: TokenStream, seq_len: int, eos: int, seed: int = 0, document_masking: bool = False):
        self.stream, self.seq_len, self.eos, self.seed, self.document_masking = stream, seq_len, eos, seed, document_masking
        self.num_windows = (len(stream) - 1) // seq_len
        if self.num_windows < 1:
            raise DataError(f"data dir {stream.dir}: {len(stream)} tokens are fewer than one sequence of {seq_len + 1}; prepare more data or lower seq_len")
        self._perm: tuple[int, np.ndarray] | None = None

    def window(self, i: int) -> np.ndarray:
        return self.stream.read(i * self.seq_len, i * self.seq_len + self.seq_len + 1)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_windows))
        return self._perm[1]

    def slot_windows(self, slots: np.ndarray) -> np.ndarray:
        """Window ids of global sample slots (slot // num_windows is the epoch)."""
        out = np.empty(len(slots), dtype=np.int64)
        for j, slot in enumerate(slots):
            epoch, k = divmod(int(slot), self.num_windows)
            out[j] = self._permutation(epoch)[k]
        return out

    def batch(self, window_ids) -> Batch:
        rows = np.stack([self.window(int(i)) for i in window_ids])
        x, y = rows[:, :-1], rows[:, 1:]
        seq = torch.from_numpy(document_index(x, self.eos)) if self.document_masking else None
        return Batch(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)), seq)

    def train_micro_batch(self, step: int, global_batch: int, micro: int, micro_batch: int, rank: int, world: int) -> Batch:
        """The ``micro``-th micro batch of ``rank`` at ``step`` (0-based optimizer step). The global
        batch is split as [micro 0: rank 0, rank 1, ...][micro 1: ...], so the union over ranks and
        micro steps is the same set of windows at every world size."""
        first = step * global_batch + (micro * world + rank) * micro_batch
        return self.batch(self.slot_windows(np.arange(first, first + micro_batch)))


def tokenizer_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / TOKENIZER_DIR
