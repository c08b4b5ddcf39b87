"""scripts/select_recipe.py: split arguments, and the line it logs, with training and evaluation
replaced by stand-ins that write what train.py and eval.py would."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "select_recipe", os.path.join(ROOT, "scripts", "select_recipe.py")
)
select_recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(select_recipe)


def test_split_arguments():
    assert select_recipe.split_args("fold3") == [
        "--config.split.method=kfold",
        "--config.split.fold=3",
    ]
    assert select_recipe.split_args("seed2") == ["--config.seed=2"]
    with pytest.raises(SystemExit, match="foldN"):
        select_recipe.split_args("test")


def test_logs_the_mean_validation_eer_over_splits(tmp_path, monkeypatch):
    eers = {"fold0": (0.30, 0.20), "fold1": (0.20, 0.10), "fold2": (0.25, 0.30)}
    commands = []

    def fake_run(cmd, log_path):
        commands.append(cmd)
        workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
        split = os.path.basename(workdir)
        if cmd[1] == "train.py":
            with open(os.path.join(workdir, "summary.json"), "w") as f:
                json.dump({"wall_seconds": 60.0}, f)
            return
        assert "--split=validation" in cmd  # Never the test writers.
        out = os.path.join(workdir, "eval", "cedar_validation")
        os.makedirs(out)
        skilled, random = eers[split]
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(
                {
                    "metrics": {"eer": skilled, "eer_random": random, "auc": 0.8},
                    "checkpoint_step": 300,
                },
                f,
            )

    monkeypatch.setattr(select_recipe, "_run", fake_run)
    # A commit lands while the candidate trains: the line names the one it started at.
    commits = iter([("started", False), ("later", False)])
    monkeypatch.setattr(select_recipe, "git_commit", lambda: next(commits))
    log = tmp_path / "selection.jsonl"
    select_recipe.main(
        [
            "--name",
            "cand",
            "--workdirs",
            str(tmp_path / "w"),
            "--log",
            str(log),
            "--",
            "--config=configs/cedar_best.py",
            "--config.eval.dataset=cedar",
        ]
    )
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["splits"] == ["fold0", "fold1", "fold2"]
    assert line["mean_eer"] == pytest.approx(0.25)
    assert line["mean_eer_random"] == pytest.approx(0.20)
    assert line["score"] == pytest.approx(0.225)
    assert [r["checkpoint_step"] for r in line["runs"]] == [300] * 3
    assert sum(c[1] == "train.py" for c in commands) == 3
    assert (line["commit"], line["commit_dirty"], line["commit_finished"]) == (
        "started",
        False,
        "later",
    )
