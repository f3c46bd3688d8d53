"""Metrics: rows in RUN_DIR/metrics.jsonl (schema in ablate/rundir.py), throughput, and what the
user sees: a rich progress bar on a terminal, compact log lines otherwise (pipes, CI, torchrun)."""

from __future__ import annotations

import json
import time

from ablate.rundir import RunDir, write_json_atomic


class MetricsLog:
    """Appends rows to metrics.jsonl on rank 0. On resume, rows past the checkpoint's step (logged
    by the crashed run after its last checkpoint) are dropped, so each step appears once."""

    def __init__(self, run: RunDir, enabled: bool, config_hash: str):
        self.run, self.enabled, self.config_hash = run, enabled, config_hash

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.run.metrics_path.exists():
            return
        rows = [r for r in self.run.metrics() if r.get("step", 0) <= step]
        tmp = self.run.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(self.run.metrics_path)

    def log(self, row: dict) -> None:
        if self.enabled:
            self.run.append_metrics(dict(row, config_hash=self.config_hash))


class Throughput:
    """Tokens per second over the steps since the last report (excludes evaluation and saving)."""

    def __init__(self):
        self.tokens, self.seconds, self._t = 0, 0.0, None

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self, tokens: int) -> None:
        if self._t is not None:
            self.seconds += time.perf_counter() - self._t
            self.tokens += tokens
            self._t = None

    def rate(self, reset: bool = True) -> float:
        r = self.tokens / self.seconds if self.seconds > 0 else 0.0
        if reset:
            self.tokens, self.seconds = 0, 0.0
        return r


class Reporter:
    """Progress for humans: a live bar (tokens/s, loss, LR, ETA) on a terminal, else a line every
    ``every`` steps. Silent on ranks other than 0, or when quiet."""

    def __init__(self, enabled: bool, title: str, total: int, start: int):
        from ablate.console import console

        self.console, self.enabled, self.total, self.start_step = console, enabled, total, start
        self.live = enabled and console.is_terminal
        self.every = max(1, (total - start) // 20)
        self._progress = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._progress.add_task(title, total=total, completed=start, stats="")
            self._progress.start()
        elif enabled:
            console.print(title, highlight=False)

    def step(self, row: dict) -> None:
        if not self.enabled:
            return
        stats = f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s"
        if self.live:
            self._progress.update(self._task, completed=row["step"], stats=stats)
        elif row["step"] % self.every == 0 or row["step"] == self.total:
            self.console.print(f"step {row['step']}/{self.total}  {stats}", highlight=False)

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def write_summary(path, data: dict) -> None:
    write_json_atomic(path, data)
