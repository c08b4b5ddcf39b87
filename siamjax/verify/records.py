"""What goes into and comes out of a `Verifier`: `Pair`, `Decision`, `Failure`, the pairs CSV, and
how files are named to the user. Plain data, no model: the CLI and callers build pairs from here.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any

from siamjax.errors import UserError, one_line

GENUINE, FORGED = "genuine", "forged"
REFERENCE_SEPARATOR = ";"  # Between several references in one CSV cell.


@dataclasses.dataclass(frozen=True)
class Pair:
    """One question: is `questioned` by the writer of `references` (one or more genuine files)?"""

    references: tuple[str, ...]
    questioned: str
    id: str = ""


@dataclasses.dataclass(frozen=True)
class Decision:
    """The answer to a `Pair`. Scores are probabilities that the questioned file is genuine.

    `score` fuses `reference_scores` (one per reference, in order) with `fusion`, or, with an
    `enrollment` other than 'none', is the writer enrolment's score (`siamjax.enrollment`); `llr` is
    logit(score) - logit(prior_positive), in nats (> 0 favours genuine), where `prior_positive` is
    the share of genuine pairs the model was trained on; `decision` is "genuine" iff
    score >= threshold.
    """

    id: str
    questioned: str
    references: tuple[str, ...]
    reference_scores: tuple[float, ...]
    fusion: str
    score: float
    llr: float
    prior_positive: float
    threshold: float
    decision: str
    checkpoint_step: int
    enrollment: str = "none"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["references"], d["reference_scores"] = list(self.references), list(self.reference_scores)
        if not self.id:
            del d["id"]
        return d


@dataclasses.dataclass(frozen=True)
class Failure:
    """A `Pair` (or CSV row) that could not be scored, and why (one line naming the file)."""

    id: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "error": self.error}


def display_path(path: str | os.PathLike) -> str:
    """How outputs and errors name a file: relative to the working directory when it lies inside
    it, else as given (normalised), so that a user recognises what they typed."""
    given = os.path.normpath(os.fspath(path))
    rel = os.path.relpath(os.path.abspath(given))
    return given if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def read_pairs_csv(path: str | os.PathLike) -> list[Pair]:
    """The pairs of a CSV with a header naming `reference`, `questioned` and optionally `id`.

    A reference cell may hold several paths separated by ';'. Relative paths are relative to the
    CSV's folder (so the CSV works from any directory). A row without an `id` gets its line number
    (the header is line 1). An empty cell stays empty: `Verifier.verify_pairs` reports that row.
    A missing or unreadable file, or a header without the two columns, raises `UserError`.
    """
    name = display_path(path)
    base = os.path.dirname(os.fspath(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            columns = [c.strip().lower() for c in header or []]
            if "reference" not in columns or "questioned" not in columns:
                raise UserError(
                    f"{name}: the first line must name the columns 'reference' and "
                    f"'questioned' (and optionally 'id'); it is {header or 'empty'}."
                )
            at = {c: columns.index(c) for c in ("reference", "questioned", "id") if c in columns}
            pairs = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                cell = {c: row[i].strip() if i < len(row) else "" for c, i in at.items()}
                refs = [r.strip() for r in cell["reference"].split(REFERENCE_SEPARATOR)]
                questioned = cell["questioned"] and os.path.join(base, cell["questioned"])
                pairs.append(
                    Pair(
                        tuple(os.path.join(base, r) for r in refs if r),
                        questioned,
                        cell.get("id") or str(reader.line_num),
                    )
                )
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{name}: cannot read the pairs CSV ({one_line(e)})") from e
    if not pairs:
        raise UserError(f"{name}: no pairs below the header.")
    return pairs
