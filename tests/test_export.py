"""siamjax.export and examples/onnx_verify.py on the session's tiny workdir: the contract, and
onnxruntime deciding as siamjax-verify's library does, on synthetic and on real scans."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from siamjax import verify
from siamjax.datasets.synthetic import generator as synthetic
from siamjax.errors import UserError
from siamjax.verify.records import Decision

pytest.importorskip("onnxruntime", reason="the serve extra is not installed")
pytest.importorskip("jax2onnx", reason="the serve extra is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "onnx_verify.py")
BANNED = ("jax", "jaxlib", "flax", "tensorflow", "tensorflow_datasets", "orbax")
# siamjax-verify --json's fields (tests/test_verify.py pins them): an unnamed decision's.
DECISION_KEYS = {f.name for f in dataclasses.fields(Decision)} - {"id"}


def load_example():
    """examples/onnx_verify.py as a module: the tests score through the example's own code."""
    spec = importlib.util.spec_from_file_location("onnx_verify", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[str, str, dict]:
    """(workdir, export folder, contract) of the session's tiny run."""
    from siamjax import export

    out = str(tmp_path_factory.mktemp("export") / "model")
    contract = export.export(tiny_run[1], out)
    return tiny_run[1], out, contract


@pytest.fixture(scope="module")
def verifier(exported) -> verify.Verifier:
    workdir, _, contract = exported
    return verify.Verifier(workdir, fusion=contract["fusion"]).load()


@pytest.fixture(scope="module")
def onnx_verifier(exported):
    return load_example().OnnxVerifier(exported[1])


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[str]:
    """Synthetic scans: writer 0 (s0_0..s0_2), writer 1 (s1_0, s1_1), dark ink on white."""
    d = tmp_path_factory.mktemp("export_scans")
    paths = []
    for writer, n in ((0, 3), (1, 2)):
        for i in range(n):
            ink = synthetic.render_genuine(synthetic.make_writer(5, writer), i, 90, 150, 5, writer)
            page = np.full((130, 210), 255, np.uint8)
            page[20:110, 30:180] = 255 - ink[..., 0]
            paths.append(str(d / f"s{writer}_{i}.png"))
            Image.fromarray(page).save(paths[-1])
    return paths


def test_contract_describes_the_checkpoint(exported, verifier):
    import onnx

    from siamjax import workdir as workdir_lib

    workdir, out, contract = exported
    assert sorted(os.listdir(out)) == ["encoder.onnx", "head.onnx", "model.json"]
    assert json.load(open(os.path.join(out, "model.json"))) == contract
    cfg = verify.load_config(workdir)
    h, w = cfg.image_height, cfg.image_width
    assert contract["preprocessing"] == {"image_height": h, "image_width": w, "real.ink": "raw"}
    assert contract["input"]["height"] == h and contract["input"]["dtype"] == "uint8"
    assert contract["threshold"] == verifier.threshold
    assert contract["threshold_source"] == "calibrated on validation"
    assert contract["prior_positive"] == verifier.prior_positive
    assert contract["checkpoint_step"] == verifier.step
    assert contract["fusion"] == cfg.eval.fusion and contract["enrollment"] == "none"
    assert contract["model_fingerprint"] == workdir_lib.model_fingerprint(cfg)
    assert contract["weights_sha256"] == verifier.model_identity()["weights_sha256"]
    check = contract["export_check"]
    assert check["max_abs_diff_embeddings"] <= 1e-5 and check["max_abs_diff_scores"] <= 1e-6
    enc = onnx.load(os.path.join(out, "encoder.onnx"))
    (x,) = enc.graph.input
    assert x.name == "images" and x.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = x.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [h, w, 1]  # Any batch.


@pytest.mark.parametrize("encoder, size", [("vgg", (32, 48)), ("signet", (100, 130))])
def test_every_encoder_converts(encoder, size):
    """The encoders the tiny workdir (`small`) does not cover: max pools, a patchify stem,
    SigNet's padded, biased convs and 2048-wide dense layers. Randomly initialised at a small
    input size, onnxruntime and JAX agree."""
    import jax
    import onnxruntime as ort

    from configs import default
    from siamjax import export, models
    from siamjax.models import SiameseNet

    cfg = default.get_config().model
    cfg.encoder, cfg.small_width, cfg.embedding_dim, cfg.conv_impl = encoder, 4, 16, "xla"
    cfg.vgg_stem = 2 if encoder == "vgg" else 1
    model = models.create_model(cfg)
    h, w = size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, h, w, 1), dtype=np.uint8)
    # Random variables of the right shapes without running flax's init (seconds, op by op);
    # BatchNorm variances stay positive.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, x, train=False))
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: (
            rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
            if "var" in jax.tree_util.keystr(path)
            else rng.uniform(-0.2, 0.2, s.shape).astype(s.dtype)
        ),
        shapes,
    )
    enc, head = export.onnx_graphs(model, variables, h, w, 16)
    e_onnx = ort.InferenceSession(enc.SerializeToString()).run(None, {"images": x})[0]
    embed = jax.jit(lambda v, x: model.apply(v, x, method=SiameseNet.embed))
    e_jax = np.asarray(embed(variables, x))
    assert np.abs(e_jax).max() > 1e-3  # Not a degenerate (all-zero) network.
    np.testing.assert_allclose(e_onnx, e_jax, atol=1e-4 * max(1.0, np.abs(e_jax).max()))
    l_onnx = ort.InferenceSession(head.SerializeToString()).run(
        None, {"e1": e_jax, "e2": e_jax[::-1].copy()}
    )[0]
    score = jax.jit(lambda v, a, b: model.apply(v, a, b, method=SiameseNet.score))
    l_jax = np.asarray(score(variables, e_jax, e_jax[::-1]))
    np.testing.assert_allclose(l_onnx, l_jax, atol=1e-4 * max(1.0, np.abs(l_jax).max()))


