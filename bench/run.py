"""One driver for siamjax's benchmarks: one JSON object per line on stdout (and appended to --out).

    python bench/run.py                                       # everything, default sizes
    python bench/run.py --only train_step,torch_reference --batches 256,1024 --dtypes bfloat16
    python bench/run.py --only end_to_end,eval_rss,verify --e2e_steps 20       # a CPU smoke run
    python bench/run.py --list

Every line carries `benchmark`, its figures, and where they were measured: `machine` (CPU model,
cores, GPU), `versions` (python, jax, jaxlib, flax, optax, torch), `commit` (HEAD and whether the
tree is dirty), `time` and `load_avg_1m` (a loaded machine gives meaningless numbers). A benchmark
that cannot run prints a line with `skipped`; one that fails prints a line with `error` and the
others still run (exit code 1 at the end). bench/README.md describes each benchmark's figures.

Whatever compiles, allocates or is a program a user starts (the train step, the torch reference,
train.py, eval.py, siamjax-verify) runs in a subprocess of its own; eval_embed and input_pipeline
run in this process, last, so that memory this process holds never sits beside a measurement.

What it is not for: correctness (tests/) or pass/fail targets; it measures and records.
"""

from __future__ import annotations

import argparse
import os
import sys

# Importing the suite registers its benchmarks, in run order (and sets up the environment).
from suite import end_to_end, evaluation, pipeline, step  # noqa: F401
from suite.common import BENCHMARKS, REPO, TORCH_MODES, BenchError, Context, log

# ---------------------------------------------------------------------------------------------
# Command line


def _csv(kind):
    def parse(text: str):
        return [kind(x) for x in text.split(",") if x.strip()]

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--only",
        type=_csv(str),
        default=None,
        help="comma-separated benchmarks (default: all; see --list)",
    )
    p.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    g = p.add_argument_group("train_step, torch_reference")
    g.add_argument("--steps", type=int, default=20, help="timed steps per setting (also torch)")
    g.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="siamjax and torch alternated this many times per setting; medians reported",
    )
    g.add_argument("--batches", type=_csv(int), default=[32, 256], help="global batch sizes")
    g.add_argument(
        "--dtypes",
        type=_csv(str),
        default=["float32", "bfloat16"],
        help="model dtypes (float32, bfloat16)",
    )
    g.add_argument("--train_config", default="configs/sigcomp.py")
    g.add_argument(
        "--torch_reference",
        default=os.path.join(REPO, "..", "shared", "bench", "torch_reference.py"),
    )
    g.add_argument(
        "--torch_python", default=sys.executable, help="the Python that runs the torch reference"
    )
    g.add_argument(
        "--torch_bf16_mode",
        default=TORCH_MODES["bfloat16"],
        choices=["eager-bf16-cl", "compile-bf16-cl"],
    )
    g = p.add_argument_group("eval_embed")
    g.add_argument("--eval_config", default="configs/sigcomp.py")
    g.add_argument("--eval_images", type=int, default=1024)
    g.add_argument("--eval_batch", type=int, default=128)
    g.add_argument("--eval_repeats", type=int, default=3)
    g.add_argument("--eval_dtype", default=None, help="override config.model.dtype")
    g = p.add_argument_group("input_pipeline")
    g.add_argument(
        "--pipeline_config",
        default=None,
        help="default: configs/sigcomp.py with $SIAMJAX_DATA_DIR, else synthetic",
    )
    g.add_argument("--pipeline_batch", type=int, default=None, help="default: the config's")
    g.add_argument("--pipeline_batches", type=int, default=500, help="timed batches")
    g = p.add_argument_group("end_to_end, eval_rss, verify")
    g.add_argument(
        "--e2e_config",
        default=None,
        help="default: configs/sigcomp.py with $SIAMJAX_DATA_DIR, else synthetic",
    )
    g.add_argument("--e2e_steps", type=int, default=200, help="--config.num_train_steps")
    g.add_argument("--layout_steps", type=int, default=20, help="timed steps per layout")
    g.add_argument(
        "--e2e_every",
        type=int,
        default=None,
        help="eval and checkpoint every N steps (default: e2e_steps / 2)",
    )
    g.add_argument("--e2e_batch", type=int, default=None, help="default: the config's")
    g.add_argument(
        "--e2e_repeats",
        type=int,
        default=1,
        help="trainings of end_to_end(_synthetic), alternated with bare runs; with more than "
        "one, a last line gives each ratio's median",
    )
    g.add_argument(
        "--e2e_step_steps",
        type=int,
        default=100,
        help="timed steps of the bare step that end_to_end compares with (mean and median)",
    )
    g.add_argument(
        "--workdir",
        default=None,
        help="train here (must hold no run); or, without end_to_end, a trained "
        "workdir for eval_rss and verify (name its config with --e2e_config)",
    )
    g.add_argument("--keep_workdir", action="store_true", help="keep the temp folder")
    g.add_argument(
        "--verify_images",
        default=os.path.normpath(os.path.join(REPO, "..", "shared", "datasets", "originals")),
        help="folder of scans; synthetic PNGs when it is missing",
    )
    g.add_argument("--verify_pairs", type=int, default=64, help="rows of the --pairs CSV")
    args = p.parse_args(argv)
    args.torch_reference = os.path.normpath(args.torch_reference)
    unknown = set(args.only or []) - set(BENCHMARKS)
    if unknown:
        p.error(
            f"unknown benchmark(s) {', '.join(sorted(unknown))}; known: {', '.join(BENCHMARKS)}"
        )
    return args


def json_stream():
    """Stdout for the JSON lines alone: file descriptor 1 is pointed at stderr, so that whatever
    else writes to stdout in this process (TFDS progress, C++ libraries) lands there instead."""
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return stream


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    selected = [n for n in BENCHMARKS if args.only is None or n in args.only]
    ctx = Context(args, selected, json_stream())
    try:
        for name in selected:
            log("benchmark %s", name)
            try:
                for line_name, figures in BENCHMARKS[name](ctx):
                    ctx.emit(line_name, figures)
            except BenchError as e:
                ctx.emit(name, {"error": str(e)})
            except Exception as e:  # noqa: BLE001 - one failure must not stop the others.
                ctx.emit(name, {"error": f"{type(e).__name__}: {e}"})
    finally:
        ctx.close()
    return 1 if ctx.failed else 0


if __name__ == "__main__":
    sys.exit(main())
