"""``ablate data prepare``: tokenize a source mix once into memmapped token shards with a manifest.

Layout of a prepared data directory::

    DIR/
      manifest.json      sources (with the files read and their sha256), tokenizer, token and document
                         counts per split and per source, each shard's sha256, data_hash
      tokenizer/         the tokenizer (save_pretrained), copied into every run's model/
      train-00000.bin    uint16 (vocab <= 65535) or uint32 token ids; every document ends with EOS
      val-00000.bin      the held-out documents (whole documents of the mix, val_fraction of the tokens)

The directory is built under a temporary name and renamed when complete, so a crash never leaves a
directory that looks prepared; ``ensure_prepared`` caches directories by what they were made from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

from ablate.data.sources import DEFAULT_SOURCES, DataError, Source, documents, mix, parse_sources
from ablate.data.tokenizer import encode, load_tokenizer, parse_tokenizer_spec, train_bpe
from ablate.rundir import fsync_path

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
SHARD_TOKENS = 1 << 27  # 128M tokens: 256 MB of uint16 per shard


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        from ablate.console import console

        console.print(msg, highlight=False)


def prepare(
    source: str = DEFAULT_SOURCES,
    tokenizer: str = "bpe",
    out: str | os.PathLike = "data/default",
    *,
    vocab_size: int = 8192,
    max_tokens: int | None = None,
    val_fraction: float = 0.01,
    max_val_tokens: int = 1_000_000,
    seed: int = 0,
    tokenizer_sample_chars: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    force: bool = False,
    quiet: bool = False,
) -> dict:
    """Prepare ``out`` and return its manifest. ``vocab_size`` is the BPE's size when ``tokenizer`` is
    ``bpe`` without one. ``max_tokens`` caps the total (train + val); without it the mix runs until
    its first finite source is exhausted (a mix with only infinite sources needs a cap)."""
    from ablate.rundir import config_hash, provenance, write_json_atomic

    out = Path(out)
    sources = parse_sources(source)
    if max_tokens is None and all(s.kind == "synthetic" for s in sources):
        raise DataError("max_tokens: a mix of synthetic sources only never runs out; pass --max-tokens")
    if (out / MANIFEST).exists() and not force:
        raise DataError(f"{out}: already prepared (manifest.json exists); pass --force to rebuild it")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists() and not force:
        raise DataError(f"{out}: exists and is not a prepared data directory; choose an empty --out")
    if not 0 <= val_fraction < 0.5:
        raise DataError(f"val_fraction: must be in [0, 0.5), got {val_fraction}")
    tok_kind, bpe_vocab = parse_tokenizer_spec(tokenizer, vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    t0 = time.time()
    progress = None
    try:
        # 1. the tokenizer: trained on a sample of the same mix (by characters), or loaded
        if tok_kind == "bpe":
            if tokenizer_sample_chars is None:  # enough text for the merges, without reading a whole large corpus
                tokenizer_sample_chars = min(20_000_000, 8 * max_tokens) if max_tokens else 20_000_000
            _log(f"training a byte-level BPE (vocab {bpe_vocab}) on up to {tokenizer_sample_chars / 1e6:g}M characters of {source}", quiet)
            tok = train_bpe(_sample_texts(sources, seed, tokenizer_sample_chars), bpe_vocab)
        else:
            tok = load_tokenizer(tokenizer)
        tok.save_pretrained(str(tmp / TOKENIZER_DIR))
        n_vocab = len(tok)
        eos = int(tok.eos_token_id)
        dtype = np.uint16 if n_vocab <= np.iinfo(np.uint16).max + 1 else np.uint32

        # 2. tokenize the mix (by tokens), holding out whole documents for validation whenever the
        # validation split is below its share of the tokens so far
        writers = {split: _ShardWriter(tmp, split, dtype, shard_tokens) for split in ("train", "val")}
        per_source = [{"documents": 0, "tokens": 0, "used_files": []} for _ in sources]
        streams = [_encoded(s, tok, eos, seed) for s in sources]
        total = 0
        _log(f"tokenizing {source} with {tokenizer} ({n_vocab} tokens, EOS {tok.eos_token!r})", quiet)
        progress = _progress(quiet, max_tokens)
        for doc_index, (i, (ids, origin)) in enumerate(mix(streams, [s.weight for s in sources], lambda item: len(item[0]))):
            if progress is not None and doc_index % 64 == 0:
                progress[0].update(progress[1], completed=total)
            # a document goes to validation while that split is under its share, if it does not
            # overshoot it by half (one long file would otherwise make a small corpus's val split)
            held = writers["val"].tokens
            to_val = doc_index > 0 and held < min(val_fraction * total, max_val_tokens) and held + len(ids) <= 1.5 * min(val_fraction * (total + len(ids)), max_val_tokens)
            writers["val" if to_val else "train"].add(ids)
            per_source[i]["documents"] += 1
            per_source[i]["tokens"] += len(ids)
            if origin is not None:
                per_source[i]["used_files"].append(origin)
            total += len(ids)
            if max_tokens is not None and total >= max_tokens:
                break
        if progress is not None:
            progress[0].stop()
        for w in writers.values():
            w.close()
        if writers["train"].tokens == 0:
            raise DataError(f"source {source!r}: produced no tokens (no non-empty documents)")
        if writers["val"].documents == 0 and val_fraction > 0:
            raise DataError(f"source {source!r}: too few documents ({per_source and sum(p['documents'] for p in per_source)}) for a validation split; add data or pass --val-fraction 0")

        # 3. the manifest
        tokenizer_json = tmp / TOKENIZER_DIR / "tokenizer.json"
        splits = {name: w.summary() for name, w in writers.items()}
        manifest = {
            "format": FORMAT_VERSION,
            "source": source,
            "sources": [dict(s.describe(), **_source_record(s, rec)) for s, rec in zip(sources, per_source)],
            "tokenizer": {
                "spec": tokenizer,
                "kind": tok_kind,
                "vocab_size": n_vocab,
                "eos_token": tok.eos_token,
                "eos_id": eos,
                "sha256": _sha256(tokenizer_json) if tokenizer_json.exists() else None,
            },
            "dtype": np.dtype(dtype).name,
            "seed": seed,
            "max_tokens": max_tokens,
            "val_fraction": val_fraction,
            "splits": splits,
            "tokens": sum(s["tokens"] for s in splits.values()),
            "documents": sum(s["documents"] for s in splits.values()),
            "seconds": round(time.time() - t0, 2),
            "provenance": provenance(),
        }
        manifest["data_hash"] = config_hash(
            {"tokenizer": manifest["tokenizer"]["sha256"], "shards": {k: [sh["sha256"] for sh in v["shards"]] for k, v in splits.items()}}
        )
        write_json_atomic(tmp / MANIFEST, manifest)
        fsync_path(tmp)
        if force and out.exists():
            shutil.rmtree(out)
        elif out.exists():
            out.rmdir()  # empty: checked above
        os.replace(tmp, out)
        fsync_path(out.parent)
    except BaseException:
        if progress is not None:
            progress[0].stop()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(
        f"prepared {out}: {manifest['splits']['train']['tokens']:,} train + {manifest['splits']['val']['tokens']:,} val tokens, "
        f"{manifest['documents']:,} documents, in {manifest['seconds']:.1f}s",
        quiet,
    )
    return manifest


def _progress(quiet: bool, total: int | None):
    """A rich progress bar of tokens written (on a terminal only)."""
    from ablate.console import console

    if quiet or not console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn("tokenizing"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"), TimeElapsedColumn(), console=console, transient=True)
    task = p.add_task("tokenize", total=total)
    p.start()
    return p, task


def _sample_texts(sources: list[Source], seed: int, max_chars: int) -> Iterator[str]:
    streams = [documents(s, seed) for s in sources]
    seen = 0
    for _, (text, _origin) in mix(streams, [s.weight for s in sources], lambda item: len(item[0])):
        yield text
        seen += len(text)
        if seen >= max_chars:
            return


def _encoded(source: Source, tok, eos: int, seed: int, batch_chars: int = 1 << 20, batch_docs: int = 256) -> Iterator[tuple[np.ndarray, object]]:
    """(token ids + EOS, origin) per document, encoded in batches (the fast tokenizer's batch call runs
    in parallel threads)."""
    docs = documents(source, seed)
    pending: deque = deque()
    while True:
        if not pending:
            texts, origins, chars = [], [], 0
            for text, origin in docs:
                texts.append(text)
                origins.append(origin)
                chars += len(text)
                if chars >= batch_chars or len(texts) >= batch_docs:
                    break
            if not texts:
                return
            for ids, origin in zip(encode(tok, texts), origins):
                pending.append((np.append(np.asarray(ids, dtype=np.int64), eos), origin))
        yield pending.popleft()


def _source_record(source: Source, rec: dict) -> dict:
    out = {"documents": rec["documents"], "tokens": rec["tokens"]}
    if source.kind == "python-stdlib":
        root = Path(source.target)
        out["root"] = str(root)
        out["files"] = [_file_record(Path(f), root) for f in rec["used_files"]]
    elif source.kind == "local":
        out["files"] = [_file_record(f, None) for f in source.files]
    return out


def _file_record(path: Path, root: Path | None) -> dict:
    return {"path": path.relative_to(root).as_posix() if root else str(path), "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ShardWriter:
    """Appends documents to ``{split}-NNNNN.bin`` files of at most ``shard_tokens`` tokens, hashing as
    it writes (a document may continue into the next shard)."""

    def __init__(self, directory: Path, split: str, dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.tokens = 0
        self.documents = 0
        self._f = None

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._f = open(self.directory / name, "wb")
        self._hash = hashlib.sha256()
        self.shards.append({"file": name, "tokens": 0, "sha256": None})

    def add(self, ids: np.ndarray) -> None:
        arr = ids.astype(self.dtype)
        self.documents += 1
        while arr.size:
            if self._f is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._finish()
                self._open()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, arr = arr[:room], arr[room:]
            data = part.tobytes()
            self._f.write(data)
            self._hash.update(data)
            self.shards[-1]["tokens"] += part.size
            self.tokens += part.size

    def _finish(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self.shards[-1]["sha256"] = self._hash.hexdigest()
            self._f = None

    def close(self) -> None:
        self._finish()

    def summary(self) -> dict:
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}


# ---- the cache of prepared directories -----------------------------------------------------------
def cache_root() -> Path:
    env = os.environ.get("ABLATE_DATA_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ablate" / "data"


def ensure_prepared(source: str = DEFAULT_SOURCES, tokenizer: str = "bpe", *, vocab_size: int, max_tokens: int | None, quiet: bool = False, **kwargs) -> Path:
    """A prepared directory for (source, tokenizer, size), built once and then reused from the cache.
    Concurrent callers may both build it; the first rename wins and the other is discarded."""
    from ablate.data.synthetic import text_identity
    from ablate.rundir import config_hash

    key = config_hash({"source": source, "tokenizer": tokenizer, "vocab": vocab_size, "max_tokens": max_tokens, "format": FORMAT_VERSION, **kwargs,
                       **text_identity(source)})
    slug = "".join(c if c.isalnum() else "-" for c in f"{source.split(',')[0].split('@')[0]}-{tokenizer}")[:40]
    out = cache_root() / f"{slug}-{key}"
    if (out / MANIFEST).exists():
        return out
    try:
        prepare(source, tokenizer, out, vocab_size=vocab_size, max_tokens=max_tokens, quiet=quiet, **kwargs)
    except (OSError, DataError):
        if (out / MANIFEST).exists():  # another process finished first (its rename won)
            return out
        raise
    return out
