"""Corpus sources: where documents come from, and how several are mixed by weight.

A source spec is a comma-separated list of ``NAME[@WEIGHT]`` items (weights are shares of tokens,
normalised; a missing weight counts as 1)::

    python-stdlib@0.8,synthetic:mqar@0.1,synthetic:phonebook@0.1        the offline default
    HuggingFaceTB/smollm-corpus:fineweb-edu-dedup@0.7,HuggingFaceTB/smollm-corpus:cosmopedia-v2@0.3
    ./corpus/ ,  notes.txt ,  data.jsonl#content ,  shards/*.parquet

- ``python-stdlib``: the ``.py`` files of the running interpreter's standard library, one document per
  file, in a fixed pseudo-random order (sha1 of the relative path), so every machine with the same
  Python reads the same documents in the same order. Real code, as SmolLM-Corpus's python-edu part.
- ``synthetic:phonebook`` / ``synthetic:mqar``: recall documents from ``ablate.data.synthetic``;
  ``synthetic:needle``: needle-in-a-haystack documents with their answers (``ablate.data.needle``).
- a local file, directory or glob: ``.txt``/``.md`` files (one document per file), ``.jsonl``/``.json``
  and ``.parquet`` (one document per record, text in the ``text`` field or ``#FIELD``), read with HF
  ``datasets`` in streaming mode.
- ``OWNER/NAME[:CONFIG][#FIELD]``: a hub dataset, streamed with ``datasets.load_dataset`` (only when
  asked; offline and not cached it fails with one line saying what to do).
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

DEFAULT_SOURCES = "python-stdlib@0.8,synthetic:mqar@0.1,synthetic:phonebook@0.1"
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
LOCAL_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES


class DataError(ValueError):
    """Bad data input; the message is one line naming the source, file or field."""


@dataclass
class Source:
    spec: str  # the item as written (without the weight)
    kind: str  # python-stdlib | synthetic | local | hub
    weight: float
    target: str = ""  # synthetic task, local path/glob, or hub dataset name
    config: str | None = None  # hub config name
    text_field: str = "text"
    files: list[Path] = field(default_factory=list)  # local / stdlib: the files read, in order

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "weight": self.weight, "target": self.target, "config": self.config, "text_field": self.text_field}


def parse_sources(spec: str) -> list[Source]:
    """Parse a source spec; weights are normalised to sum to 1."""
    items = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if not items:
        raise DataError("source: empty source spec; e.g. " + DEFAULT_SOURCES)
    sources = []
    for item in items:
        name, weight = item, 1.0
        if "@" in item:
            name, _, w = item.rpartition("@")
            try:
                weight = float(w)
            except ValueError:
                raise DataError(f"source {item!r}: weight {w!r} is not a number") from None
            if not weight > 0:
                raise DataError(f"source {item!r}: weight must be positive")
        sources.append(_parse_one(name, weight))
    total = sum(s.weight for s in sources)
    for s in sources:
        s.weight = s.weight / total
    return sources


def _parse_one(name: str, weight: float) -> Source:
    if name == "python-stdlib":
        return Source(name, "python-stdlib", weight, target=stdlib_root())
    if name.startswith("synthetic:"):
        from ablate.data.synthetic import TRAINING_TASKS

        task = name.split(":", 1)[1]
        if task not in TRAINING_TASKS:
            raise DataError(f"source {name!r}: unknown synthetic task {task!r}; one of {', '.join(TRAINING_TASKS)}")
        return Source(name, "synthetic", weight, target=task)
    path, _, text_field = name.partition("#")
    text_field = text_field or "text"
    looks_local = path.startswith(("/", "./", "../", "~")) or Path(path).exists() or any(c in path for c in "*?[")
    if looks_local:
        files = local_files(path)
        return Source(name, "local", weight, target=str(Path(path).expanduser()), text_field=text_field, files=files)
    if path.count("/") == 1 and all(path.split(":")[0].split("/")):
        repo, _, config = path.partition(":")
        return Source(name, "hub", weight, target=repo, config=config or None, text_field=text_field)
    raise DataError(f"source {name!r}: no such file or directory, and not a hub dataset name (OWNER/NAME[:CONFIG])")


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files (no site-packages), in a fixed pseudo-random order: sha1 of
    the relative path, so any prefix of the list is a spread-out sample, the same on every machine
    with the same Python."""
    root = Path(stdlib_root())
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(files, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest())


