"""scripts/results_table.py on a made-up results tree, and on the repository's own results/."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


results_table = _load("results_table")
run_result = _load("run_result")

README = f"""# project

## Results

{results_table.MARKER_START}
{results_table.MARKER_END}

## After
kept as it is
"""


def _write_run(root, row, run, metrics, info):
    d = root / row / run
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"metrics": metrics, "references": 1}))
    (d / "run.json").write_text(json.dumps(info))


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    results, runs = tmp_path / "results", {}
    for row, n, order in (("b_cedar_kfold", 3, 0), ("a_sigcomp", 2, None)):
        runs[row] = []
        for i in range(n):
            metrics = {k: float(rng.uniform(0.01, 0.99)) for k in results_table.METRICS}
            if row == "a_sigcomp" and i == 0:
                metrics["eer_random"] = None  # NaN in eval.py's output: left out of the stats.
            info = {
                "dataset": row.split("_")[1],
                "protocol": "kfold 5" if order == 0 else "writer-disjoint 70/15/15",
                "config": "configs/x.py",
                "references": 1,
                "hardware": "1x H100",
                "seed": i,
                "wall_seconds": float(rng.uniform(10, 99)),
            }
            if order is not None:
                info["order"] = order
            _write_run(results, row, f"run{i}", metrics, info)
            runs[row].append({**metrics, "wall_seconds": info["wall_seconds"]})
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return results, readme, runs


def test_means_stds_order_and_check(tree):
    results, readme, runs = tree
    args = ["--results", str(results), "--readme", str(readme)]
    assert results_table.main([*args, "--check"]) == 1  # Nothing built yet.
    assert results_table.main(args) == 0
    table = json.loads((results / "table.json").read_text())
    assert [e["row"] for e in table] == ["b_cedar_kfold", "a_sigcomp"]  # `order` first.
    for entry in table:
        rows = runs[entry["row"]]
        assert entry["runs"] == len(rows)
        for key in results_table.STATS:
            xs = np.array([r[key] for r in rows if r[key] is not None])
            assert entry[f"{key}_mean"] == pytest.approx(xs.mean(), abs=1e-6)
            if len(xs) > 1:
                assert entry[f"{key}_std"] == pytest.approx(xs.std(ddof=1), abs=1e-6)
            else:
                assert entry[f"{key}_std"] is None
    text = readme.read_text()
    assert text.startswith("# project") and text.endswith("## After\nkept as it is\n")
    eer = table[0]
    assert f"{100 * eer['eer_mean']:.2f} ± {100 * eer['eer_std']:.2f}" in text
    assert "| b_cedar_kfold | cedar | kfold 5 |" in text

    assert results_table.main([*args, "--check"]) == 0
    (results / "a_sigcomp" / "run1" / "metrics.json").write_text(
        json.dumps({"metrics": {"eer": 0.5}})
    )
    assert results_table.main([*args, "--check"]) == 1
    assert results_table.main(args) == 0
    readme.write_text(readme.read_text().replace("| b_cedar_kfold |", "| tampered |"))
    assert results_table.main([*args, "--check"]) == 1


def test_missing_markers_name_the_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(SystemExit, match="README.md needs the lines"):
        results_table.main(["--results", str(tmp_path / "results"), "--readme", str(readme)])


def test_the_repository_table_is_up_to_date(capsys):
    assert results_table.main(["--check"]) == 0, capsys.readouterr().out


def test_protocol_names():
    split = {"method": "fractions", "val_fraction": 0.15, "test_fraction": 0.15, "num_folds": 5}
    cfg = {"dataset": "sigcomp2011", "split": split, "eval": {"dataset": ""}}
    assert run_result.protocol_of(cfg) == "writer-disjoint 70/15/15"
    assert run_result.protocol_of({**cfg, "split": {**split, "method": "kfold"}}) == "kfold 5"
    assert "leaking" in run_result.protocol_of({**cfg, "split": {**split, "method": "kaggle_csv"}})
    cross = run_result.protocol_of({**cfg, "eval": {"dataset": "cedar"}})
    assert cross.startswith("cross-dataset") and "sigcomp2011" in cross
    # Trained on several datasets, evaluated on one of them: not across datasets.
    joint = run_result.protocol_of(
        {**cfg, "dataset": "cedar+sigcomp2011", "eval": {"dataset": "cedar"}}
    )
    assert joint == "trained on cedar+sigcomp2011; writer-disjoint 70/15/15"
    other = run_result.protocol_of(
        {**cfg, "dataset": "cedar+sigcomp2011", "eval": {"dataset": "gpds"}}
    )
    assert other.startswith("cross-dataset")
