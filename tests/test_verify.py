"""siamjax.verify on a workdir trained for a few steps: the CLI as a user runs it (subprocesses) and
the Verifier API in-process (most tests: no start-up cost)."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from siamjax import verify
from siamjax.datasets.synthetic import generator as synthetic
from siamjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DECISION_KEYS = {
    "enrollment",
    "questioned",
    "references",
    "reference_scores",
    "fusion",
    "score",
    "llr",
    "prior_positive",
    "threshold",
    "decision",
    "checkpoint_step",
}


@pytest.fixture(scope="module")
def workdir(tiny_run) -> str:
    return tiny_run[1]


def _scan(writer: int, index: int) -> Image.Image:
    """A synthetic signature as a scan looks: dark ink on white paper, with a margin."""
    ink = synthetic.render_genuine(synthetic.make_writer(5, writer), index, 90, 150, 5, writer)
    page = np.full((130, 210), 255, np.uint8)
    page[20:110, 30:180] = 255 - ink[..., 0]
    return Image.fromarray(page)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of a few bytes whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))  # Only the first row; the rest never decodes.
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Good scans (writer A: a0..a2, writer B: b0) and every kind of bad file, by name."""
    d = tmp_path_factory.mktemp("verify_files")
    for i in range(3):
        _scan(0, i).save(d / f"a{i}.png")
    _scan(1, 0).convert("RGB").save(d / "b0.png")
    Image.new("L", (210, 130), 250).save(d / "blank.png")
    (d / "text.png").write_text("not an image\n")
    good = (d / "a0.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "bomb.png").write_bytes(_bomb_png(12_000, 12_000))  # Over the 100-megapixel limit.
    names = ["a0", "a1", "a2", "b0", "blank", "text", "truncated", "bomb"]
    out = {n: str(d / f"{n}.png") for n in names}
    out["missing"] = str(d / "missing.png")
    out["dir"] = str(d)
    return out


@pytest.fixture(scope="module")
def verifier(workdir) -> verify.Verifier:
    return verify.Verifier(workdir)


def _cli(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # 1 device.
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # The tool must keep TF quiet by itself.
    return subprocess.run(
        [sys.executable, "-m", "siamjax.verify", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _saved_meta(workdir: str, step: int) -> dict:
    from siamjax import checkpointing

    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        return ckpt.restore_meta(step)
    finally:
        ckpt.close()


def test_cli_single_pair_json(workdir, files):
    r = _cli(
        "--workdir",
        workdir,
        "--reference",
        "a0.png",
        "--questioned",
        "a1.png",
        "--json",
        cwd=files["dir"],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.strip().splitlines()) == 1  # Nothing but the JSON object on stdout.
    d = json.loads(r.stdout)
    assert set(d) == DECISION_KEYS
    assert d["questioned"] == "a1.png" and d["references"] == ["a0.png"]  # Relative to cwd.
    assert 0.0 <= d["score"] <= 1.0 and d["reference_scores"] == [d["score"]]
    assert d["decision"] == ("genuine" if d["score"] >= d["threshold"] else "forged")
    meta = _saved_meta(workdir, d["checkpoint_step"])
    assert d["threshold"] == pytest.approx(meta["val_threshold"])
    assert d["prior_positive"] == pytest.approx(meta["prior_positive"])
    assert d["llr"] == pytest.approx(_logit(d["score"]) - _logit(d["prior_positive"]), abs=1e-6)


def test_cli_never_imports_tensorflow(workdir, files):
    """A decision needs no data pipeline: TensorFlow (seconds of start-up) is never loaded; nor
    the train state (an optimiser) nor the metrics."""
    argv = ["--workdir", workdir, "--reference", files["a0"], "--questioned", files["a1"], "--json"]
    code = (
        "import sys\n"
        "from siamjax.verify import cli\n"
        f"rc = cli.main({argv!r})\n"
        "banned = ('tensorflow', 'tensorflow_datasets', 'siamjax.train_lib', "
        "'siamjax.input_pipeline', 'siamjax.train_state', 'siamjax.metrics')\n"
        "loaded = sorted(m for m in sys.modules "
        "if any(m == b or m.startswith(b + '.') for b in banned))\n"
        "print('LOADED', loaded)\n"
        "sys.exit(rc)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    decision, loaded = r.stdout.strip().splitlines()
    assert json.loads(decision)["decision"] in ("genuine", "forged")
    assert loaded == "LOADED []", loaded


def test_scores_equal_the_full_model_on_the_preprocessed_pair(workdir, verifier, files):
    """Embedding once, padding and the head on cached embeddings change nothing; the reference
    goes first, as in training."""
    import jax

    from siamjax import parallel
    from siamjax import workdir as workdir_lib
    from siamjax.preprocess import preprocess_file

    cfg = verify.load_config(workdir)
    model, variables, _, _ = workdir_lib.restore(
        cfg, workdir, None, parallel.make_mesh(jax.devices()[:1])
    )
    a, b = (
        np.stack([preprocess_file(files[n], cfg.image_height, cfg.image_width)])
        for n in ("a0", "b0")
    )
    for ref, q, (nr, nq) in ((a, b, ("a0", "b0")), (b, a, ("b0", "a0"))):
        expected = float(jax.nn.sigmoid(model.apply(variables, ref, q, train=False))[0])
        assert verifier.verify(files[nr], files[nq]).score == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("fusion", verify.FUSIONS)
def test_fusion_of_k_references(workdir, verifier, files, fusion):
    refs = [files["a0"], files["a1"], files["b0"]]
    d = verify.Verifier(workdir, fusion=fusion).verify(refs, files["a2"])
    singles = [verifier.verify(r, files["a2"]).score for r in refs]
    np.testing.assert_allclose(d.reference_scores, singles, rtol=1e-6)
    reduce = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    assert d.fusion == fusion and d.score == pytest.approx(float(reduce(singles)))
    assert d.decision == ("genuine" if d.score >= d.threshold else "forged")


def test_threshold_override_decides(workdir, files):
    d = verify.Verifier(workdir, threshold=0.0).verify(files["a0"], files["b0"])
    assert d.threshold == 0.0 and d.decision == "genuine"
    d = verify.Verifier(workdir, threshold=1.0).verify(files["a0"], files["b0"])
    assert d.decision == "forged" or d.score == 1.0
    with pytest.raises(UserError, match="--threshold"):
        verify.Verifier(workdir, threshold=1.5)


def test_cli_batch_csv_scores_good_rows_and_lists_bad_ones(workdir, files, tmp_path):
    folder = os.path.basename(files["dir"])
    with open(os.path.join(files["dir"], "pairs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "reference", "questioned"])
        w.writerow(["p1", "a0.png; a1.png", "a2.png"])  # Relative to the CSV's folder.
        w.writerow(["p2", "missing.png", "a2.png"])
        w.writerow(["", files["b0"], "a0.png"])  # No id: its line number.
        w.writerow(["p4", "a0.png", ""])
    r = _cli(
        "--workdir",
        workdir,
        "--pairs",
        os.path.join(folder, "pairs.csv"),
        "--json",
        cwd=os.path.dirname(files["dir"]),
    )
    assert r.returncode == 2, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["p1", "4", "p2", "p4"]  # Scored first, then failed.
    p1, line4, p2, p4 = rows
    assert p1["references"] == [f"{folder}/a0.png", f"{folder}/a1.png"]
    assert p1["questioned"] == f"{folder}/a2.png" and len(p1["reference_scores"]) == 2
    assert p1["score"] == pytest.approx(np.mean(p1["reference_scores"]))
    assert line4["references"] == [f"{folder}/b0.png"] and 0.0 <= line4["score"] <= 1.0
    assert set(p2) == {"id", "error"} and "missing.png" in p2["error"]
    assert "questioned" in p4["error"]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and "p2" in errors[0] and f"{folder}/missing.png" in errors[0]
    assert "p4" in errors[1] and "no questioned file" in errors[1]
    assert "2 of 4 pairs failed" in r.stderr


@pytest.mark.parametrize("bad", ["missing", "truncated", "blank", "text", "bomb", "dir"])
@pytest.mark.parametrize("role", ["questioned", "reference"])
def test_bad_file_is_one_line_naming_it_exit_2(workdir, files, bad, role, capsys):
    q, ref = (files[bad], files["a0"]) if role == "questioned" else (files["a1"], files[bad])
    code = verify.main(["--workdir", workdir, "--reference", files["a2"], ref, "--questioned", q])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert verify.display_path(files[bad]) in err


def test_bad_workdir_exit_2(files, tmp_path, workdir, capsys):
    no_ckpt = tmp_path / "only_config"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    cases = [
        (str(tmp_path / "nowhere"), [], "does not exist"),
        (str(tmp_path), [], "config.json not found"),
        (str(no_ckpt), [], "checkpoint"),
        (str(bad_json), [], "config.json"),
        (workdir, ["--step", "999"], "no checkpoint of step 999"),
    ]
    for wd, extra, what in cases:
        argv = ["--workdir", wd, "--reference", files["a0"], "--questioned", files["a1"], *extra]
        code = verify.main(argv)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and what in err, err
        assert wd in err


def test_human_output_and_argument_errors(workdir, files, capsys):
    code = verify.main(
        [
            "--workdir",
            workdir,
            "--reference",
            files["a0"],
            files["a1"],
            "--questioned",
            files["b0"],
            "--fusion",
            "min",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["questioned", verify.display_path(files["b0"])]
    assert [ln.split()[0] for ln in lines[1:]] == [
        "reference",
        "reference",
        "score",
        "llr",
        "threshold",
        "decision",
    ]
    assert lines[-1].split()[1] in ("GENUINE", "FORGED") and "min of 2" in out

    pairs_csv = os.path.join(files["dir"], "human.csv")
    with open(pairs_csv, "w") as f:
        f.write(f"reference,questioned\na0.png,a1.png\na0.png;a1.png,{files['b0']}\n")
    assert verify.main(["--workdir", workdir, "--pairs", pairs_csv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# threshold") and lines[1].split()[:4] == [
        "id",
        "score",
        "llr",
        "decision",
    ]
    assert [ln.split()[0] for ln in lines[2:]] == ["2", "3"]  # Line numbers as ids.
    assert lines[3].split()[4] == verify.display_path(files["b0"])
    for argv in (
        ["--workdir", workdir, "--questioned", files["a0"]],
        ["--workdir", workdir, "--pairs", "x.csv", "--questioned", files["a0"]],
        ["--workdir", workdir, "--pairs", "x.csv", "--fusion", "median"],
    ):
        with pytest.raises(SystemExit) as e:
            verify.main(argv)
        assert e.value.code == 2
    capsys.readouterr()


def _assert_same_signature(verifier: verify.Verifier, png: str, copies: list[str], other: str):
    """Copies of `png` in other formats embed (nearly) like it: far closer than `other`, a
    signature of another writer. A lossless copy embeds exactly like it."""
    e = verifier.embeddings([png, *copies, other])
    spread = np.linalg.norm(e[-1] - e[0])
    assert spread > 0
    for path, emb in zip(copies, e[1:-1], strict=True):
        gap = np.linalg.norm(emb - e[0])
        assert gap < (0.3 * spread if path.endswith((".jpg", ".jpeg")) else 1e-6), (path, gap)


def test_jpeg_and_tiff_embed_like_the_png(verifier, files, tmp_path):
    jpeg, tiff = str(tmp_path / "a1.jpg"), str(tmp_path / "a1.tif")
    Image.open(files["a1"]).convert("RGB").save(jpeg, quality=90)
    Image.open(files["a1"]).convert("RGBA").save(tiff, compression="tiff_lzw")
    _assert_same_signature(verifier, files["a1"], [jpeg, tiff], files["b0"])
    png = verifier.verify(files["a0"], files["a1"])
    assert verifier.verify(files["a0"], tiff).score == pytest.approx(png.score, abs=1e-6)
    assert 0.0 <= verifier.verify(files["a0"], jpeg).score <= 1.0


@pytest.mark.realdata
def test_real_originals_score_without_error(verifier, real_data_dir, tmp_path):
    root = real_data_dir / "originals"
    if not root.is_dir():
        pytest.skip(f"real data: {root} does not exist")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() == ".png")
    assert {"RGB", "RGBA", "P"} <= {Image.open(p).mode for p in paths}  # As users have them.
    # Each file once as reference and once as questioned; some have several references.
    pairs = [verify.Pair((paths[i - 1],), p, str(i)) for i, p in enumerate(paths)]
    pairs.append(verify.Pair(tuple(paths[:3]), paths[3], "k3"))
    results = list(verifier.verify_pairs(pairs))
    failures = [r for r in results if isinstance(r, verify.Failure)]
    assert not failures, failures[:3]
    assert len(results) == len(pairs)
    assert all(0.0 <= r.score <= 1.0 and r.decision in ("genuine", "forged") for r in results)
    # The same scan as a user might also have it: JPEG and TIFF (RGBA, LZW) at native size.
    src = next(p for p in paths if "sigcomp2011" in p)
    other = next(p for p in paths if "cedar" in p)
    jpeg, tiff = str(tmp_path / "scan.jpg"), str(tmp_path / "scan.tif")
    Image.open(src).convert("RGB").save(jpeg, quality=85)
    Image.open(src).convert("RGBA").save(tiff, compression="tiff_lzw")
    _assert_same_signature(verifier, src, [jpeg, tiff], other)


def test_the_human_table_names_the_enrolment_that_scored():
    """An enrolment's score is its own (svm_pair's combination, say), not the fusion of the pair
    scores listed above it: the table says which."""
    from siamjax.verify.cli import format_decision
    from siamjax.verify.records import Decision

    common = dict(
        id="", questioned="q.png", references=("r1.png", "r2.png"), reference_scores=(0.2, 0.4),
        fusion="mean", llr=0.0, prior_positive=0.5, threshold=0.5, checkpoint_step=3,
    )  # fmt: skip
    fused = format_decision(Decision(**common, score=0.3, decision="forged"), "validation")
    enrolled = format_decision(
        Decision(**common, score=0.9, decision="genuine", enrollment="svm_pair"), "validation"
    )
    score_line = lambda text: next(x for x in text.splitlines() if x.startswith("score"))  # noqa: E731
    assert score_line(fused).endswith("mean of 2 references")
    assert score_line(enrolled).endswith("svm_pair enrolment of 2 references")
    assert "0.9000" in score_line(enrolled)
