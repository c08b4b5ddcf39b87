"""train_step and torch_reference: the bare jitted step (bench/train_step.py) and PyTorch's
reference step, each setting in its own process, alternated when repeated."""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

from suite.common import TORCH_MODES, BenchError, Context, benchmark, peak_flops_per_chip, run_child


def _step_cmd(
    ctx: Context, config: str, batch: int, dtype: str | None, steps: int | None = None
) -> list[str]:
    cmd = [sys.executable, "bench/train_step.py", f"--config={config}", f"--batch={batch}"]
    steps = steps or ctx.args.steps
    return cmd + [f"--steps={steps}"] + ([f"--dtype={dtype}"] if dtype else [])


def _step_figures(r: dict[str, Any]) -> dict[str, Any]:
    count, _, kind = r["device"].partition("x ")
    peak = peak_flops_per_chip(kind)
    mfu = r["tflops"] * 1e12 / (peak * int(count)) if peak and r.get("tflops") else None
    return {
        "pairs_per_s": r["pairs_per_s"],
        "step_s_median": r["step_s_median"],
        "step_s_min": r["step_s_min"],
        "step_s_max": r["step_s_max"],
        "compile_s": r["first_step_s"],
        "page_faults_per_step": r.get("page_faults_per_step"),
        "system_cpu_s_per_step": r.get("system_cpu_s_per_step"),
        "tflops": r["tflops"],
        "mfu": mfu,
        "peak_flops_per_chip": peak,
        "device": r["device"],
        "final_loss": r["final_loss"],
    }


def _train_step_and_torch(ctx: Context, step_lines: bool, torch_lines: bool):
    """siamjax then torch for each (batch, dtype), `--repeats` times, so that both sides of a
    ratio run in the same minutes."""
    a = ctx.args
    torch_skip, ref = None, a.torch_reference
    if torch_lines:
        version, why = ctx.torch()
        if not os.path.exists(ref):
            torch_skip = f"no torch reference at {ref} (--torch_reference)"
        elif version is None:
            torch_skip = f"torch is not importable by {a.torch_python} ({why})"
        if torch_skip:
            yield "torch_reference", {"skipped": torch_skip}
            torch_lines = False
    if not (step_lines or torch_lines):
        return
    for batch in a.batches:
        for dtype in a.dtypes:
            setting = {"config": a.train_config, "batch": batch, "dtype": dtype}
            mode = a.torch_bf16_mode if dtype == "bfloat16" else TORCH_MODES.get(dtype)
            torch_cmd = [a.torch_python, ref, "--batch", str(batch), "--steps", str(a.steps)]
            ours, theirs, ours_error, torch_error = [], [], None, None
            # siamjax then torch, `--repeats` times: both sides of each ratio see the same minute.
            for _ in range(a.repeats):
                try:
                    ours.append(
                        run_child(
                            _step_cmd(ctx, a.train_config, batch, dtype), a.timeout
                        ).last_json()
                    )
                except BenchError as e:
                    ours_error = str(e)
                if torch_lines and mode is not None:
                    try:
                        theirs.append(
                            run_child(torch_cmd + ["--mode", mode], a.timeout).last_json()
                        )
                    except BenchError as e:
                        torch_error = str(e)
            if step_lines:
                if ours:
                    yield "train_step", {**setting, **_repeated(ours, _step_figures)}
                else:
                    yield "train_step", {**setting, "error": ours_error}
            if not torch_lines:
                continue
            if mode is None:
                yield "torch_reference", {**setting, "skipped": f"no torch mode for {dtype}"}
                continue
            if not theirs:
                yield "torch_reference", {**setting, "mode": mode, "error": torch_error}
                continue
            peak = (
                peak_flops_per_chip(ctx.header["machine"]["gpu"])
                if theirs[0]["device"] == "cuda"
                else None
            )
            t = _repeated(theirs, lambda r: r)
            mine = statistics.median(r["pairs_per_s"] for r in ours) if ours else None
            paired = [
                o["pairs_per_s"] / r["pairs_per_s"] for o, r in zip(ours, theirs, strict=False)
            ]
            yield (
                "torch_reference",
                {
                    **setting,
                    "mode": mode,
                    "torch_pairs_per_s": t["pairs_per_s"],
                    "torch_pairs_per_s_runs": t.get("pairs_per_s_runs"),
                    "torch_step_s_median": t["step_s_median"],
                    "torch_compile_s": t["first_step_s"],
                    "torch_tflops": t["tflops"],
                    "torch_mfu": t["tflops"] * 1e12 / peak if peak and t["tflops"] else None,
                    "torch_device": t["device"],
                    "torch_version": t.get("torch"),
                    "siamjax_pairs_per_s": mine,
                    # Ratio of the medians; with --repeats > 1 also each back-to-back pair's.
                    "ratio_siamjax_over_torch": mine / t["pairs_per_s"] if mine else None,
                    **({"ratio_runs": paired} if a.repeats > 1 else {}),
                    **({"siamjax_error": ours_error} if ours_error else {}),
                },
            )


def _repeated(runs: list[dict[str, Any]], figures) -> dict[str, Any]:
    """The figures of the run with the median pairs/s; with several runs, all their pairs/s."""
    ranked = sorted(runs, key=lambda r: r["pairs_per_s"])
    out = figures(ranked[(len(ranked) - 1) // 2])
    if len(runs) > 1:
        out = {**out, "pairs_per_s_runs": [r["pairs_per_s"] for r in runs]}
        out["pairs_per_s"] = statistics.median(r["pairs_per_s"] for r in runs)
    return out


@benchmark("train_step")
def bench_train_step(ctx: Context):
    yield from _train_step_and_torch(ctx, True, "torch_reference" in ctx.selected)


@benchmark("torch_reference")
def bench_torch_reference(ctx: Context):
    if "train_step" not in ctx.selected:  # Else measured interleaved by train_step.
        yield from _train_step_and_torch(ctx, False, True)
