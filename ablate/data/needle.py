"""Needle in a haystack, generated locally and deterministically (the paper's Figure 10 protocol).

A haystack of filler sentences holds one needle, "The special magic number for <city> is <7 digits>.",
at a depth fraction of the haystack (0: first thing in the document, 1: last thing before the
question); the document ends with the question, and the answer is the number. Lengths are counted in
the evaluated model's own tokens, so the same nominal length means the same context for every model
sharing a tokenizer; the data is therefore built per tokenizer at eval time.

The filler is generated from a small grammar with a seeded RNG rather than taken from a corpus: it
needs no download, is identical on every machine and Python version, and carries no numbers, so the
needle is the only thing in the document that looks like an answer.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)

CITIES = (
    "Amsterdam Athens Bangkok Berlin Bogota Cairo Chicago Delhi Dublin Hanoi Helsinki Istanbul Jakarta "
    "Kyoto Lagos Lima Lisbon London Madrid Manila Melbourne Montreal Nairobi Oslo Paris Prague Quito "
    "Riga Rome Santiago Seoul Sydney Taipei Tokyo Toronto Vienna Warsaw Zurich"
).split()

_SUBJECTS = "the old farmer|a quiet student|the river|a small bird|the committee|my neighbour|the morning train|a tired painter|the harbour|an early visitor|the library|a patient doctor".split("|")
_VERBS = "walked past|looked at|thought about|waited near|wrote about|carried|followed|painted|cleaned|described|remembered|ignored".split("|")
_OBJECTS = "the green hills|a wooden table|the long road|an open window|the autumn leaves|a broken clock|the busy market|a letter from home|the stone bridge|a field of wheat|the evening sky|an empty garden".split("|")
_TAILS = "before the rain began|while the bells were ringing|as the day grew warm|without saying a word|after a long winter|for most of the afternoon|under a grey sky|with great care|on the way to town|as everyone expected".split("|")


@dataclass(frozen=True)
class NeedleDoc:
    """One question: ``prompt`` (haystack with the needle, then the question) should be continued
    with ``answer``. ``length`` is the nominal context length, ``length_tokens`` the measured one."""

    length: int
    depth: float
    length_tokens: int
    needle_position: int  # tokens of haystack before the needle
    key: str
    answer: str
    prompt: str

    def to_dict(self) -> dict:
        return asdict(self)


def filler_sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."


def needle_sentence(key: str, value: str) -> str:
    return f"The special magic number for {key} is {value}."


def question(key: str) -> str:
    # the answer is scored as the continuation of the last sentence, so a base model needs no
    # instruction following: it must find the number and copy it
    return f"\nWhat is the special magic number for {key}? The special magic number for {key} is"


def _count(tokenize: Callable[[str], Sequence[int]], text: str) -> int:
    return len(tokenize(text))


def make_doc(tokenize: Callable[[str], Sequence[int]], length: int, depth: float, rng: random.Random) -> NeedleDoc:
    """One document whose prompt has at most ``length`` tokens (and as close to it as whole filler
    sentences allow), with the needle after ``depth`` of the haystack's tokens."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth}: must be in [0, 1]")
    key = rng.choice(CITIES)
    value = f"{rng.randrange(10**6, 10**7)}"
    needle, ask = needle_sentence(key, value), question(key)
    fixed = _count(tokenize, needle + " " + ask)
    if fixed >= length:
        raise ValueError(f"length {length}: too short for the needle and the question ({fixed} tokens)")
    # draw sentences with their token counts until the budget is spent; counts of separate pieces
    # are close to the count of the joined text, and the loop below corrects the rest exactly
    sentences: list[str] = []
    budget = length - fixed
    used = 0
    while used < budget:
        s = filler_sentence(rng)
        sentences.append(s)
        used += _count(tokenize, " " + s)
    while True:
        # the needle goes between sentences, at the boundary nearest the requested depth
        cut = round(depth * len(sentences))
        before, after = " ".join(sentences[:cut]), " ".join(sentences[cut:])
        haystack = " ".join(p for p in (before, needle, after) if p)
        prompt = haystack + ask
        n = _count(tokenize, prompt)
        if n <= length or not sentences:
            break
        sentences.pop(len(sentences) // 2 if 0 < depth < 1 else (-1 if depth == 0 else 0))
    position = _count(tokenize, before) if before else 0
    return NeedleDoc(length=length, depth=float(depth), length_tokens=n, needle_position=position, key=key, answer=f" {value}", prompt=prompt)


def make_docs(
    tokenize: Callable[[str], Sequence[int]],
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    per_cell: int = 4,
    seed: int = 0,
) -> list[NeedleDoc]:
    """``per_cell`` documents for every (length, depth), in that order. Each cell draws from its own
    random stream, so adding lengths or depths never changes the documents of the others."""
    docs = []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"ablate-needle-{seed}-{int(length)}-{float(depth)}")
            docs.extend(make_doc(tokenize, int(length), float(depth), rng) for _ in range(per_cell))
    return docs


def training_document(rng: random.Random, length_chars: int = 2000) -> str:
    """One needle document with its answer, for training data that teaches the retrieval format
    (tokenizer-free: the length is in characters, and varies from a third of ``length_chars`` to all
    of it so that the needle and the question fall anywhere in a training window)."""
    key, value = rng.choice(CITIES), f"{rng.randrange(10**6, 10**7)}"
    target = rng.randrange(length_chars // 3, length_chars + 1)
    sentences = []
    while sum(len(s) + 1 for s in sentences) < target:
        sentences.append(filler_sentence(rng))
    cut = rng.randrange(len(sentences) + 1)
    body = " ".join(sentences[:cut] + [needle_sentence(key, value)] + sentences[cut:])
    return body + question(key) + f" {value}.\n"


def training_documents(n: int, length_chars: int = 2000, seed: int = 0) -> Iterator[str]:
    """``n`` training documents (a random stream separate from the eval documents')."""
    rng = random.Random(f"ablate-needle-train-{seed}")
    for _ in range(n):
        yield training_document(rng, length_chars)
