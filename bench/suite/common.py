"""What bench/run.py's benchmarks share: where a line was measured (machine, versions, commit),
children run in processes of their own, the context a run carries, and the registry of benchmarks
(`@benchmark`, in run order)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
            from siamjax import entry

            entry.hide_gpus_from_tensorflow()
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
