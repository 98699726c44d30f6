"""What a step reports: samples of ids, counts by reason, failure files, and the failure rule.

Everything a run did is counted, a few ids of each kind are kept as samples
(``MAX_SAMPLE``), and every failed item goes, with its id and message, to a
JSON-lines report. Pure data and one file write: the Dagster layer only turns
these into metadata.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MAX_SAMPLE = 20  # ids (or failures) kept per kind in metadata; the report file has them all


def add_counts(target: Any, other: Any) -> None:
    """Add ``other``'s numeric fields to ``target``'s and extend its list fields (two of one dataclass)."""
    for f in fields(target):
        mine, theirs = getattr(target, f.name), getattr(other, f.name)
        if isinstance(mine, list):
            mine.extend(theirs)
        elif isinstance(mine, int | float):
            setattr(target, f.name, mine + theirs)


def add_sample(sample: list[Hashable], items: Iterable[Hashable]) -> None:
    """Append ``items`` to ``sample`` while it holds fewer than ``MAX_SAMPLE``."""
    for item in items:
        if len(sample) >= MAX_SAMPLE:
            return
        sample.append(item)


@dataclass(frozen=True)
class ItemFailure:
    key: Hashable  # the row id (or edge id) the failure belongs to
    message: str
    batch: int


@dataclass
class ReasonLog:
    """Counts by reason, with a few ids of each, for metadata that explains itself."""

    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[Hashable]] = field(default_factory=dict)

    def add(self, reason: str, key: Hashable | None, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        sample = self.samples.setdefault(reason, [])
        if key is not None:
            add_sample(sample, [key])

    def merge(self, other: ReasonLog) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            add_sample(self.samples.setdefault(reason, []), other.samples.get(reason, []))

    def as_metadata(self, prefix: str) -> dict[str, object]:
        """``{prefix_reason: count}`` plus ``prefix_sample_ids``, for a step's metadata."""
        meta: dict[str, object] = {f"{prefix}_{reason}": n for reason, n in sorted(self.counts.items())}
        samples = {k: v for k, v in sorted(self.samples.items()) if v}
        if samples:
            meta[f"{prefix}_sample_ids"] = samples
        return meta


def write_failure_report(path: Path, asset: str, failures: Sequence[ItemFailure]) -> Path | None:
    """Every failed item with its id and reason, one JSON object a line; None when nothing failed."""
    if not failures:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for f in failures:
            fh.write(
                json.dumps({"asset": asset, "id": f.key, "batch": f.batch, "error": f.message}, default=str)
                + "\n"
            )
    return path


@dataclass(frozen=True)
class FailureRule:
    """When refused objects fail a step: a large share and enough of them (else a WARN check)."""

    max_failure_rate: float
    min_failures_to_fail: int

    def verdict(self, failed: int, rows_read: int) -> str | None:
        """Why the step fails, or None when it succeeds (with a warning if anything failed)."""
        rate = failed / rows_read if rows_read else 0.0
        if rate > self.max_failure_rate and failed >= self.min_failures_to_fail:
            return (
                f"{failed} of {rows_read} objects failed ({rate:.2%}), above "
                f"TERCUL_SYNC_MAX_FAILURE_RATE={self.max_failure_rate:.2%} "
                f"(and at least TERCUL_SYNC_MIN_FAILURES_TO_FAIL={self.min_failures_to_fail})"
            )
        return None
