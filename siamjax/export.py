"""siamjax-export: a trained workdir as ONNX models and a contract, for serving without JAX.

    siamjax-export --workdir W --out DIR [--step N]          # or python -m siamjax.export

Writes three files into DIR:
  encoder.onnx   images uint8 [batch, height, width, 1] (ink high on background 0, what
                 `siamjax.preprocess` makes) -> embeddings float32 [batch, D]
  head.onnx      e1 (reference), e2 (questioned) float32 [batch, D] -> logits float32 [batch]
  model.json     the contract: those shapes and dtypes, every preprocessing setting of the
                 workdir's config, the threshold calibrated on validation, the llr prior, the
                 fusion of K references, the checkpoint step and the model's identity
                 (`Verifier.model_identity`), and how far ONNX and JAX differed on a probe batch.
The encoder and the head are two models, as in `siamjax.inference`: each image is embedded once,
and K references (or a service's enrolled ones) are scored by the head over the embeddings.
`examples/onnx_verify.py` is a complete consumer of the contract.

The graphs come from jax2onnx, which turns the jaxpr of the same `SiameseNet.embed` and
`SiameseNet.score` that `siamjax.inference` jits into ONNX operators directly, with the restored
weights as initialisers: no TensorFlow (jax2tf + tf2onnx would need it, and its jax2tf path is
deprecated) and no second implementation of the network to keep in step. The batch dimension is
symbolic, so one file serves one pair and a batch. Every export is checked: ONNX Runtime and JAX
must agree within `CHECK_TOLERANCE` on a probe batch, or nothing is written.

What it is not for: choosing a threshold (it is the checkpoint's) or quantising (float32 only).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.special

from siamjax.errors import UserError, one_line

CONTRACT_FORMAT = "siamjax-onnx"
CONTRACT_VERSION = 1
ENCODER_FILE, HEAD_FILE, CONTRACT_FILE = "encoder.onnx", "head.onnx", "model.json"
# Config keys (dotted) that change what `siamjax.preprocess` makes of a file. Each one present in
# the workdir's config is copied into the contract, so that a consumer can refuse a setting it
# does not apply instead of feeding the model other pixels than it was trained on.
PREPROCESSING_KEYS = ("image_height", "image_width", "real.ink")
# ONNX Runtime and XLA order float sums differently, so outputs differ in the last bits (the
# figures are in bench/README.md). An export whose probe batch differs by more is refused.
CHECK_TOLERANCE = 1e-4
OPSET = 21  # Supported by every onnxruntime release since 1.20.
INK = "uint8, ink high (255) on a background of 0, as siamjax.preprocess makes it"


def preprocessing_settings(config: Any) -> dict[str, Any]:
    """The PREPROCESSING_KEYS the config has, by their dotted names."""
    out = {}
    for key in PREPROCESSING_KEYS:
        node, found = config, True
        for part in key.split("."):
            if part not in node:
                found = False
                break
            node = node[part]
        if found:
            out[key] = node.to_dict() if hasattr(node, "to_dict") else node
    return out


def _versions() -> dict[str, str | None]:
    out = {}
    for dist in ("siamjax", "jax", "flax", "jax2onnx", "onnx", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _import_export_stack():
    try:
        import jax2onnx
        import onnx
        import onnxruntime
    except ImportError as e:
        raise UserError(
            f"the export needs the serve extra ({one_line(e)}): pip install -e '.[serve]'"
        ) from e
    return jax2onnx, onnx, onnxruntime


def _to_onnx(fn, specs, names_in, names_out, model_name, jax2onnx, onnx):
    """One jitted-function graph as a checked ONNX ModelProto."""
    import logging

    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # "value type ... not known" notes.
    proto = jax2onnx.to_onnx(
        fn,
        specs,
        model_name=model_name,
        opset=OPSET,
        input_names=names_in,
        output_names=names_out,
    )
    # jax2onnx records NHWC shapes for tensors it computes in NCHW; ONNX Runtime then warns at
    # every load. Its own shape inference needs none of them.
    del proto.graph.value_info[:]
    onnx.checker.check_model(proto, full_check=True)
    return proto


def onnx_graphs(model, variables: Any, height: int, width: int, dim: int) -> tuple[Any, Any]:
    """The encoder's and the head's ONNX ModelProtos of a SiameseNet with `variables` (numpy,
    baked in as initialisers), for any batch size."""
    import jax
    import jax.numpy as jnp

    from siamjax.models import SiameseNet

    jax2onnx, onnx, _ = _import_export_stack()
    (batch,) = jax.export.symbolic_shape("batch")
    encoder = _to_onnx(
        lambda x: model.apply(variables, x, method=SiameseNet.embed),
        [jax.ShapeDtypeStruct((batch, height, width, 1), jnp.uint8)],
        ["images"],
        ["embeddings"],
        "siamjax_encoder",
        jax2onnx,
        onnx,
    )
    head = _to_onnx(
        lambda e1, e2: model.apply(variables, e1, e2, method=SiameseNet.score),
        [jax.ShapeDtypeStruct((batch, dim), jnp.float32)] * 2,
        ["e1", "e2"],
        ["logits"],
        "siamjax_head",
        jax2onnx,
        onnx,
    )
    return encoder, head


def export(workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None) -> dict:
    """Exports the best checkpoint (or `step`) of `workdir` into the folder `out`; returns the
    contract (what model.json holds). The files appear together or not at all: each is written
    beside its place and renamed there only once every check passed."""
    import jax

    from siamjax import models
    from siamjax.verify.lib import Verifier, config_fusion, load_config

    _, _, ort = _import_export_stack()
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; pass a folder (it is created if missing).")
    config = load_config(workdir)
    verifier = Verifier(workdir, step=step, fusion=config_fusion(config)).load()
    variables = jax.device_get(verifier.variables)  # Baked into the graphs as initialisers.
    model_config = config.model.copy_and_resolve_references()
    model_config.conv_impl = "xla"  # Plain convolutions; the choice never changes the model.
    model = models.create_model(model_config)
    height, width = verifier.height, verifier.width
    dim = models.embedding_size(model_config)

    encoder, head = onnx_graphs(model, variables, height, width, dim)
    check = _check(verifier, encoder, head, ort)
    contract = {
        "format": CONTRACT_FORMAT,
        "format_version": CONTRACT_VERSION,
        "encoder": {
            "file": ENCODER_FILE,
            "input": {"name": "images", "shape": ["batch", height, width, 1], "dtype": "uint8"},
            "output": {"name": "embeddings", "shape": ["batch", dim], "dtype": "float32"},
        },
        "head": {
            "file": HEAD_FILE,
            "inputs": [
                {"name": "e1", "shape": ["batch", dim], "dtype": "float32", "of": "reference"},
                {"name": "e2", "shape": ["batch", dim], "dtype": "float32", "of": "questioned"},
            ],
            "output": {"name": "logits", "shape": ["batch"], "dtype": "float32"},
            "score": "sigmoid(logit) taken in float32: the probability the questioned is genuine",
        },
        "input": {"height": height, "width": width, "channels": 1, "dtype": "uint8", "ink": INK},
        "preprocessing": preprocessing_settings(config),
        "threshold": verifier.threshold,
        "threshold_source": verifier.threshold_source,
        "decision": "genuine iff score >= threshold",
        "prior_positive": verifier.prior_positive,
        "llr": "logit(clip(score, llr_eps, 1 - llr_eps)) - logit(prior_positive), in nats",
        "llr_eps": _llr_eps(),
        "fusion": verifier.fusion,
        # The writer enrolment the workdir's config chooses; the ONNX files hold the encoder and
        # the pair head, so a consumer applies only 'none' (fused pair scores) unless it
        # implements siamjax.enrollment itself.
        "enrollment": verifier.enrollment,
        **verifier.model_identity(),
        "workdir": verifier.workdir,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "onnx_opset": OPSET,
        "versions": _versions(),
        "export_check": check,
    }
    _write_all(
        out,
        {
            ENCODER_FILE: encoder.SerializeToString(),
            HEAD_FILE: head.SerializeToString(),
            CONTRACT_FILE: (json.dumps(contract, indent=2) + "\n").encode(),
        },
    )
    return contract


def _llr_eps() -> float:
    from siamjax import scoring

    return float(scoring.LLR_EPS)


def _check(verifier, encoder, head, ort) -> dict[str, Any]:
    """ONNX Runtime against the verifier's own jitted encoder and head on a probe batch of
    synthetic-looking images (random strokes, not noise: BatchNorm statistics of real input)."""
    rng = np.random.default_rng(0)
    n = 5
    images = np.zeros((n, verifier.height, verifier.width, 1), np.uint8)
    for i in range(n):
        for _ in range(6):  # A few thick random strokes of varying intensity.
            y0, x0 = rng.integers(0, verifier.height), rng.integers(0, verifier.width)
            h, w = rng.integers(1, max(2, verifier.height // 4), size=2)
            images[i, y0 : y0 + h, x0 : x0 + w, 0] = rng.integers(80, 256)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    enc = ort.InferenceSession(encoder.SerializeToString(), options, ["CPUExecutionProvider"])
    hd = ort.InferenceSession(head.SerializeToString(), options, ["CPUExecutionProvider"])
    e_jax = verifier.embed_images(images)
    (e_onnx,) = enc.run(None, {"images": images})
    a, b = np.arange(n), np.roll(np.arange(n), 1)  # Pairs (reference a, questioned b).
    s_jax = np.array(
        [verifier.decide_embeddings(e_jax[[i]], e_jax[b[i]], ["r"], "q").score for i in a]
    )
    (l_onnx,) = hd.run(None, {"e1": e_jax[a], "e2": e_jax[b]})
    s_onnx = scipy.special.expit(l_onnx.astype(np.float32)).astype(np.float64)
    result = {
        "probe_images": n,
        "max_abs_diff_embeddings": float(np.abs(e_jax - e_onnx).max()),
        "max_abs_diff_scores": float(np.abs(s_jax - s_onnx).max()),
        "tolerance": CHECK_TOLERANCE,
    }
    worst = max(result["max_abs_diff_embeddings"], result["max_abs_diff_scores"])
    if not worst <= CHECK_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime and JAX disagree on the probe batch: {result}")
    return result


def _write_all(out: str, files: dict[str, bytes]) -> None:
    os.makedirs(out, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    staged = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
            staged.append((tmp, os.path.join(out, name)))
            os.chmod(tmp, 0o666 & ~umask)  # As open() would make it: mkstemp's are private.
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise UserError(f"--out {out}: cannot write the export ({one_line(e)})") from e
    # model.json last: a folder with a model.json holds the ONNX files it describes.
    for tmp, final in sorted(staged, key=lambda s: s[1].endswith(CONTRACT_FILE)):
        os.replace(tmp, final)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamjax-export",
        description="Exports a trained siamjax workdir to ONNX (encoder.onnx, head.onnx) and "
        "model.json, the contract a consumer needs (see examples/onnx_verify.py).",
    )
    p.add_argument("--workdir", required=True, help="workdir of a training run")
    p.add_argument("--out", required=True, help="folder to write into (created if missing)")
    p.add_argument(
        "--step", type=int, default=None, help="checkpoint step (default: best by validation EER)"
    )
    p.add_argument("--verbose", action="store_true", help="keep JAX/orbax log messages")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit code (0, or 2 for anything the user can fix)."""
    args = _parser().parse_args(argv)
    from siamjax import entry  # The same quiet terminal as siamjax-verify.

    entry.quiet_terminal(args.verbose)
    try:
        contract = export(args.workdir, args.out, args.step)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    check = contract["export_check"]
    print(
        f"exported step {contract['checkpoint_step']} of {contract['workdir']} to "
        f"{os.path.abspath(args.out)} (threshold {contract['threshold']:.4f}, fusion "
        f"{contract['fusion']}; ONNX vs JAX on {check['probe_images']} probe images: "
        f"max |diff| {check['max_abs_diff_embeddings']:.1e} embeddings, "
        f"{check['max_abs_diff_scores']:.1e} scores)"
    )
    return 0


def run() -> None:
    """Entry point of the `siamjax-export` console script and of `python -m siamjax.export`."""
    from siamjax import entry

    entry.run_console(main)


if __name__ == "__main__":
    run()