def local_files(path: str) -> list[Path]:
    """The files a local source names: a file, every supported file under a directory (sorted), or a
    glob. One clear error when there is nothing to read."""
    p = Path(path).expanduser()
    if any(c in path for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"source {path!r}: the pattern matches no files")
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in LOCAL_SUFFIXES and not f.name.startswith("."))
        if not files:
            raise DataError(f"source {path!r}: directory has no {'/'.join(LOCAL_SUFFIXES)} files")
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"source {path!r}: no such file or directory")
    bad = [f for f in files if f.suffix.lower() not in LOCAL_SUFFIXES]
    if bad:
        raise DataError(f"source {path!r}: {bad[0]} is not a supported file ({', '.join(LOCAL_SUFFIXES)})")
    return files


# ---- document iterators ------------------------------------------------------------------------
def documents(source: Source, seed: int = 0) -> Iterator[tuple[str, Path | None]]:
    """(text, origin file or None) of one source's documents, in a deterministic order. Empty
    documents are skipped."""
    if source.kind == "python-stdlib":
        # one document per file, read directly: the file list is ours, and the manifest records which
        # files were used (the datasets text builder would not tell which file a document came from)
        source.files = stdlib_files()
        for path in source.files:
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text, path
    elif source.kind == "synthetic":
        from ablate.data.synthetic import training_documents

        for text in training_documents(source.target, 10**15, seed=seed):
            yield text, None
    elif source.kind == "local":
        for text in _local_documents(source):
            yield text, None
    elif source.kind == "hub":
        for text in _hub_documents(source):
            yield text, None
    else:  # pragma: no cover - parse_sources only makes the kinds above
        raise DataError(f"source {source.spec!r}: unknown kind {source.kind}")


def _local_documents(source: Source) -> Iterator[str]:
    import datasets

    # group consecutive files by reader so the documents keep the files' order
    for suffix_group, group in itertools.groupby(source.files, key=lambda f: _reader(f)):
        files = [str(f) for f in group]
        if suffix_group == "text":
            ds = datasets.load_dataset("text", data_files=files, sample_by="document", split="train", streaming=True, encoding_errors="replace")
            field_name = "text"
        else:
            ds = datasets.load_dataset(suffix_group, data_files=files, split="train", streaming=True)
            field_name = source.text_field
        yield from _texts(ds, field_name, source.spec)


def _reader(path: Path) -> str:
    s = path.suffix.lower()
    return "text" if s in TEXT_SUFFIXES else "json" if s in JSON_SUFFIXES else "parquet"


def _hub_documents(source: Source) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(source.target, source.config, split="train", streaming=True)
    except Exception as e:  # offline, unknown name, missing config: one line that says what to do
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "offline" in msg.lower() or "connect" in msg.lower() or "OfflineMode" in msg:
            raise DataError(
                f"source {source.spec!r}: hub dataset not reachable ({msg}); run online once, or unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE, "
                f"or use the offline default '{DEFAULT_SOURCES}'"
            ) from None
        raise DataError(f"source {source.spec!r}: cannot open hub dataset: {msg}") from None
    yield from _texts(ds, source.text_field, source.spec)


def _texts(ds, field_name: str, spec: str) -> Iterator[str]:
    for i, record in enumerate(ds):
        if field_name not in record:
            raise DataError(f"source {spec!r}: records have no {field_name!r} field (fields: {', '.join(record)}); name the field as SOURCE#FIELD")
        text = record[field_name]
        if isinstance(text, str) and text.strip():
            yield text


# ---- mixing -------------------------------------------------------------------------------------
def mix(streams: list[Iterator], weights: list[float], size) -> Iterator[tuple[int, object]]:
    """Interleave streams so that each one's share of ``size(item)`` follows its weight: the next item
    comes from the stream furthest below its share (ties: the first). Stops when any stream runs out,
    so the shares stay as asked. Yields (stream index, item); deterministic, holds one item per stream.
    """
    used = [0.0] * len(streams)
    while True:
        i = min(range(len(streams)), key=lambda j: (used[j] / weights[j], j))
        try:
            item = next(streams[i])
        except StopIteration:
            return
        used[i] += max(1, size(item))
        yield i, item
