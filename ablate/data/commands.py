"""CLI commands of ablate.data (registered on the app by ablate/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(no_args_is_help=True, help="Corpora: tokenize a source mix into memmapped shards; inspect a prepared directory.")


@data_app.command("prepare")
def prepare_cmd(
    source: str = typer.Argument(
        "python-stdlib@0.8,synthetic:mqar@0.1,synthetic:phonebook@0.1",
        help="comma-separated NAME[@WEIGHT]: python-stdlib, synthetic:mqar, synthetic:phonebook, a local file/dir/glob "
        "(.txt/.md/.jsonl/.parquet; FILE#FIELD names the text field), or a hub dataset OWNER/NAME[:CONFIG] (streamed)",
    ),
    tokenizer: str = typer.Option("bpe", "--tokenizer", "-t", help="bpe[:VOCAB] (trained here with `tokenizers`), a local tokenizer dir or tokenizer.json, or a hub name"),
    out: Path = typer.Option(..., "--out", "-o", help="the directory to create"),
    vocab_size: int = typer.Option(8192, "--vocab-size", help="BPE vocabulary size when --tokenizer is bpe without :VOCAB"),
    max_tokens: int = typer.Option(None, "--max-tokens", help="stop after this many tokens (train + val); default: until a finite source runs out"),
    val_fraction: float = typer.Option(0.01, "--val-fraction", help="share of tokens held out (whole documents) for validation"),
    seed: int = typer.Option(0, help="seed of the synthetic generators"),
    force: bool = typer.Option(False, "--force", help="rebuild an existing prepared directory"),
):
    """Tokenize a source mix once into memmapped token shards with a manifest."""
    from ablate.console import fail
    from ablate.data.prepare import prepare
    from ablate.data.sources import DataError

    try:
        prepare(source, tokenizer, out, vocab_size=vocab_size, max_tokens=max_tokens, val_fraction=val_fraction, seed=seed, force=force)
    except DataError as e:
        fail(str(e))


@data_app.command("show")
def show_cmd(data_dir: Path = typer.Argument(..., help="a prepared data directory")):
    """A prepared directory's manifest: sources, tokenizer, tokens per split."""
    from rich.table import Table

    from ablate.console import console, fail
    from ablate.data.packed import read_manifest
    from ablate.data.sources import DataError

    try:
        m = read_manifest(data_dir)
    except DataError as e:
        fail(str(e))
    t = m["tokenizer"]
    console.print(f"{data_dir}: {m['tokens']:,} tokens in {m['documents']:,} documents ({m['dtype']}), data_hash {m['data_hash']}")
    console.print(f"tokenizer {t['spec']} ({t['kind']}): {t['vocab_size']} tokens, EOS {t['eos_token']!r} = {t['eos_id']}")
    table = Table()
    for col in ("source", "weight", "documents", "tokens", "files"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for s in m["sources"]:
        table.add_row(s["spec"], f"{s['weight']:.3f}", f"{s['documents']:,}", f"{s['tokens']:,}", str(len(s.get("files", [])) or "-"))
    console.print(table)
    for split, v in m["splits"].items():
        console.print(f"{split}: {v['tokens']:,} tokens, {v['documents']:,} documents, {len(v['shards'])} shard(s)")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app. Heavy imports stay inside the commands."""
    app.add_typer(data_app, name="data")
