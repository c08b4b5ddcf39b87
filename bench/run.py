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
import csv
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Children get the environment as it was; this process only grows its device memory on demand.
CHILD_ENV = dict(os.environ)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIGNET_GFLOP_PER_PAIR = 7.23  # Forward + backward, bench/torch_reference.py's count.
# Dense bf16 peak FLOP/s per chip, by a substring of the JAX device kind (first match wins).
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
)
TORCH_MODES = {"float32": "eager-fp32", "bfloat16": "eager-bf16-cl"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TRAIN_LOG = re.compile(r"step (\d+)/(\d+): .*\| ([\d.]+) pairs/s")  # train_lib's log line.


def log(msg: str, *args: Any) -> None:
    """Progress on stderr; stdout carries only the JSON lines."""
    print(
        f"[bench {time.strftime('%H:%M:%S')}] " + (msg % args if args else msg),
        file=sys.stderr,
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# Where a line was measured


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    cpu = value.strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        info["memory_gb"] = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    info["gpu"] = gpus[0].device_kind if gpus else None
    info["gpu_count"] = len(gpus)
    info["jax_backend"] = jax.default_backend()
    return info


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(torch_version: str | None) -> dict[str, Any]:
    out = {"python": platform.python_version()}
    for dist in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax-checkpoint",
        "tensorflow-cpu",
        "tensorflow",
    ):
        v = _version(dist)
        if v:
            out[dist] = v
    out["torch"] = torch_version
    return out


def commit_info() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "dirty_files": len(status.splitlines()) if status else 0,
    }


def peak_flops_per_chip(device_kind: str | None) -> float | None:
    for key, peak in PEAK_BF16_FLOPS:
        if device_kind and key in device_kind:
            return peak
    return None


# ---------------------------------------------------------------------------------------------
# Subprocesses


@dataclasses.dataclass
class Child:
    cmd: list[str]
    rc: int
    wall_s: float  # Process start to exit.
    max_rss_mb: float  # Peak resident memory of the process (and children it waited for).
    stdout: list[tuple[float, str]]  # (seconds since start, line)
    stderr: str
    timed_out: bool = False

    def json_lines(self) -> list[tuple[float, dict]]:
        out = []
        for t, line in self.stdout:
            if line.startswith("{"):
                try:
                    out.append((t, json.loads(line)))
                except json.JSONDecodeError:
                    pass
        return out

    def last_json(self) -> dict:
        lines = self.json_lines()
        if self.rc != 0 or not lines:
            raise BenchError(self.failure())
        return lines[-1][1]

    def failure(self) -> str:
        what = "timed out" if self.timed_out else f"exited {self.rc}"
        tail = "\n".join(self.stderr.strip().splitlines()[-12:])
        return f"{' '.join(self.cmd)} {what}: {tail}"


class BenchError(Exception):
    """A benchmark could not measure; its message goes into the line's `error`."""


def run_child(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> Child:
    """Runs `cmd` in the repo root; stdout lines are timestamped as they arrive and the peak RSS
    is the kernel's own (wait4's rusage of exactly this child)."""
    log("$ %s", " ".join(cmd))
    env = dict(CHILD_ENV if env is None else env)
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        lines: list[tuple[float, str]] = []

        def read() -> None:
            for line in p.stdout:
                lines.append((time.perf_counter() - t0, line.rstrip("\n")))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            p.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except BaseException:  # Interrupted: leave no child behind.
            timer.cancel()
            p.kill()
            p.wait()
            raise
        wall = time.perf_counter() - t0
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        p.stdout.close()
        err.seek(0)
        stderr = err.read()
    return Child(cmd, p.returncode, wall, usage.ru_maxrss / 1024, lines, stderr, killed.is_set())


# ---------------------------------------------------------------------------------------------
# The run


def load_config(spec: str):
    """`configs/x.py[:variant]` (relative to the repo root) -> its ConfigDict."""
    path, _, variant = spec.partition(":")
    full = path if os.path.isabs(path) else os.path.join(REPO, path)
    if not os.path.exists(full):
        raise BenchError(f"config file {full} does not exist")
    module_spec = importlib.util.spec_from_file_location("_bench_config", full)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant)


def real_data_dir() -> str | None:
    """$SIAMJAX_DATA_DIR when it holds sigcomp2011/, else None (then synthetic data is used)."""
    d = os.environ.get("SIAMJAX_DATA_DIR", "")
    return d if d and os.path.isdir(os.path.join(d, "sigcomp2011")) else None


