"""Scores a candidate recipe on validation writers over several writer splits, and logs it.

    python scripts/select_recipe.py --name cedar_gap --splits fold0,fold1,fold2 -- \\
        --config=configs/cedar_best.py --config.model.encoder=vgg_gap

For each split (`foldN`: `--config.split.method=kfold --config.split.fold=N`; `seedN`:
`--config.seed=N`) it runs, from the repository root,

    python train.py <args> <split args> --workdir=W     unless W/summary.json exists
    python eval.py  <args> <split args> --workdir=W --split=validation

and appends one JSON line to `results/selection.jsonl`: the candidate's arguments, each split's
validation EER (skilled and random forgeries, at the best checkpoint by validation EER), their
means, and the commit it started at. The candidate's score is the mean over splits of
(skilled + random) / 2: a recipe is chosen by it, never by test writers, whose pairs this script
never scores.

Why several splits: with ~40 writers, validation is 8-11 writers, and one recipe's validation EER
moves by several points between splits and seeds; a choice on one split is mostly noise.

W is <workdirs>/<name>/<split>; `--workdirs workdirs/results --name <row>` reuses the trainings of
a results row (scripts/run_result.py), so a chosen candidate's test row needs no new training.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from run_result import cpu_model, git_commit  # noqa: E402 - the scripts share these.

LOG = os.path.join("results", "selection.jsonl")


def split_args(split: str) -> list[str]:
    """The config overrides that select one writer split: foldN or seedN."""
    m = re.fullmatch(r"(fold|seed)(\d+)", split)
    if not m:
        raise SystemExit(f"error: split {split!r}: use foldN (kfold) or seedN (seed)")
    if m.group(1) == "fold":
        return ["--config.split.method=kfold", f"--config.split.fold={m.group(2)}"]
    return [f"--config.seed={m.group(2)}"]


def _run(cmd: list[str], log_path: str) -> None:
    print("+", shlex.join(cmd), flush=True)
    with open(log_path, "a") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"error: `{shlex.join(cmd)}` exited with {rc}; see {log_path}")


def score_split(args: list[str], split: str, workdir: str) -> dict:
    """Trains (once) and evaluates the validation writers of one split."""
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "select.log")
    full = [*args, *split_args(split), f"--workdir={workdir}"]
    summary_path = os.path.join(workdir, "summary.json")
    trained_here = not os.path.exists(summary_path)
    if trained_here:
        _run([sys.executable, "train.py", *full], log_path)
    with open(summary_path) as f:
        summary = json.load(f)
    _run([sys.executable, "eval.py", *full, "--split=validation"], log_path)
    # A run trained on several datasets is judged on the one --config.eval.dataset names.
    target = next((a.split("=", 1)[1] for a in args if a.startswith("--config.eval.dataset=")), "")
    folder = f"{target}_validation" if target else "validation"
    with open(os.path.join(workdir, "eval", folder, "metrics.json")) as f:
        doc = json.load(f)
    m = doc["metrics"]
    return {
        "split": split,
        "eer": m["eer"],
        "eer_random": m["eer_random"],
        "auc": m["auc"],
        "checkpoint_step": doc["checkpoint_step"],
        "train_wall_seconds": summary.get("wall_seconds"),
        "trained_here": trained_here,
        "workdir": os.path.relpath(workdir, ROOT),
    }


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit("error: give train/eval arguments after `--`")
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="Candidate name (its workdirs' folder).")
    p.add_argument("--splits", default="fold0,fold1,fold2", help="foldN or seedN, comma-separated.")
    p.add_argument("--workdirs", default=os.path.join("workdirs", "selection"))
    p.add_argument(
        "--train_name",
        default=None,
        help="Reuse the trainings of this candidate (its workdirs) and change only the "
        "evaluation (e.g. K references, enrolment); default: --name.",
    )
    p.add_argument("--log", default=LOG, help="JSON lines file the result is appended to.")
    p.add_argument("--note", default="", help="Why this candidate (goes into the log line).")
    opts = p.parse_args(argv[:cut])
    args = argv[cut + 1 :]
    splits = [s for s in opts.splits.split(",") if s]
    if len(splits) < 3:
        print("warning: fewer than 3 splits: the mean says little", file=sys.stderr)
    t0 = time.time()
    # The code that trains is the code at the start; a commit made while the candidate ran is
    # recorded beside it (`commit_finished`), not in its place.
    commit, dirty = git_commit()
    trained = opts.train_name or opts.name
    runs = [score_split(args, s, os.path.join(ROOT, opts.workdirs, trained, s)) for s in splits]
    mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
    finished_at = git_commit()
    line = {
        "name": opts.name,
        "args": args,
        "splits": splits,
        "mean_eer": mean("eer"),
        "mean_eer_random": mean("eer_random"),
        "score": (mean("eer") + mean("eer_random")) / 2,
        "runs": runs,
        "note": opts.note,
        "commit": commit,
        "commit_dirty": dirty,
        **({"commit_finished": finished_at[0]} if finished_at != (commit, dirty) else {}),
        "hardware": f"{cpu_model()} ({os.cpu_count()} cores)",
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.time() - t0,
    }
    with open(os.path.join(ROOT, opts.log), "a") as f:
        f.write(json.dumps(line) + "\n")
    print(
        f"{opts.name}: validation EER skilled {100 * line['mean_eer']:.2f}%, random "
        f"{100 * line['mean_eer_random']:.2f}% (mean of {len(runs)} splits: "
        + ", ".join(f"{r['split']} {100 * r['eer']:.1f}/{100 * r['eer_random']:.1f}" for r in runs)
        + ")"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
