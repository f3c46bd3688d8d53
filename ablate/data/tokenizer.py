"""Tokenizers: a byte-level BPE trained offline with ``tokenizers``, or any tokenizer that
``transformers.AutoTokenizer`` loads (a local directory, a ``tokenizer.json``, or a hub name).

Whatever the spec, the result is a ``PreTrainedTokenizerFast``-style tokenizer with an EOS token (the
document separator in packed sequences), saved with the prepared data and copied into each run's
``model/`` so ``AutoTokenizer.from_pretrained(RUN_DIR/model)`` works offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ablate.data.sources import DataError

EOS = "<|endoftext|>"
UNK = "<unk>"


def parse_tokenizer_spec(spec: str, default_vocab: int) -> tuple[str, int | None]:
    """``bpe`` / ``bpe:N`` -> ("bpe", N); anything else -> (spec, None)."""
    if spec == "bpe" or spec.startswith("bpe:"):
        vocab = default_vocab
        if ":" in spec:
            try:
                vocab = int(spec.split(":", 1)[1])
            except ValueError:
                raise DataError(f"tokenizer {spec!r}: vocab size must be an integer, e.g. bpe:8192") from None
        if vocab < 64:
            raise DataError(f"tokenizer {spec!r}: vocab size {vocab} is too small for a BPE (at least 64)")
        return "bpe", vocab
    return spec, None


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style pre-tokenization) with ``<|endoftext|>`` as EOS and padding.

    With room for it (vocab >= 512) the alphabet is all 256 bytes, so any text encodes losslessly.
    Smaller vocabularies (the ``tiny`` scale has 256) cannot hold every byte plus merges: they keep the
    bytes seen in training and map others to ``<unk>``.

    Training is not bitwise reproducible across processes: ``tokenizers`` breaks ties between equally
    frequent merges in hash-map order (huggingface/tokenizers#1794). The trained tokenizer is therefore
    saved with the prepared data, whose ``data_hash`` covers it: a run is tied to one prepared
    directory, never to a re-training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    full_bytes = vocab_size >= 512
    specials = [EOS] if full_bytes else [EOS, UNK]
    tok = Tokenizer(models.BPE(unk_token=None if full_bytes else UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if full_bytes:
        alphabet = {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()}
    else:  # small vocabularies: leave at least a quarter of the ids to merges
        alphabet = {"limit_alphabet": vocab_size - len(specials) - vocab_size // 4}
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2, show_progress=False, **alphabet)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token=None if full_bytes else UNK, model_max_length=10**9
    )


def load_tokenizer(spec: str | Path):
    """A tokenizer from a local directory, a ``tokenizer.json`` file, or a hub name (hub only when the
    spec names one; offline and not cached, one line says what to do)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".json":
            raise DataError(f"tokenizer {spec!r}: a tokenizer file must be a tokenizers JSON file (tokenizer.json)")
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    elif path.is_dir():
        try:
            tok = AutoTokenizer.from_pretrained(str(path))
        except Exception as e:
            raise DataError(f"tokenizer {spec!r}: cannot load the directory ({_first_line(e)})") from None
    elif spec.startswith(("/", "./", "../", "~")):
        raise DataError(f"tokenizer {spec!r}: no such file or directory")
    else:
        try:
            tok = AutoTokenizer.from_pretrained(spec)
        except Exception as e:
            msg = _first_line(e)
            raise DataError(
                f"tokenizer {spec!r}: not loadable ({msg}); if it is a hub name, download it once online "
                f"(`hf download {spec}`) or pass a local directory, or use the offline default `bpe`"
            ) from None
    if tok.eos_token_id is None:
        # a document separator is needed: a bare tokenizer.json does not say which token ends a
        # document, so look for the usual names, then fall back to SEP or BOS
        vocab = tok.get_vocab()
        known = next((t for t in (EOS, "</s>", "<|end_of_text|>", "<eos>", "[SEP]") if t in vocab), None)
        known = known or next((getattr(tok, n) for n in ("sep_token", "bos_token") if getattr(tok, n, None) is not None), None)
        if known is None:
            raise DataError(f"tokenizer {spec!r}: has no EOS (or SEP/BOS) token to separate documents")
        tok.eos_token = known
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.model_max_length = 10**9  # we pack sequences ourselves; silence length warnings
    return tok


def encode(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (documents are separated by EOS afterwards)."""
    return tok(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
