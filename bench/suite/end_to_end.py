"""end_to_end and end_to_end_synthetic: a real train.py run against the bare step; the trained
workdir is what eval_rss and verify then use."""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from collections.abc import Callable
from typing import Any

from suite.common import (
    TRAIN_LOG,
    BenchError,
    Context,
    benchmark,
    load_config,
    log,
    real_data_dir,
    run_child,
)
from suite.step import _step_cmd


def _e2e_setup(ctx: Context, spec: str | None = None) -> tuple[str, list[str], Any]:
    a = ctx.args
    spec = (
        spec
        or a.e2e_config
        or ("configs/sigcomp.py" if real_data_dir() else "configs/synthetic.py")
    )
    cfg = load_config(spec)
    every = a.e2e_every or max(a.e2e_steps // 2, 1)
    overrides = [
        f"--config.num_train_steps={a.e2e_steps}",
        f"--config.eval_every_steps={every}",
        f"--config.checkpoint_every_steps={every}",
        f"--config.log_every_steps={max(1, min(cfg.log_every_steps, every // 5))}",
    ]
    if a.e2e_batch:
        overrides.append(f"--config.batch_size={a.e2e_batch}")
        cfg.batch_size = a.e2e_batch
    return spec, overrides + ctx.tfds_overrides(), cfg


def _has_run(workdir: str) -> bool:
    d = os.path.join(workdir, "checkpoints")
    return os.path.isdir(d) and bool(os.listdir(d))


def _train(ctx: Context) -> dict[str, Any]:
    """Trains with train.py in --workdir (or a temp one) once per invocation; reused after."""
    if ctx.train_error:
        raise BenchError(ctx.train_error)
    if ctx.trained is None:
        spec, overrides, cfg = _e2e_setup(ctx)
        workdir = ctx.args.workdir or os.path.join(ctx.tmp, "workdir")
        if _has_run(workdir):
            raise BenchError(
                f"--workdir {workdir} already holds a run: end_to_end trains from "
                "scratch, so give an empty or new folder"
            )
        child = run_child(
            [sys.executable, "train.py", f"--config={spec}", f"--workdir={workdir}", *overrides],
            ctx.args.timeout,
        )
        if child.rc != 0:
            ctx.train_error = child.failure()
            raise BenchError(ctx.train_error)
        ctx.trained = {
            "workdir": workdir,
            "config": spec,
            "overrides": overrides,
            "cfg": cfg,
            "child": child,
        }
    return ctx.trained


def _workdir(ctx: Context) -> dict[str, Any]:
    """A trained workdir for eval_rss and verify: --workdir if it holds a run, else train one."""
    w = ctx.args.workdir
    if ctx.trained is None and w and _has_run(w):
        spec = _e2e_setup(ctx)[0]
        log("using the run in %s with config %s (--e2e_config)", w, spec)
        ctx.trained = {
            "workdir": w,
            "config": spec,
            "overrides": ctx.tfds_overrides(),
            "cfg": load_config(spec),
            "child": None,
        }
    return _train(ctx)


def _train_once(ctx: Context, spec: str, workdir: str) -> dict[str, Any]:
    """A fresh train.py run of `spec` in `workdir` (which must not hold a run)."""
    spec, overrides, cfg = _e2e_setup(ctx, spec)
    if _has_run(workdir):
        raise BenchError(f"{workdir} already holds a run: end_to_end trains from scratch")
    child = run_child(
        [sys.executable, "train.py", f"--config={spec}", f"--workdir={workdir}", *overrides],
        ctx.args.timeout,
    )
    if child.rc != 0:
        raise BenchError(child.failure())
    return {"workdir": workdir, "config": spec, "overrides": overrides, "cfg": cfg, "child": child}


def _bare_step(ctx: Context, spec: str, batch: int) -> dict[str, Any]:
    """bench/train_step.py's line for `spec` at `batch`, `--e2e_step_steps` timed steps."""
    cmd = _step_cmd(ctx, spec, batch, None, ctx.args.e2e_step_steps)
    return run_child(cmd, ctx.args.timeout).last_json()


def _e2e_figures(
    ctx: Context, t: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any]:
    """End-to-end pairs/s of a finished run against the bare step of the same config and batch.

    `e2e_pairs_per_s` counts the whole loop (compilation, pipeline, logging, validation,
    checkpoints); `sustained_pairs_per_s` the same without the first step (its compilation,
    which summary.json times apart as `first_step_s`), which a longer run amortises; `logged_*`
    leaves out the first logging interval. The bare step runs `--e2e_step_steps` steps right
    before the training (`before`) and again right after it; the ratios are to the mean of the
    two, since this machine's speed drifts by tens of percent within minutes. The sustained
    rate is compared with the steps' mean rate: both sides then average over noise alike (a
    median picks the quiet moments, which a minutes-long run does not have)."""
    child, cfg, spec = t["child"], t["cfg"], t["config"]
    steps, batch = ctx.args.e2e_steps, cfg.batch_size
    with open(os.path.join(t["workdir"], "summary.json")) as f:
        summary = json.load(f)
    loop_s = summary["wall_seconds"]
    logged = [float(m.group(3)) for m in TRAIN_LOG.finditer(child.stderr)]
    gathered = re.search(r"pairs gathered on the (\w+)\)", child.stderr)
    steady = logged[1:] or logged  # The first interval holds the compilation.
    bare = {
        k: statistics.mean([before[k], after[k]])
        for k in ("pairs_per_s", "pairs_per_s_mean", "first_step_s")
    }
    e2e = steps * batch / loop_s
    first_s = summary.get("time_breakdown", {}).get("first_step_s")
    sustained = (steps - 1) * batch / (loop_s - first_s) if first_s and steps > 1 else None
    logged_median = statistics.median(steady) if steady else None
    return {
        "config": spec,
        "dataset": cfg.dataset,
        "image_size": [cfg.image_height, cfg.image_width],
        "encoder": cfg.model.encoder,
        "dtype": cfg.model.dtype,
        "batch": batch,
        "steps": steps,
        "eval_every": ctx.args.e2e_every or max(steps // 2, 1),
        "e2e_pairs_per_s": e2e,
        "loop_s": loop_s,
        "process_s": child.wall_s,
        "setup_s": child.wall_s - loop_s,
        "process_pairs_per_s": steps * batch / child.wall_s,
        "logged_pairs_per_s_median": logged_median,
        "logged_pairs_per_s": [round(x) for x in logged],  # Every interval's, in order.
        # Where the loop's time went (train_lib's own clock): a host share near 0 means the
        # pipeline, validation and checkpoints never made the device wait long.
        "time_shares": {
            k.removesuffix("_s"): v / loop_s for k, v in summary.get("time_breakdown", {}).items()
        },
        "first_step_s": first_s,
        "sustained_pairs_per_s": sustained,
        "step_pairs_per_s": bare["pairs_per_s"],
        "step_pairs_per_s_mean": bare["pairs_per_s_mean"],
        "step_pairs_per_s_before_after": [before["pairs_per_s"], after["pairs_per_s"]],
        "step_steps": ctx.args.e2e_step_steps,
        "step_compile_s": bare["first_step_s"],
        "ratio_e2e_over_step": e2e / bare["pairs_per_s"],
        "ratio_sustained_over_step": sustained / bare["pairs_per_s_mean"] if sustained else None,
        "ratio_logged_over_step": logged_median / bare["pairs_per_s"] if logged_median else None,
        "peak_rss_mb": child.max_rss_mb,
        "val_eer": (summary.get("validation") or {}).get("eer"),
        "gathered_on": gathered.group(1) if gathered else None,
    }


def _e2e_runs(ctx: Context, name: str, spec: str, batch: int, first: Callable[[], dict]):
    """`--e2e_repeats` trainings, each between two bare runs (bare, train, bare, train, ...,
    bare; each bare run serves the trainings on both sides): a line per training, then, with
    repeats, one line of the ratios and their medians. One training's ratio moves by the
    machine's drift during its minute; the median over several is the figure to quote."""
    before = _bare_step(ctx, spec, batch)
    lines = []
    for k in range(ctx.args.e2e_repeats):
        t = first() if k == 0 else _train_once(ctx, spec, os.path.join(ctx.tmp, f"{name}_{k}"))
        after = _bare_step(ctx, spec, batch)
        lines.append(_e2e_figures(ctx, t, before, after))
        if ctx.args.e2e_repeats > 1:
            lines[-1]["repeat"] = k + 1
        yield (name, lines[-1])
        before = after
    if len(lines) > 1:
        keys = ("ratio_sustained_over_step", "ratio_e2e_over_step", "ratio_logged_over_step")
        yield (
            f"{name}_repeats",
            {
                "config": spec,
                "steps": ctx.args.e2e_steps,
                "repeats": len(lines),
                **{k: [line[k] for line in lines] for k in keys},
                **{f"{k}_median": _median_of([line[k] for line in lines]) for k in keys},
            },
        )


def _median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


@benchmark("end_to_end")
def bench_end_to_end(ctx: Context):
    spec, _, cfg = _e2e_setup(ctx)
    yield from _e2e_runs(ctx, "end_to_end", spec, cfg.batch_size, lambda: _train(ctx))


@benchmark("end_to_end_synthetic")
def bench_end_to_end_synthetic(ctx: Context):
    """The same for configs/synthetic.py when end_to_end ran another config (sigcomp)."""
    if _e2e_setup(ctx)[0] == "configs/synthetic.py":
        yield ("end_to_end_synthetic", {"skipped": "end_to_end already ran configs/synthetic.py"})
        return
    spec, _, cfg = _e2e_setup(ctx, "configs/synthetic.py")
    yield from _e2e_runs(
        ctx,
        "end_to_end_synthetic",
        spec,
        cfg.batch_size,
        lambda: _train_once(ctx, spec, os.path.join(ctx.tmp, "workdir_synthetic")),
    )
