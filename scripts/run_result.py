"""Runs one result of the README's results table: trains (once), evaluates, records both.

    python scripts/run_result.py --row sigcomp_signet --run seed0 -- \\
        --config=configs/sigcomp.py --config.seed=0 --config.model.dtype=bfloat16
    python scripts/run_result.py --row sigcomp_signet_k5 --train_row sigcomp_signet --run seed0 \\
        --eval_args="--config.eval.references=5" -- \\
        --config=configs/sigcomp.py --config.seed=0 --config.model.dtype=bfloat16

Everything after `--` goes to both train.py and eval.py (the config and its overrides). The script
runs, from the repository root,

    python train.py <args> --workdir=W      unless W/summary.json exists (a finished training)
    python eval.py  <args> --workdir=W <--eval_args>

and writes results/<row>/<run>/metrics.json (the one eval.py wrote) and .../run.json: the
commands as typed, commit, seed, hardware, training wall time and the row's metadata (dataset,
protocol, config, references K). W is <workdirs>/<train_row>/<run>; rows that change only the
evaluation (K references, `--config.eval.dataset=cedar`) name the row that trained with --train_row
and share its workdir, so training happens once. `python scripts/results_table.py` then rebuilds
results/table.json and the README's table from results/.

Not for: searches over hyper-parameters (one run per call), or timing (the wall time recorded is
what the run took, on whatever else the machine was doing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What eval.py writes, under <workdir>/eval/<folder>/ (siamjax.eval_lib.eval_dir names the folder).
METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.json"

# Prints the accelerator JAX sees, in a child process so that this script never holds GPU memory
# while train.py runs.
_JAX_DEVICES = (
    "import json, jax; d = jax.devices(); "
    "print(json.dumps({'platform': d[0].platform, 'kind': d[0].device_kind, 'count': len(d)}))"
)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(options before `--`, the train/eval arguments after it)."""
    if "--" not in argv:
        raise SystemExit(
            "error: give the train/eval arguments after `--`, e.g. "
            "`-- --config=configs/sigcomp.py --config.seed=0`."
        )
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--row", required=True, help="Row of the results table.")
    p.add_argument("--run", required=True, help="Run of the row (seed0, fold3, ...).")
    p.add_argument(
        "--train_row", default=None, help="Row whose workdir holds the training (default: --row)."
    )
    p.add_argument(
        "--workdirs",
        default=os.path.join("workdirs", "results"),
        help="Root of the workdirs: W = <workdirs>/<train_row>/<run>.",
    )
    p.add_argument("--workdir", default=None, help="W itself, instead of the default.")
    p.add_argument("--results", default="results", help="Root of the results tree.")
    p.add_argument(
        "--eval_args", default="", help="Extra eval.py arguments, one shell-quoted string."
    )
    p.add_argument("--dataset", default=None, help="Row metadata (default: from eval's config).")
    p.add_argument("--protocol", default=None, help="Row metadata (default: from eval's config).")
    p.add_argument("--order", type=int, default=None, help="Position of the row in the table.")
    opts = p.parse_args(argv[:cut])
    passthrough = argv[cut + 1 :]
    if not any(a.startswith("--config=") for a in passthrough):
        raise SystemExit("error: the arguments after `--` need --config=<config file>.")
    if any(a.split("=")[0] in ("--workdir", "--split") for a in passthrough):
        raise SystemExit(
            "error: give --workdir to run_result.py (not after `--`) and --split in --eval_args."
        )
    return opts, passthrough


def config_arg(args: list[str]) -> str:
    return next(a for a in args if a.startswith("--config=")).split("=", 1)[1]


def run(cmd: list[str]) -> float:
    """Runs `cmd` in the repository root; returns its wall seconds; exits with its failure."""
    print("+", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"error: `{shlex.join(cmd)}` exited with {done.returncode}.")
    return time.perf_counter() - start


def metrics_files(workdir: str) -> dict[str, int]:
    """{path: mtime_ns} of every metrics.json eval.py has written in `workdir`."""
    root = os.path.join(workdir, "eval")
    found = {}
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name, METRICS_FILE)
            if os.path.isfile(path):
                found[path] = os.stat(path).st_mtime_ns
    return found


def written_metrics(before: dict[str, int], after: dict[str, int]) -> str:
    """The metrics.json the evaluation just (re)wrote; wherever eval_lib chose to put it."""
    changed = [p for p, t in after.items() if before.get(p) != t]
    if len(changed) != 1:
        raise SystemExit(
            f"error: expected eval.py to write one {METRICS_FILE}, found "
            f"{len(changed)} new or changed: {changed}."
        )
    return changed[0]


