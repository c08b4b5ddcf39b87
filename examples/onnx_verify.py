"""Verify a signature with a siamjax model exported to ONNX: onnxruntime, numpy and
`siamjax.preprocess` only (no JAX, flax or TensorFlow).

    siamjax-export --workdir W --out model/
    python examples/onnx_verify.py model/ --reference ref1.png ref2.png --questioned q.png

Prints one JSON object with the fields `siamjax-verify --json` prints for the same files (score,
llr, threshold, decision, ...), to within float rounding (tested: tests/test_export.py). A file
that cannot be used is one line on stderr naming it, and exit code 2.

Everything it needs to know comes from DIR/model.json (written by `siamjax-export`): the input
size and the preprocessing settings, the threshold calibrated on validation, the llr prior and the
fusion of K references. Use `OnnxVerifier` from your own code the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
import scipy.special

try:
    from siamjax.errors import UserError
    from siamjax.preprocess import preprocess_file
except ImportError:  # Run from a clone without installing: the package sits beside examples/.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from siamjax.errors import UserError
    from siamjax.preprocess import preprocess_file

CONTRACT_FORMAT, CONTRACT_VERSION = "siamjax-onnx", 1
# The preprocessing settings this example applies (model.json's "preprocessing" keys). A model
# that asks for another one is refused rather than fed other pixels than it was trained on.
APPLIED_PREPROCESSING = ("image_height", "image_width", "real.ink")
MODELS = ("encoder", "head")
FUSIONS = {"mean": np.mean, "max": np.max, "min": np.min}


class OnnxVerifier:
    """An exported model: `verify(references, questioned)` -> the decision as a dict."""

    def __init__(self, model_dir: str | os.PathLike, threads: int = 0):
        model_dir = os.fspath(model_dir)
        path = os.path.join(model_dir, "model.json")
        try:
            with open(path) as f:
                self.contract: dict[str, Any] = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: cannot read the model contract ({e})") from e
        c = self.contract
        if (c.get("format"), c.get("format_version")) != (CONTRACT_FORMAT, CONTRACT_VERSION):
            raise UserError(
                f"{path} is not a {CONTRACT_FORMAT} v{CONTRACT_VERSION} contract: export the "
                "workdir again with this siamjax's siamjax-export."
            )
        unknown = sorted(set(c["preprocessing"]) - set(APPLIED_PREPROCESSING))
        if unknown:
            raise UserError(
                f"{path} asks for preprocessing settings this example does not apply: "
                + ", ".join(f"{k}={c['preprocessing'][k]!r}" for k in unknown)
            )
        if c.get("enrollment", "none") != "none":
            raise UserError(
                f"{path} asks for writer enrolment {c['enrollment']!r}; this example fuses the "
                "pair scores only (enrollment 'none'): export a workdir without one"
            )
        self.height, self.width = c["input"]["height"], c["input"]["width"]
        self.ink = c["preprocessing"].get("real.ink", "raw")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads  # 0: onnxruntime's choice (one per core).
        self.encoder, self.head = (self._session(model_dir, c[m]["file"], options) for m in MODELS)

    @staticmethod
    def _session(model_dir: str, name: str, options: ort.SessionOptions) -> ort.InferenceSession:
        path = os.path.join(model_dir, name)
        try:
            return ort.InferenceSession(path, options, ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types.
            raise UserError(
                f"{path}: cannot load the ONNX model ({' '.join(str(e).split())})"
            ) from e

    def preprocess(self, path: str) -> np.ndarray:
        """uint8 [height, width, 1]: the file as the model sees it."""
        return preprocess_file(path, self.height, self.width, self.ink)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 [n, height, width, 1] -> float32 [n, D]."""
        return self.encoder.run(None, {"images": np.asarray(images, np.uint8)})[0]

    def scores(self, references: np.ndarray, questioned: np.ndarray) -> np.ndarray:
        """Probabilities [n] that each questioned embedding [n, D] is by the writer of the
        reference embedding [n, D] beside it. The sigmoid is taken in float32, as in training."""
        (logits,) = self.head.run(None, {"e1": references, "e2": questioned})
        return scipy.special.expit(logits.astype(np.float32)).astype(np.float64)

    def decide(
        self, reference_scores: np.ndarray, references: Sequence[str], questioned: str
    ) -> dict[str, Any]:
        """The decision object (siamjax-verify's --json fields) from the K reference scores."""
        c = self.contract
        score = float(FUSIONS[c["fusion"]](reference_scores))
        eps, prior = c["llr_eps"], c["prior_positive"]
        llr = float(scipy.special.logit(np.clip(score, eps, 1 - eps)) - scipy.special.logit(prior))
        return {
            "questioned": questioned,
            "references": list(references),
            "reference_scores": [float(s) for s in reference_scores],
            "fusion": c["fusion"],
            "score": score,
            "llr": llr,
            "prior_positive": prior,
            "threshold": c["threshold"],
            "decision": "genuine" if score >= c["threshold"] else "forged",
            "checkpoint_step": c["checkpoint_step"],
            "enrollment": "none",
        }

    def verify(self, references: Sequence[str], questioned: str) -> dict[str, Any]:
        """Reads, preprocesses and embeds the files once, scores (reference k, questioned) for
        each k, fuses the K scores."""
        images = np.stack([self.preprocess(p) for p in (*references, questioned)])
        emb = self.embed(images)
        k = len(references)
        scores = self.scores(emb[:k], np.repeat(emb[k:], k, axis=0))
        return self.decide(scores, [display_path(r) for r in references], display_path(questioned))


def display_path(path: str) -> str:
    """As siamjax-verify names files: relative to the working directory when inside it."""
    given = os.path.normpath(path)
    rel = os.path.relpath(os.path.abspath(given))
    return given if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="folder written by siamjax-export")
    p.add_argument(
        "--reference",
        action="extend",
        nargs="+",
        required=True,
        metavar="IMG",
        help="genuine scans",
    )
    p.add_argument("--questioned", required=True, metavar="IMG", help="the scan to verify")
    args = p.parse_args(argv)
    try:
        decision = OnnxVerifier(args.model_dir).verify(args.reference, args.questioned)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps(decision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
