"""Synthetic recall data, generated locally and deterministically.

Two task families probe what Table 1 calls recall (retrieving something seen earlier in the context),
at sizes a small model can learn:

- ``phonebook``: a list of "Name Surname: 555-0123" entries, then the number of one listed person.
- ``mqar`` (multi-query associative recall, Zoology): key-value pairs, then several keys whose values
  must be recalled.

Training uses whole documents (context plus every query answered, see ``training_documents``); evals
use one query per example with the answer and distractors drawn from the same context, so a model
that does not recall scores at chance (1 / number of choices). Train and eval draw from separate
random streams, so eval contexts are never training documents.
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
MQAR_SYMBOLS = "abcdefghijklmnopqrstuvwxyz"

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
    people: set[str] = set()
    while len(people) < entries:
        people.add(f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}")
    numbers: set[str] = set()
    while len(numbers) < entries:
        numbers.add(f"555-{rng.randrange(10000):04d}")
    return list(zip(sorted(people, key=lambda _: rng.random()), sorted(numbers)))


def _phonebook_context(book: list[tuple[str, str]]) -> str:
    return "Phone book:\n" + "".join(f"{name}: {number}\n" for name, number in book)


def _phonebook_query(name: str) -> str:
    return f"The number of {name} is"


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
    keys: set[str] = set()
    while len(keys) < pairs:
        keys.add("".join(rng.choice(MQAR_SYMBOLS) for _ in range(2)) + str(rng.randrange(10)))
    values: set[str] = set()
    while len(values) < pairs:
        values.add(str(rng.randrange(100, 1000)))
    return list(zip(sorted(keys), sorted(values, key=lambda _: rng.random())))


def _mqar_context(kv: list[tuple[str, str]], rng: random.Random) -> str:
    shown = kv[:]
    rng.shuffle(shown)
    return "Pairs: " + ", ".join(f"{k}={v}" for k, v in shown) + ".\n"


def mqar_document(rng: random.Random, pairs: int = 8, queries: int = 4) -> str:
    kv = _mqar_pairs(rng, pairs)
    context = _mqar_context(kv, rng)
    asked = rng.sample(kv, min(queries, pairs))
    return context + "".join(f"{k} is {v}.\n" for k, v in asked)


def mqar_example(rng: random.Random, pairs: int = 8, num_choices: int = 4) -> RecallExample:
    kv = _mqar_pairs(rng, pairs)
    context = _mqar_context(kv, rng)
    key, value = rng.choice(kv)
    others = rng.sample([v for _, v in kv if v != value], min(num_choices - 1, pairs - 1))
    return _example("mqar", context, f"{key} is", f" {value}", [f" {o}" for o in others], rng)


def _example(task, context, query, answer, distractors, rng) -> RecallExample:
    choices = distractors + [answer]
    rng.shuffle(choices)
    return RecallExample(task, context, query, answer, tuple(choices), choices.index(answer))


# ---- public entry points ----------------------------------------------------------------------
_DOCUMENTS = {"phonebook": phonebook_document, "mqar": mqar_document}
_EXAMPLES = {"phonebook": phonebook_example, "mqar": mqar_example}


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
