"""siamjax.host_memory: with its malloc settings, a process reuses large freed blocks instead of
page-faulting them in anew (what XLA:CPU's per-step buffers need)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from siamjax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, writes and frees a 96 MiB block 5 times; prints the page faults of the last 4.
# (Not with numpy: it asks for transparent huge pages, which hide most faults.)
CHILD = """
import ctypes, json, resource
from siamjax import host_memory
applied = host_memory.apply()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 96 * 2**20
def cycle():  # As XLA:CPU's buffers: malloc, every page written, free.
    p = libc.malloc(SIZE)
    ctypes.memset(p, 1, SIZE)
    libc.free(p)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    cycle()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"applied": applied, "faults_per_cycle": (after - before) / 4}))
"""


def _child(switch: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{host_memory.ENV_SWITCH: switch})
    r = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_large_blocks_are_reused_instead_of_faulted_in_again():
    pages = 96 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    plain, tuned = _child("0"), _child("1")
    assert not plain["applied"] and tuned["applied"]
    # glibc's default maps each 96 MiB block anew: every page faults in again on every cycle.
    assert plain["faults_per_cycle"] > 0.9 * pages
    # With the settings the block comes back from the arena, already mapped.
    assert tuned["faults_per_cycle"] < 0.01 * pages


def test_the_switch_accelerators_and_other_platforms_leave_malloc_alone(monkeypatch):
    assert host_memory.apply({host_memory.ENV_SWITCH: "0"}) is False
    assert host_memory.apply({"JAX_PLATFORMS": "cuda"}) is False
    assert host_memory.apply({"JAX_PLATFORMS": "tpu,cpu"}) is False
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: name == "libtpu")
    assert host_memory.apply({}) is False
    monkeypatch.undo()
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert host_memory.apply({}) is False
