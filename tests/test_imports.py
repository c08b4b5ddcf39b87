"""The package's import graph, read from the source: no cycle anywhere (imports inside functions
included), data flowing one way (verification never reaches training or the metrics; the
protocol never reaches TensorFlow), and builders and TensorFlow loaded only when a dataset is."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "siamjax"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(siamjax modules, top-level outside packages) that module `name` imports anywhere in its
    body, functions included; `if TYPE_CHECKING:` blocks, which never run, left out."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, theirs = set(), set()

    def add(target: str) -> None:
        if target == "siamjax" or target.startswith("siamjax."):
            while target not in MODULES:  # `import siamjax.a.b.attr`: the module that holds it.
                target = target.rpartition(".")[0]
            ours.add(target)
        else:
            theirs.add(target.partition(".")[0])

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in MODULES else base)  # A submodule, or a name in `base`.
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    ours.discard(name)
    return ours, theirs


GRAPH = {name: _imports(name)[0] for name in MODULES}
EXTERNAL = {name: _imports(name)[1] for name in MODULES}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done.
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_the_graph_is_read_whole():
    """Lazy imports count: the registry names its builders inside a function."""
    assert (
        "siamjax.datasets.synthetic.synthetic_dataset_builder" in GRAPH["siamjax.datasets.registry"]
        and "siamjax.inference" in GRAPH["siamjax.verify.lib"]
    )  # Imported inside a method.


def test_the_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "module, banned",
    [
        # Verification, and the workdir it reads, never reach training or the metrics.
        ("siamjax.verify", {"siamjax.metrics", "siamjax.train_lib", "siamjax.train_state"}),
        ("siamjax.workdir", {"siamjax.train_lib", "siamjax.train_state", "siamjax.input_pipeline"}),
        ("siamjax.inference", {"siamjax.train_lib", "siamjax.train_state", "siamjax.metrics"}),
        # Evaluation never imports the trainer or the tf.data pipeline.
        (
            "siamjax.eval_lib",
            {"siamjax.train_lib", "siamjax.train_state", "siamjax.input_pipeline"},
        ),
    ],
)
def test_data_flows_one_way(module, banned):
    reached = _reach(module) | {
        m for m in MODULES if m.startswith(module + ".") for m in _reach(m) | {m}
    }
    assert not reached & banned, f"{module} reaches {sorted(reached & banned)}"


@pytest.mark.parametrize("module", ["siamjax.pairs", "siamjax.scoring", "siamjax.evaluation"])
def test_the_protocol_and_the_score_maths_need_no_tensorflow_nor_jax(module):
    used = EXTERNAL[module].union(*(EXTERNAL[m] for m in _reach(module)))
    assert not used & {"tensorflow", "tensorflow_datasets", "jax", "flax"}, sorted(used)


def test_only_input_pipeline_uses_tf_data():
    users = {m for m, ext in EXTERNAL.items() if "tensorflow" in ext}
    # The pipeline; process setup (hides GPUs from TF); the real-scan builders' shared base.
    assert users == {"siamjax.input_pipeline", "siamjax.entry", "siamjax.datasets.real"}, users


def test_importing_data_and_eval_loads_neither_tensorflow_nor_a_builder():
    """A dataset's builder (and TensorFlow) are imported when a config names it and it is loaded,
    not by importing the modules that could."""
    code = (
        "import sys\n"
        "import siamjax.data, siamjax.eval_lib, siamjax.datasets.registry\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', "
        "'tensorflow_datasets') or m.endswith('_dataset_builder') or m.endswith('kaggle'))\n"
        "print(bad)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]", r.stdout
