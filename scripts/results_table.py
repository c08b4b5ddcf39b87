"""Rebuilds results/table.json and the README's results table from results/<row>/<run>/.

    python scripts/results_table.py            # writes results/table.json and README.md's table
    python scripts/results_table.py --check    # changes nothing; exit 1 if either is stale

Each results/<row>/<run>/ holds metrics.json (written by eval.py) and run.json (written by
scripts/run_result.py). Runs are grouped by row; each metric becomes its mean and sample standard
deviation (n - 1; null for a single run) over the row's runs. Rows are ordered by run.json's
`order` (rows without one last), then by name. The README's table lies between the markers
MARKER_START and MARKER_END; nothing else in the README is touched.

Not for: running anything (scripts/run_result.py does) or choosing which runs count: every folder
under results/ is a row.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER_START = "<!-- results-table:start -->"
MARKER_END = "<!-- results-table:end -->"
TABLE_FILE = "table.json"

# Metrics taken from metrics.json ("metrics"), then the training time from run.json.
METRICS = (
    "eer",
    "eer_random",
    "far_skilled",
    "far_random",
    "frr",
    "accuracy",
    "auc",
    "cllr",
    "min_cllr",
    "oracle_accuracy",
)
STATS = (*METRICS, "wall_seconds")
ROW_FIELDS = ("dataset", "protocol", "config", "references", "ink", "enrollment", "hardware")
# What runs recorded before a field existed stand for.
ROW_DEFAULTS = {"ink": "raw", "enrollment": "none"}
# (header, key, format) of the README table's metric columns.
PERCENT, PLAIN = "percent", "plain"
COLUMNS = (
    ("EER skilled %", "eer", PERCENT),
    ("EER random %", "eer_random", PERCENT),
    ("FAR skilled %", "far_skilled", PERCENT),
    ("FAR random %", "far_random", PERCENT),
    ("FRR %", "frr", PERCENT),
    ("accuracy %", "accuracy", PERCENT),
    ("AUC", "auc", PLAIN),
    ("Cllr", "cllr", PLAIN),
    ("minCllr", "min_cllr", PLAIN),
    ("oracle acc. %¹", "oracle_accuracy", PERCENT),
)
FOOTNOTE = (
    "¹ Oracle: the best balanced accuracy over thresholds chosen on the evaluated split itself, as "
    "SigNet-style papers report; every other column uses the threshold chosen on validation."
)
NOTE = (
    "Mean ± sample standard deviation over a row's runs (seeds or folds). Every row is rebuilt by "
    "`python scripts/results_table.py` from `results/<row>/<run>/` (metrics.json from eval.py, "
    "run.json with the commands, commit, seed and hardware); `--check` fails when this table or "
    "`results/table.json` is stale. Rows whose protocol is `kaggle_csv` train and test on Kaggle's "
    "pair lists, which share writers and images: they leak, and are there only for comparison with "
    "Kaggle numbers."
)
EMPTY = (
    "_No results yet: run `scripts/run_result.py` (or `scripts/gpu_results.sh` on a GPU), "
    "then `python scripts/results_table.py`._"
)


def load_runs(results_dir: str) -> dict[str, list[dict]]:
    """{row: [{"run", "metrics", "info"}, ...]} for every <row>/<run>/ holding both files."""
    rows: dict[str, list[dict]] = {}
    if not os.path.isdir(results_dir):
        return rows
    for row in sorted(os.listdir(results_dir)):
        row_dir = os.path.join(results_dir, row)
        if not os.path.isdir(row_dir):
            continue
        for run in sorted(os.listdir(row_dir)):
            run_dir = os.path.join(row_dir, run)
            paths = [os.path.join(run_dir, n) for n in ("metrics.json", "run.json")]
            if not os.path.isdir(run_dir):
                continue
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise SystemExit(
                    f"error: {missing[0]} is missing; every results/<row>/<run>/ "
                    "needs metrics.json and run.json (scripts/run_result.py)."
                )
            with open(paths[0]) as f:
                metrics = json.load(f)["metrics"]
            with open(paths[1]) as f:
                info = json.load(f)
            rows.setdefault(row, []).append({"run": run, "metrics": metrics, "info": info})
    return rows


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (n - 1) of the finite values; None where there are too few."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return round(mean, 6), None if std is None else round(std, 6)


def _field(runs: list[dict], key: str):
    """A row's metadata: the runs' common value, or their distinct values joined."""
    values = sorted({json.dumps(r["info"].get(key, ROW_DEFAULTS.get(key))) for r in runs})
    decoded = [json.loads(v) for v in values]
    return decoded[0] if len(decoded) == 1 else "; ".join(str(v) for v in decoded)


def build_table(results_dir: str) -> list[dict]:
    """One object per row, in table order."""
    table = []
    for row, runs in load_runs(results_dir).items():
        entry = {"row": row, **{k: _field(runs, k) for k in ROW_FIELDS}, "runs": len(runs)}
        for key in STATS:
            source = "info" if key == "wall_seconds" else "metrics"
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std(
                [r[source].get(key) for r in runs]
            )
        orders = [r["info"]["order"] for r in runs if r["info"].get("order") is not None]
        table.append((min(orders) if orders else math.inf, row, entry))
    return [entry for _, _, entry in sorted(table, key=lambda t: (t[0], t[1]))]


def table_json(table: list[dict]) -> str:
    return json.dumps(table, indent=1, ensure_ascii=False) + "\n"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _stat(mean: float | None, std: float | None, how: str) -> str:
    if mean is None:
        return "–"
    scale, digits = (100.0, 2) if how == PERCENT else (1.0, 3)
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _duration(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    unit, scale = ("min", 60.0) if mean >= 60 else ("s", 1.0)
    text = f"{mean / scale:.1f}"
    return f"{text} {unit}" if std is None else f"{text} ± {std / scale:.1f} {unit}"


def markdown(table: list[dict]) -> str:
    """The README's block between the markers (markers excluded)."""
    if not table:
        return f"{EMPTY}\n\n{NOTE}"
    headers = [
        "row",
        "dataset",
        "protocol",
        "config",
        "K",
        "ink",
        "enrolment",
        "runs",
        *(c[0] for c in COLUMNS),
        "train wall time",
        "hardware",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for e in table:
        cells = [
            e["row"],
            e["dataset"],
            e["protocol"],
            f"`{e['config']}`",
            e["references"],
            e["ink"],
            e["enrollment"],
            e["runs"],
        ]
        cells += [_stat(e[f"{key}_mean"], e[f"{key}_std"], how) for _, key, how in COLUMNS]
        cells += [_duration(e["wall_seconds_mean"], e["wall_seconds_std"]), e["hardware"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + f"\n\n{FOOTNOTE}\n\n{NOTE}"


def with_table(readme: str, block: str, readme_path: str) -> str:
    """`readme` with the text between the markers replaced by `block`."""
    start, end = readme.find(MARKER_START), readme.find(MARKER_END)
    if start < 0 or end < start:
        raise SystemExit(
            f"error: {readme_path} needs the lines {MARKER_START} and {MARKER_END} "
            "(in that order) around the results table."
        )
    return readme[: start + len(MARKER_START)] + "\n" + block + "\n" + readme[end:]


def _read(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--results",
        default=os.path.join(ROOT, "results"),
        help="The results tree (default: the repository's results/).",
    )
    p.add_argument(
        "--readme",
        default=os.path.join(ROOT, "README.md"),
        help="The README whose table is rewritten.",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="Change nothing; exit 1, saying what differs, if a file is stale.",
    )
    opts = p.parse_args(argv)
    table = build_table(opts.results)
    readme = _read(opts.readme)
    if readme is None:
        raise SystemExit(f"error: {opts.readme} does not exist.")
    wanted = {
        os.path.join(opts.results, TABLE_FILE): table_json(table),
        opts.readme: with_table(readme, markdown(table), opts.readme),
    }
    stale = [path for path, text in wanted.items() if _read(path) != text]
    if opts.check:
        for path in stale:
            print(f"{path} differs from what {opts.results} gives:")
            sys.stdout.writelines(
                difflib.unified_diff(
                    (_read(path) or "").splitlines(keepends=True),
                    wanted[path].splitlines(keepends=True),
                    "now",
                    "rebuilt",
                    n=1,
                )
            )
        if stale:
            print("run `python scripts/results_table.py` to rebuild them.")
        return 1 if stale else 0
    os.makedirs(opts.results, exist_ok=True)
    for path in stale:
        with open(path, "w", encoding="utf-8") as f:
            f.write(wanted[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