def protocol_of(config: dict) -> str:
    """The protocol in the table's words, from the config eval.py ran with."""
    s = config["split"]
    method = s["method"]
    if method == "fractions":
        val, test = round(100 * s["val_fraction"]), round(100 * s["test_fraction"])
        base = f"writer-disjoint {100 - val - test}/{val}/{test}"
    elif method == "kfold":
        base = f"kfold {s['num_folds']}"
    elif method == "writers":
        base = "writer-disjoint (listed writers)"
    elif method == "kaggle_csv":
        base = "kaggle_csv (leaking)"
    else:
        base = method
    if config.get("eval", {}).get("allow_fewer_writers"):
        base += ", writers with fewer than K + 1 genuine left out"
    target = config.get("eval", {}).get("dataset")
    if target:
        # Trained on several datasets at once (`cedar+sigcomp2011`): one of them is not across.
        if target in str(config["dataset"]).split("+"):
            return f"trained on {config['dataset']}; {base}"
        return f"cross-dataset (trained on {config['dataset']}; {base})"
    return base


def git_commit() -> tuple[str, bool | None]:
    """(HEAD, whether tracked code differs from it); ('unknown', None) outside a git checkout,
    unless $SIAMJAX_COMMIT names the commit the tree was copied from. Changes under results/ and
    to README.md (what this script and results_table.py write) do not make the code dirty."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!results",
                ":!README.md",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SIAMJAX_COMMIT", "unknown"), None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> tuple[str, dict]:
    """(one line for the table, details): the accelerator JAX uses, else the CPU."""
    detail = {"cpu": cpu_model(), "cpu_cores": os.cpu_count()}
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="2")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _JAX_DEVICES],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
        detail.update({f"jax_{k}": v for k, v in json.loads(out.strip().splitlines()[-1]).items()})
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    if detail.get("jax_platform") not in (None, "cpu"):
        return f"{detail['jax_count']}x {detail['jax_kind']}", detail
    return f"{detail['cpu']} ({detail['cpu_cores']} cores)", detail


def shown(path: str) -> str:
    """`path` relative to the repository root when inside it, else absolute."""
    rel = os.path.relpath(path, ROOT)
    return os.path.abspath(path) if rel.startswith("..") else rel


def main(argv: list[str]) -> int:
    opts, args = parse_args(argv)
    train_row = opts.train_row or opts.row
    workdir = opts.workdir or os.path.join(opts.workdirs, train_row, opts.run)
    eval_args = shlex.split(opts.eval_args)
    train_cmd = ["python", "train.py", *args, f"--workdir={workdir}"]
    eval_cmd = ["python", "eval.py", *args, f"--workdir={workdir}", *eval_args]
    abs_workdir = os.path.join(ROOT, workdir)
    summary_path = os.path.join(abs_workdir, SUMMARY_FILE)

    # The ink-darkness controls (--config.eval.scorer=ink|ink_pair) have nothing to train.
    scorer = next(
        (a.split("=", 1)[1] for a in [*args, *eval_args] if a.startswith("--config.eval.scorer=")),
        "model",
    )
    untrained = scorer != "model"
    trained = not untrained and not os.path.exists(summary_path)
    measured = run(train_cmd) if trained else None
    if untrained:
        train_cmd = []
        os.makedirs(abs_workdir, exist_ok=True)
    elif not trained:
        print(f"{summary_path} exists: training finished earlier; evaluating only.", flush=True)
    before = metrics_files(abs_workdir)
    run(eval_cmd)
    metrics_path = written_metrics(before, metrics_files(abs_workdir))

    with open(metrics_path) as f:
        doc = json.load(f)
    summary = {}
    if not untrained:
        with open(summary_path) as f:
            summary = json.load(f)
    config = doc["config"]
    hw, hw_detail = hardware()
    commit, dirty = git_commit()
    out_dir = os.path.join(ROOT, opts.results, opts.row, opts.run)
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(metrics_path, os.path.join(out_dir, METRICS_FILE))
    record = {
        "row": opts.row,
        "run": opts.run,
        "command": {
            "run_result": shlex.join(["python", "scripts/run_result.py", *argv]),
            "train": shlex.join(train_cmd) if train_cmd else None,
            "eval": shlex.join(eval_cmd),
        },
        "commit": commit,
        "commit_dirty": dirty,
        "seed": config["seed"],
        "hardware": hw,
        "hardware_detail": hw_detail,
        # The training loop's own time (summary.json: of the last, possibly resumed, segment);
        # wall_seconds_process adds process start, data preparation and compilation, when this
        # call trained.
        "wall_seconds": summary.get("wall_seconds", measured),
        "wall_seconds_process": measured,
        "trained_here": trained,
        "workdir": workdir,
        "eval_output": shown(os.path.dirname(metrics_path)),
        "dataset": opts.dataset
        or doc.get("dataset")
        or config.get("eval", {}).get("dataset")
        or config["dataset"],
        "protocol": opts.protocol or protocol_of(config),
        "config": config_arg(args),
        "references": doc.get("references", config["eval"]["references"]),
        "ink": config.get("real", {}).get("ink", "raw"),
        "enrollment": doc.get("enrollment", config["eval"].get("enrollment", "none")),
        "scorer": scorer,
        "writers_left_out": doc.get("writers_left_out", []),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if opts.order is not None:
        record["order"] = opts.order
    with open(os.path.join(out_dir, "run.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {shown(out_dir)}/{{{METRICS_FILE},run.json}}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