class Context:
    """Arguments, the per-line header, and what one benchmark leaves for the next (a workdir)."""

    def __init__(self, args: argparse.Namespace, selected: list[str], stream):
        self.args, self.selected, self.stream = args, selected, stream
        self.failed = False
        self.tmp = tempfile.mkdtemp(prefix="siamjax_bench_")
        self._torch: tuple[str | None, str] | None = None
        self._tf_hidden = False
        self.trained: dict[str, Any] | None = None  # workdir, config spec, overrides, Child
        self.train_error: str | None = None  # Not trained twice when it failed once.
        log("machine and versions ...")
        self.header = {
            "machine": machine_info(),
            "versions": versions(self.torch()[0]),
            "commit": commit_info(),
            # Settings read from the environment that change the figures (siamjax.host_memory).
            "env": {k: os.environ.get(k) for k in ("SIAMJAX_MALLOC_TUNING", "XLA_FLAGS")},
        }

    def emit(self, name: str, figures: dict[str, Any]) -> None:
        line = {
            "benchmark": name,
            **figures,
            **self.header,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        if "error" in figures:
            self.failed = True
        text = json.dumps(line)
        print(text, file=self.stream, flush=True)
        if self.args.out:
            with open(self.args.out, "a") as f:
                f.write(text + "\n")

    def torch(self) -> tuple[str | None, str]:
        """(torch version or None, why not) as seen by --torch_python; asked once."""
        if self._torch is None:
            try:
                r = subprocess.run(
                    [self.args.torch_python, "-c", "import torch; print(torch.__version__)"],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                ok = r.returncode == 0
                why = "" if ok else (r.stderr.strip().splitlines() or ["?"])[-1]
                self._torch = (r.stdout.strip() if ok else None, why)
            except (OSError, subprocess.TimeoutExpired) as e:
                self._torch = (None, str(e))
        return self._torch

    def tfds_overrides(self) -> list[str]:
        """Children prepare datasets under $SIAMJAX_TFDS_DIR, else in this run's temp dir."""
        if os.environ.get("SIAMJAX_TFDS_DIR"):
            return []
        return [f"--config.tfds_data_dir={os.path.join(self.tmp, 'tfds')}"]

    def hide_gpus_from_tensorflow(self) -> None:
        if not self._tf_hidden:
            from siamjax import cli

            cli.hide_gpus_from_tensorflow()
            self._tf_hidden = True

    def close(self) -> None:
        if self.args.keep_workdir:
            log("temp files kept in %s", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Benchmarks, in run order. Each yields (name, figures) lines.
#
# To add one (e.g. `layouts`, several processes or mesh shapes, which another change brings),
# write a generator `bench_<name>(ctx)` and decorate it with @benchmark("<name>"): --only and
# --list then know it. Put it before eval_embed so that it runs before the in-process ones.

BENCHMARKS: dict[str, Callable[[Context], Iterator[tuple[str, dict[str, Any]]]]] = {}


def benchmark(name: str):
    def register(fn):
        BENCHMARKS[name] = fn
        return fn

    return register


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


@benchmark("eval_rss")
def bench_eval_rss(ctx: Context):
    t = _workdir(ctx)
    child = run_child(
        [
            sys.executable,
            "eval.py",
            f"--config={t['config']}",
            f"--workdir={t['workdir']}",
            *t["overrides"],
        ],
        ctx.args.timeout,
    )
    if child.rc != 0:
        raise BenchError(child.failure())
    metrics_path = os.path.join(t["workdir"], "eval", "test", "metrics.json")
    eer = None
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            eer = json.load(f).get("metrics", {}).get("eer")
    yield (
        "eval_rss",
        {
            "config": t["config"],
            "split": "test",
            "peak_rss_mb": child.max_rss_mb,
            "wall_s": child.wall_s,
            "eer": eer,
        },
    )


def _verify_images(ctx: Context) -> tuple[list[str], str]:
    """Scans as users have them (the originals), else PNGs drawn by siamjax.synthetic."""
    root = ctx.args.verify_images
    files = []
    if root and os.path.isdir(root):
        for d, _, names in os.walk(root):
            files += [os.path.join(d, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    if len(files) >= 2:
        return sorted(files), root
    from PIL import Image

    from siamjax import synthetic

    out = os.path.join(ctx.tmp, "verify_images")
    os.makedirs(out, exist_ok=True)
    for w in range(4):
        writer = synthetic.make_writer(0, w)
        for g in range(8):
            img = synthetic.render_genuine(writer, g, 300, 440, 0, w)[..., 0]
            path = os.path.join(out, f"w{w}_{g}.png")
            Image.fromarray(255 - img).save(path)  # Dark ink on paper, as a scan.
            files.append(path)
    return files, "siamjax.synthetic"


@benchmark("verify")
def bench_verify(ctx: Context):
    t = _workdir(ctx)
    files, source = _verify_images(ctx)
    env = {**CHILD_ENV, "PYTHONUNBUFFERED": "1"}  # Each decision line arrives when printed.
    base = [sys.executable, "-m", "siamjax.verify", "--workdir", t["workdir"], "--json"]
    cold = run_child(
        base + ["--reference", files[0], "--questioned", files[1]], ctx.args.timeout, env
    )
    decided = [tl for tl in cold.json_lines() if "decision" in tl[1]]
    if cold.rc != 0 or not decided:
        raise BenchError(cold.failure())
    cold_s = decided[0][0]
    n = ctx.args.verify_pairs
    csv_path = os.path.join(ctx.tmp, "verify_pairs.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "reference", "questioned"])
        for i in range(n):
            w.writerow([f"p{i}", files[(2 * i) % len(files)], files[(2 * i + 1) % len(files)]])
    warm = run_child(base + ["--pairs", csv_path], ctx.args.timeout, env)
    decided = [tl for tl in warm.json_lines() if "decision" in tl[1]]
    if warm.rc != 0 or len(decided) != n:
        raise BenchError(f"{len(decided)} of {n} pairs decided; " + warm.failure())
    last = decided[-1][0]
    distinct = len({files[j % len(files)] for j in range(2 * n)})
    yield (
        "verify",
        {
            "config": t["config"],
            "images": source,
            "cold_start_s": cold_s,
            "cold_wall_s": cold.wall_s,
            "cold_peak_rss_mb": cold.max_rss_mb,
            "pairs": n,
            "distinct_files": distinct,
            "pairs_first_to_last_decision_s": last,
            "warm_pairs_per_s": n / (last - cold_s) if last > cold_s else None,
            "pairs_peak_rss_mb": warm.max_rss_mb,
        },
    )


def _load_sibling(name: str):
    """bench/<name>.py as a module (bench/ is a folder of scripts, not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"siamjax_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@benchmark("layouts")
def bench_layouts(ctx: Context):
    """Training pairs/s of 1x1, 1x8 and 2x4 (processes x devices) on simulated CPU devices."""
    for r in _load_sibling("layouts").bench_layouts(steps=ctx.args.layout_steps):
        yield ("layouts", r)


@benchmark("eval_memory")
def bench_eval_memory(ctx: Context):
    """Peak RSS of scoring 1k, 10k and 100k pairs over cached embeddings: flat by design."""
    for r in _load_sibling("eval_memory").bench_eval_memory():
        yield ("eval_memory", r)


@benchmark("eval_embed")
def bench_eval_embed(ctx: Context):
    a = ctx.args
    ctx.hide_gpus_from_tensorflow()
    import jax
    import numpy as np

    from siamjax import inference, models, parallel, train_lib

    cfg = load_config(a.eval_config)
    if a.eval_dtype:
        cfg.model.dtype = a.eval_dtype
    cfg.eval_batch_size = a.eval_batch
    mesh = parallel.make_mesh()
    model = models.create_model(cfg.model)
    state, _ = train_lib.init_state_on_mesh(cfg, model, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    scorer = inference.Scorer(model, mesh, cfg.eval_batch_size)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (a.eval_images, cfg.image_height, cfg.image_width, 1), np.uint8)
    t0 = time.perf_counter()
    emb = scorer.embeddings(variables, images[: cfg.eval_batch_size])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(a.eval_repeats):
        t0 = time.perf_counter()
        emb = scorer.embeddings(variables, images)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    yield (
        "eval_embed",
        {
            "config": a.eval_config,
            "encoder": cfg.model.encoder,
            "dtype": cfg.model.dtype,
            "image_size": [cfg.image_height, cfg.image_width],
            "eval_batch_size": cfg.eval_batch_size,
            "images": a.eval_images,
            "repeats": a.eval_repeats,
            "embeddings_per_s": a.eval_images / med,
            "seconds_median": med,
            "compile_s": compile_s,
            "embedding_dim": int(emb.shape[1]),
            "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        },
    )


@benchmark("input_pipeline")
def bench_input_pipeline(ctx: Context):
    a = ctx.args
    ctx.hide_gpus_from_tensorflow()
    from siamjax.data import Data
    from siamjax.datasets import registry
    from siamjax.input_pipeline import TrainData

    data_dir = real_data_dir()
    spec = a.pipeline_config or ("configs/sigcomp.py" if data_dir else "configs/synthetic.py")
    cfg = load_config(spec)
    if not os.environ.get("SIAMJAX_TFDS_DIR"):
        cfg.tfds_data_dir = os.path.join(ctx.tmp, "tfds")
    if a.pipeline_batch:
        cfg.batch_size = a.pipeline_batch
    t0 = time.perf_counter()
    train = TrainData(Data(cfg), cfg)
    setup_s = time.perf_counter() - t0
    batches = train.batches()
    t0 = time.perf_counter()
    next(batches)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.pipeline_batches):
        next(batches)
    seconds = time.perf_counter() - t0
    yield (
        "input_pipeline",
        {
            "config": spec,
            "dataset": cfg.dataset,
            "data_dir": (cfg.data_dir or data_dir) if cfg.dataset != "synthetic" else None,
            "tfds_dir": registry.tfds_data_dir(cfg),
            "images": len(train.data.catalog.images),
            # device: batches of indices (the step gathers the images); host: of images.
            "gathered_on": "device" if train.on_device else "host",
            "image_size": [cfg.image_height, cfg.image_width],
            "batch": cfg.batch_size,
            "batches": a.pipeline_batches,
            "steps_per_epoch": train.steps_per_epoch,
            "pairs_per_s": a.pipeline_batches * cfg.batch_size / seconds,
            "seconds": seconds,
            "setup_s": setup_s,
            "first_batch_s": first_s,
        },
    )


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
