"""train.py and eval.py as a user runs them: subprocesses, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/synthetic.py:tiny"


def _run(*args, tfds_dir, timeout=600):
    env = dict(
        os.environ, SIAMJAX_TFDS_DIR=str(tfds_dir), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"
    )
    env["XLA_FLAGS"] = ""  # One CPU device, as a user has.
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_train_then_eval(tmp_path, tfds_dir):
    wd = tmp_path / "run"
    r = _run("train.py", TINY, f"--workdir={wd}", tfds_dir=tfds_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validation: EER" in r.stderr and "pairs/s" in r.stderr and "ETA" in r.stderr
    summary = json.loads((wd / "summary.json").read_text())
    spent = summary["time_breakdown"]
    assert set(spent) == {"first_step_s", "input_s", "validation_s", "checkpoint_s", "steps_s"}
    assert all(v >= 0 for v in spent.values()) and spent["validation_s"] > 0
    assert spent["first_step_s"] > 0  # It compiles: never free.
    assert sum(spent.values()) == pytest.approx(summary["wall_seconds"])
    r = _run("eval.py", TINY, f"--workdir={wd}", tfds_dir=tfds_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((wd / "eval" / "test" / "metrics.json").read_text())
    for key in ("accuracy", "eer", "auc"):
        assert 0.0 <= doc["metrics"][key] <= 1.0
    assert doc["checkpoint_step"] in (6, 12)
    for name in ("scores.csv", "roc.png", "det.png", "histograms.png", "worst_pairs.png"):
        assert (wd / "eval" / "test" / name).stat().st_size > 0
    assert "eer" in r.stdout


def _one_line_error(r, *needles):
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines, "no error message"
    assert any(all(n in ln for n in needles) for ln in lines[-2:]), r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]


def test_missing_config_file(tmp_path, tfds_dir):
    r = _run("train.py", "--config=configs/nope.py", f"--workdir={tmp_path}", tfds_dir=tfds_dir)
    _one_line_error(r, "configs/nope.py")


def test_unknown_config_key(tmp_path, tfds_dir):
    r = _run(
        "train.py", TINY, "--config.model.no_such_key=3", f"--workdir={tmp_path}", tfds_dir=tfds_dir
    )
    _one_line_error(r, "no_such_key")
    assert not os.listdir(tmp_path)


def test_eval_of_an_empty_workdir(tmp_path, tfds_dir):
    r = _run("eval.py", TINY, f"--workdir={tmp_path}", tfds_dir=tfds_dir)
    _one_line_error(r, "error:", "checkpoint")
    assert r.returncode == 2
