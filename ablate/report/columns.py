"""The one table that maps lm-eval results to the paper's columns.

The paper (arXiv 2411.13676) scores with lm-evaluation-harness, zero-shot, and does not say which of
``acc`` / ``acc_norm`` each number is. We take the common zero-shot convention of the Mamba / Samba
line of papers, which the Table 3 figures are consistent with: ``acc_norm`` where answer lengths vary
a lot (ARC-Challenge, HellaSwag), ``acc`` elsewhere; LAMBADA is lambada_openai (``acc`` and
``perplexity``), Wiki. ppl is wikitext ``word_perplexity``, TruthfulQA is ``truthfulqa_mc2``, SIQA is
lm-eval's ``social_iqa``; the recall tasks SWDE and SQuAD-C are lm-eval's ``swde`` and
``squad_completion`` scored by ``contains``. The same headlines are declared by the evaluation suites
(``ablate.evals.suites``); a test keeps the two in step.

Our synthetic recall tasks (``ablate_phonebook``, ``ablate_mqar``: 4-way multiple choice, chance 25%)
have their own columns: the paper has no figure for them.

Accuracies are shown in percent (lm-eval reports fractions); perplexities as they are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    key: str  # the key of the paper's figure in a variant's ``paper:`` mapping
    label: str  # the report's header
    task: str  # lm-eval task name
    metric: str  # lm-eval metric name (without the filter suffix)
    kind: str  # acc (shown x100) | ppl
    group: str  # lm | recall | commonsense | synthetic

    @property
    def scale(self) -> float:
        return 100.0 if self.kind == "acc" else 1.0


COLUMNS: tuple[Column, ...] = (
    Column("wiki_ppl", "Wiki. ppl", "wikitext", "word_perplexity", "ppl", "lm"),
    Column("lambada_ppl", "LMB. ppl", "lambada_openai", "perplexity", "ppl", "lm"),
    Column("swde", "SWDE", "swde", "contains", "acc", "recall"),
    Column("squad_completion", "SQuAD-C", "squad_completion", "contains", "acc", "recall"),
    Column("lambada", "LMB. acc", "lambada_openai", "acc", "acc", "commonsense"),
    Column("piqa", "PIQA", "piqa", "acc", "acc", "commonsense"),
    Column("arc_challenge", "ARC-C", "arc_challenge", "acc_norm", "acc", "commonsense"),
    Column("arc_easy", "ARC-E", "arc_easy", "acc", "acc", "commonsense"),
    Column("hellaswag", "Hella.", "hellaswag", "acc_norm", "acc", "commonsense"),
    Column("winogrande", "Wino.", "winogrande", "acc", "acc", "commonsense"),
    Column("truthfulqa", "TruthQA", "truthfulqa_mc2", "acc", "acc", "commonsense"),
    Column("siqa", "SIQA", "social_iqa", "acc", "acc", "commonsense"),
    Column("phonebook", "Phonebook", "ablate_phonebook", "acc", "acc", "synthetic"),
    Column("mqar", "MQAR", "ablate_mqar", "acc", "acc", "synthetic"),
)
BY_KEY = {c.key: c for c in COLUMNS}

# the averages the paper prints: Table 1's "general" and Table 3's "Avg." are the commonsense mean;
# Table 1's "recall" and Table 3's recall "Avg." are the mean of SWDE and SQuAD-C
COMMONSENSE = tuple(c.key for c in COLUMNS if c.group == "commonsense")
RECALL = tuple(c.key for c in COLUMNS if c.group == "recall")
SYNTHETIC = tuple(c.key for c in COLUMNS if c.group == "synthetic")

TABLE3_ORDER = ("table3-mamba2", "table3-mamba2-ffn", "table3-llama3", "table3-samba", "table3-hymba")
TABLE3_COLUMNS = ("wiki_ppl", "lambada_ppl", "swde", "squad_completion", "recall_avg", *COMMONSENSE, "commonsense_avg")
AVERAGE_LABELS = {"recall_avg": "Recall avg", "commonsense_avg": "CS avg"}


def label(key: str) -> str:
    return BY_KEY[key].label if key in BY_KEY else AVERAGE_LABELS.get(key, key)


def lower_is_better(key: str) -> bool:
    return key in BY_KEY and BY_KEY[key].kind == "ppl"
