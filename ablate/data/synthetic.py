"""Synthetic recall data, generated locally and deterministically.

Two task families probe what Table 1 calls recall (retrieving something seen earlier in the context),
at sizes a small model can learn:

- ``phonebook``: a list of "- Name Surname 321-0123" entries, then the number of one listed person.
- ``mqar`` (multi-query associative recall, Zoology): key-value pairs, then several keys whose values
  must be recalled.

Training uses whole documents (context plus every query answered, see ``training_documents``); evals
use one query per example with the answer and distractors drawn from the same context, so a model
that does not recall scores at chance (1 / number of choices). Train and eval draw from separate
random streams, so eval contexts are never training documents.

Both are written so that recall is plain induction, the simplest in-context copy there is: the
query ends with the key's last token, which occurs once in the context, directly followed there by
the value (``Ada Zhang 258-4197`` / ``river 664``). Names, keys and values follow a space wherever
they appear, so a byte-level BPE gives them the same tokens in both places. (The first formats,
text version 1, asked for more: a name at the start of a line tokenizes apart from the same name
after a space, a value glued to "=" apart from the same value after "is", keys of two letters and a
digit shared their last token, every number started "555-". A model had to learn those equivalences
before it could recall anything.)
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Iterator

FIRST_NAMES = (
    "Ada Alan Alice Amir Anna Ben Bruno Carla Chen Clara Dana David Elena Emil Eva Farid Felix Grace Hana "
    "Hugo Ines Ivan Jana Jonas Kai Karin Lena Leo Lina Luca Maya Mia Nadia Nico Nora Omar Oscar Paula Pedro "
    "Rosa Ruben Sara Sofia Tara Theo Uma Vera Victor Yara Yusuf Zoe"
).split()
LAST_NAMES = (
    "Abbott Baker Berg Costa Cruz Diaz Eklund Fischer Garcia Gupta Hansen Ito Jensen Kaur Keller Kim Lang "
    "Lopez Meyer Moreau Nagy Novak Olsen Park Patel Quinn Rossi Sato Schmidt Silva Tanaka Torres Ueda Vogel "
    "Wagner Weber Wong Young Zhang Ziegler"
).split()
# one word per key, distinct within a context: the key's last token identifies its pair
MQAR_KEYS = (
    "apple arrow basket bell bottle bridge button candle castle cloud coin crown desk door dragon drum "
    "eagle engine feather flag flower forest garden glass hammer harbor helmet island jacket kettle key "
    "ladder lamp lemon letter lion mirror monkey mountain needle ocean orange palace pencil piano pillow "
    "planet pocket rabbit ribbon river rocket saddle shadow silver spoon tiger tower train violin wagon whale"
).split()

# the version of the documents' text: bump it whenever a generator writes different text, so that
# corpora prepared from the old text and runs trained on them are rebuilt rather than reused
TEXT_VERSION = 2  # 1: the first formats (see the module docstring)

TASKS = ("phonebook", "mqar")
# training-only: the needle format of ablate.data.needle (its evaluation is the niah suite, whose
# documents are sized in the evaluated model's tokens)
TRAINING_TASKS = TASKS + ("needle",)


@dataclass(frozen=True)
class RecallExample:
    """One evaluation question: the model reads ``context + query`` and should continue with
    ``answer``; ``choices`` holds the answer (at ``gold``) and distractors from the same context."""

    task: str
    context: str
    query: str
    answer: str
    choices: tuple[str, ...]
    gold: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["choices"] = list(self.choices)
        return d


def _rng(task: str, split: str, seed: int) -> random.Random:
    # a string seed hashes deterministically (sha512), independent of PYTHONHASHSEED
    return random.Random(f"ablate-{task}-{split}-{seed}")


# ---- phonebook --------------------------------------------------------------------------------
def _phonebook_entries(rng: random.Random, entries: int) -> list[tuple[str, str]]:
    if entries > len(LAST_NAMES):
        raise ValueError(f"entries {entries}: at most {len(LAST_NAMES)} (every surname once per book)")
    people = [f"{first} {last}" for first, last in zip(rng.sample(FIRST_NAMES, entries), rng.sample(LAST_NAMES, entries))]
    numbers: set[str] = set()
    while len(numbers) < entries:
        numbers.add(f"{rng.randrange(200, 1000)}-{rng.randrange(10000):04d}")
    return list(zip(people, sorted(numbers, key=lambda _: rng.random())))


def _phonebook_context(book: list[tuple[str, str]]) -> str:
    return "Phone book:\n" + "".join(f"- {name} {number}\n" for name, number in book)


def _phonebook_query(name: str) -> str:
    return f"Number of {name}"


def phonebook_document(rng: random.Random, entries: int = 8, queries: int = 4) -> str:
    book = _phonebook_entries(rng, entries)
    asked = rng.sample(book, min(queries, entries))
    return _phonebook_context(book) + "".join(f"{_phonebook_query(n)} {num}.\n" for n, num in asked)


def phonebook_example(rng: random.Random, entries: int = 8, num_choices: int = 4) -> RecallExample:
    book = _phonebook_entries(rng, entries)
    name, number = rng.choice(book)
    others = rng.sample([num for _, num in book if num != number], min(num_choices - 1, entries - 1))
    return _example("phonebook", _phonebook_context(book), _phonebook_query(name), f" {number}", [f" {o}" for o in others], rng)


# ---- MQAR -------------------------------------------------------------------------------------
def _mqar_pairs(rng: random.Random, pairs: int) -> list[tuple[str, str]]:
    if pairs > len(MQAR_KEYS):
        raise ValueError(f"pairs {pairs}: at most {len(MQAR_KEYS)} (every key word once per context)")
    keys = rng.sample(MQAR_KEYS, pairs)
    values: set[str] = set()
    while len(values) < pairs:
        values.add(str(rng.randrange(100, 1000)))
    return list(zip(keys, sorted(values, key=lambda _: rng.random())))


def _mqar_context(kv: list[tuple[str, str]], rng: random.Random) -> str:
    shown = kv[:]
    rng.shuffle(shown)
    return "Pairs: " + ", ".join(f"{k} {v}" for k, v in shown) + ".\n"


def _mqar_query(key: str) -> str:
    return f"Value of {key}"


def mqar_document(rng: random.Random, pairs: int = 8, queries: int = 4) -> str:
    kv = _mqar_pairs(rng, pairs)
    context = _mqar_context(kv, rng)
    asked = rng.sample(kv, min(queries, pairs))
    return context + "".join(f"{_mqar_query(k)} {v}.\n" for k, v in asked)


def mqar_example(rng: random.Random, pairs: int = 8, num_choices: int = 4) -> RecallExample:
    kv = _mqar_pairs(rng, pairs)
    context = _mqar_context(kv, rng)
    key, value = rng.choice(kv)
    others = rng.sample([v for _, v in kv if v != value], min(num_choices - 1, pairs - 1))
    return _example("mqar", context, _mqar_query(key), f" {value}", [f" {o}" for o in others], rng)


def _example(task, context, query, answer, distractors, rng) -> RecallExample:
    choices = distractors + [answer]
    rng.shuffle(choices)
    return RecallExample(task, context, query, answer, tuple(choices), choices.index(answer))


# ---- public entry points ----------------------------------------------------------------------
_DOCUMENTS = {"phonebook": phonebook_document, "mqar": mqar_document}
_EXAMPLES = {"phonebook": phonebook_example, "mqar": mqar_example}


def text_identity(sources: str) -> dict:
    """What a corpus of a source spec (``ablate.data.sources``) owes to the synthetic generators'
    text, for the keys that identify it: ``{"synthetic_text": TEXT_VERSION}`` when it draws
    synthetic documents, else nothing (a text-only corpus keeps its key)."""
    return {"synthetic_text": TEXT_VERSION} if "synthetic:" in sources else {}


def _check(task: str, known: tuple[str, ...] = TASKS) -> None:
    if task not in known:
        raise ValueError(f"unknown synthetic task {task!r}; one of {', '.join(known)}")


def training_documents(task: str, n: int, seed: int = 0, **size) -> Iterator[str]:
    """``n`` training documents of a task (each a context with all its queries answered)."""
    _check(task, TRAINING_TASKS)
    rng = _rng(task, "train", seed)
    make = _DOCUMENTS.get(task) or _needle_document
    for _ in range(n):
        yield make(rng, **size)


def _needle_document(rng: random.Random, **size) -> str:
    from ablate.data.needle import training_document

    return training_document(rng, **size)


def eval_examples(task: str, n: int, seed: int = 0, **size) -> list[RecallExample]:
    """``n`` evaluation questions of a task, from a stream disjoint from the training documents."""
    _check(task)
    rng = _rng(task, "eval", seed)
    return [_EXAMPLES[task](rng, **size) for _ in range(n)]