def test_preprocessing_settings_carry_every_key_the_config_has():
    from siamjax import export

    cfg = ml_collections.ConfigDict(
        {"image_height": 150, "image_width": 220, "real": {"ink": "binary", "pattern": "x"}}
    )
    assert export.preprocessing_settings(cfg) == {
        "image_height": 150,
        "image_width": 220,
        "real.ink": "binary",
    }


def _assert_same(onnx_d: dict, jax_d: dict, tol: float) -> float:
    assert set(onnx_d) == DECISION_KEYS and set(jax_d) == DECISION_KEYS
    for key in ("questioned", "references", "fusion", "threshold", "prior_positive", "enrollment"):
        assert onnx_d[key] == jax_d[key], key
    assert onnx_d["checkpoint_step"] == jax_d["checkpoint_step"]
    diffs = [abs(onnx_d["score"] - jax_d["score"]), abs(onnx_d["llr"] - jax_d["llr"])]
    diffs += list(np.abs(np.subtract(onnx_d["reference_scores"], jax_d["reference_scores"])))
    assert max(diffs) <= tol, (onnx_d, jax_d)
    assert onnx_d["decision"] == jax_d["decision"], (onnx_d, jax_d)
    return max(diffs)


def test_onnx_decides_as_the_verifier_on_synthetic_scans(verifier, onnx_verifier, scans):
    for refs, q in (([scans[0]], scans[1]), (scans[:3], scans[3]), ([scans[3]], scans[4])):
        _assert_same(onnx_verifier.verify(refs, q), verifier.verify(refs, q).to_json(), tol=1e-6)


@pytest.mark.realdata
def test_parity_on_real_scans(verifier, onnx_verifier, real_data_dir):
    """User-like files (RGB, RGBA, palette PNG at native resolution) of four writers: each
    writer's first two genuine scans against its other genuine scans and its forgeries, with
    K = 1 and K = 2 references."""
    root = real_data_dir / "originals"
    if not root.is_dir():
        pytest.skip(f"real data: {root} does not exist")
    folders = [
        ("sigcomp2011/train/001", "sigcomp2011/train/001_forg"),
        ("sigcomp2011/train/021", "sigcomp2011/train/021_forg"),
        ("cedar/full_org", "cedar/full_forg"),
    ]
    pairs = []
    for genuine_dir, forged_dir in folders:
        genuine = sorted(str(p) for p in (root / genuine_dir).iterdir())
        forged = sorted(str(p) for p in (root / forged_dir).iterdir())
        for q in (*genuine[2:4], *forged[:2]):
            pairs += [(genuine[:1], q), (genuine[:2], q)]
    worst = max(
        _assert_same(onnx_verifier.verify(r, q), verifier.verify(r, q).to_json(), tol=1e-4)
        for r, q in pairs
    )
    assert len(pairs) == 24
    print(f"max |onnxruntime - siamjax| over {len(pairs)} real pairs: {worst:.2e}")


def test_example_imports_no_jax_flax_or_tensorflow(exported, scans, verifier):
    """The example runs as a user runs it; neither it nor siamjax.preprocess loads JAX, flax or
    TensorFlow; and its JSON is the verifier's."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['onnx_verify.py', {exported[1]!r}, '--reference', {scans[0]!r}, "
        f"{scans[1]!r}, '--questioned', {scans[3]!r}]\n"
        "import siamjax.preprocess\n"
        "try:\n"
        f"    runpy.run_path({EXAMPLE!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"banned = {BANNED!r}\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in banned))\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    decision, loaded = r.stdout.strip().splitlines()
    assert loaded == "LOADED []", loaded
    expected = verifier.verify(scans[:2], scans[3]).to_json()
    got = json.loads(decision)
    # Named as given (absolute paths here): siamjax-verify names them the same way.
    _assert_same(got, expected, tol=1e-6)


def test_example_refuses_what_it_cannot_apply(exported, tmp_path, scans):
    example = load_example()
    model = tmp_path / "model"
    shutil.copytree(exported[1], model)
    contract = json.loads((model / "model.json").read_text())
    contract["preprocessing"]["real.ink"] = "binary"  # Applied: the input becomes binary.
    (model / "model.json").write_text(json.dumps(contract))
    binary = example.OnnxVerifier(model).preprocess(scans[0])
    assert set(np.unique(binary)) == {0, 255}
    contract["preprocessing"]["real.denoise"] = True  # A setting it does not know: refused.
    (model / "model.json").write_text(json.dumps(contract))
    with pytest.raises(UserError, match="real.denoise=True"):
        example.OnnxVerifier(model)
    (model / "model.json").write_text("{")
    with pytest.raises(UserError, match="model.json"):
        example.OnnxVerifier(model)
    shutil.copy(os.path.join(exported[1], "model.json"), model / "model.json")
    (model / "head.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="head.onnx"):
        example.OnnxVerifier(model)
    assert example.main([exported[1], "--reference", scans[0], "--questioned", "nowhere.png"]) == 2


def test_export_cli_errors_are_one_line(tmp_path, capsys, tiny_run):
    from siamjax import export

    assert export.main(["--workdir", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not exist" in err
    (tmp_path / "file").write_text("x")
    assert export.main(["--workdir", tiny_run[1], "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
