"""Enrolment: what is fitted per writer on its K reference signatures, and how a questioned
signature is then scored against it.

A writer-independent model scores a questioned signature against each reference; enrolment is
where the writer's own K references say more than K separate pairs do:

- 'none': the K reference scores fused (`config.eval.fusion`), as before enrolment existed.
- 'znorm': the K reference logits fused (mean, max or min), standardised by how the writer's
  references score against each other (the mean and spread of their logits): a writer whose
  genuine signatures vary a lot gets a wider acceptance, one who signs the same way every time
  a narrower one. Needs K >= 2.
- 'svm': a writer-dependent classifier, as sigver's writer-dependent SVMs: an RBF SVM on the
  embeddings, the writer's K references against genuine signatures of other (training) writers,
  classes weighted to balance; the score is its decision value through a sigmoid.
- 'svm_scaled': the same SVM on embeddings standardised per dimension (over the writer's
  references and the negatives). The RBF width rule ('scale': 1 / (D * variance of all values))
  assumes comparable dimensions; an encoder whose embedding dimensions share a large offset and
  vary little around it (GroupNorm + GAP: per-dimension std ~0.26 around |mean| ~1.2) gets a
  width that sees almost no difference between signatures.
- 'svm_pair': 'svm_scaled''s decision value and the pair head's fused logit against the K
  references, combined by a logistic regression fitted on the validation writers' trials (eval.py
  fits it where it chooses the threshold, and stores it beside the threshold). The SVM learns the
  writer from other writers' genuine signatures only, so it never sees a skilled forgery; the head
  was trained on skilled pairs of other writers. On 3 CEDAR folds' validation writers the
  combination beat either alone at K = 1 and K = 10 on every fold (results/selection.jsonl).

What it is not for: choosing thresholds (validation does, `metrics.operating_threshold`) or
computing embeddings (`siamjax.inference`). Everything here is numpy (and scikit-learn for the
SVM), so eval.py, siamjax-verify and the service enrol the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np
import scipy.special

from siamjax import scoring
from siamjax.errors import UserError

METHODS = ("none", "znorm", "svm", "svm_scaled", "svm_pair")
# Methods that enrol against other writers' genuine embeddings (the training split's).
WITH_NEGATIVES = ("svm", "svm_scaled", "svm_pair")
# Methods whose score combines `components` with weights fitted on validation (`fit_combination`).
COMBINED = ("svm_pair",)
# 'znorm': the references' spread (std of their logits against each other) is floored at this,
# so that K = 2 or a writer who signs identically does not make the scale explode.
MIN_SPREAD = 0.5
# 'svm': regularisation and the RBF width rule, as in sigver's writer-dependent classifiers.
SVM_C = 1.0
SVM_GAMMA = "scale"

# (reference embeddings [n, D], questioned embeddings [n, D]) -> head logits [n].
PairLogits = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_method(method: str, k: int) -> None:
    """A UserError naming config.eval.enrollment when `method` is unknown or needs more refs."""
    if method not in METHODS:
        raise UserError(f"config.eval.enrollment={method!r}; use one of {METHODS}.")
    if method == "znorm" and k < 2:
        raise UserError(
            "config.eval.enrollment='znorm' standardises by the references' scores against each "
            f"other, so it needs config.eval.references >= 2 (got {k})."
        )


@dataclasses.dataclass
class Enrollment:
    """One writer's enrolment: the references' embeddings and what was fitted on them."""

    method: str
    references: np.ndarray  # float32 [K, D]
    fusion: str = "mean"
    center: float = 0.0  # 'znorm': mean logit of reference pairs.
    spread: float = 1.0  # 'znorm': their std, floored at MIN_SPREAD.
    classifier: object | None = None  # 'svm', 'svm_scaled', 'svm_pair': the fitted classifier.
    # COMBINED: (weight of the SVM's decision, weight of the pair logit, bias), from validation.
    combine: tuple[float, float, float] | None = None


def enroll(
    method: str,
    references: np.ndarray,
    pair_logits: PairLogits,
    *,
    fusion: str = "mean",
    negatives: np.ndarray | None = None,
    combine: tuple[float, float, float] | None = None,
) -> Enrollment:
    """Fits `method` on one writer's reference embeddings [K, D].

    `negatives` [N, D]: genuine embeddings of other writers (WITH_NEGATIVES only; the training
    split's). `combine`: COMBINED methods' weights (`fit_combination`); without them such an
    enrolment gives `components` but no `score`.
    """
    references = np.asarray(references, np.float32)
    k = references.shape[0]
    check_method(method, k)
    out = Enrollment(method, references, fusion)
    if combine is not None:
        out.combine = tuple(float(v) for v in combine)
    if method == "znorm":
        i, j = np.nonzero(~np.eye(k, dtype=bool))
        logits = np.asarray(pair_logits(references[i], references[j]), np.float64)
        out.center = float(logits.mean())
        out.spread = float(max(logits.std(), MIN_SPREAD))
    elif method in WITH_NEGATIVES:
        if negatives is None or len(negatives) == 0:
            raise UserError(
                f"config.eval.enrollment={method!r} needs other writers' genuine embeddings "
                "(negatives); none were given."
            )
        # Imported here: only these methods need scikit-learn.
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        x = np.concatenate([references, np.asarray(negatives, np.float32)])
        y = np.concatenate([np.ones(k, np.int32), np.zeros(len(negatives), np.int32)])
        svc = SVC(C=SVM_C, kernel="rbf", gamma=SVM_GAMMA, class_weight="balanced")
        scaled = method in ("svm_scaled", "svm_pair")
        out.classifier = make_pipeline(StandardScaler(), svc) if scaled else svc
        out.classifier.fit(x, y)
    return out


def _reference_logits(enrollment: Enrollment, q: np.ndarray, pair_logits: PairLogits) -> np.ndarray:
    """The head's logits [n, K] of each questioned embedding against each reference."""
    n, k = q.shape[0], enrollment.references.shape[0]
    refs = np.repeat(enrollment.references[None], n, axis=0).reshape(n * k, -1)
    return np.asarray(pair_logits(refs, np.repeat(q, k, axis=0)), np.float32).reshape(n, k)


def components(
    enrollment: Enrollment, questioned: np.ndarray, pair_logits: PairLogits
) -> np.ndarray:
    """A COMBINED enrolment's two scores of each questioned embedding [n, D], float64 [n, 2]: the
    writer's SVM decision value, and the pair head's logits against the references fused
    (`enrollment.fusion`, in logits)."""
    q = np.asarray(questioned, np.float32)
    decision = enrollment.classifier.decision_function(q).astype(np.float64)
    logits = _reference_logits(enrollment, q, pair_logits).astype(np.float64)
    return np.stack([decision, scoring.fuse_scores(logits, enrollment.fusion)], axis=1)


def fit_combination(parts: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(w_svm, w_pair, bias) of a logistic regression of `labels` (1 = genuine) on `components`
    [n, 2], classes weighted to balance: fitted on validation trials, never on test writers."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise UserError("fitting an enrolment's combination needs genuine and forged trials.")
    lr = LogisticRegression(class_weight="balanced").fit(np.asarray(parts, np.float64), labels)
    (w_svm, w_pair), (bias,) = lr.coef_[0], lr.intercept_
    return float(w_svm), float(w_pair), float(bias)


def combined(method: str, parts: np.ndarray, combine: tuple[float, float, float] | None):
    """A COMBINED enrolment's scores in (0, 1) from its `components` [n, 2] and the weights
    `combine` (`fit_combination`); a UserError when there are none."""
    if combine is None:
        raise UserError(
            f"enrolment {method!r} combines two scores with weights fitted on validation; none "
            "were given (eval.py fits and stores them)."
        )
    w_svm, w_pair, bias = combine
    return scipy.special.expit(np.asarray(parts) @ np.array([w_svm, w_pair]) + bias)


def score(enrollment: Enrollment, questioned: np.ndarray, pair_logits: PairLogits) -> np.ndarray:
    """Scores in (0, 1) that each questioned embedding [n, D] is the writer's genuine signature."""
    q = np.asarray(questioned, np.float32)
    k = enrollment.references.shape[0]
    if enrollment.method in COMBINED:
        parts = components(enrollment, q, pair_logits)
        return combined(enrollment.method, parts, enrollment.combine)
    if enrollment.method in WITH_NEGATIVES:
        return scipy.special.expit(enrollment.classifier.decision_function(q).astype(np.float64))
    logits = _reference_logits(enrollment, q, pair_logits)
    if enrollment.method == "none":
        probs = np.asarray(scipy.special.expit(logits), np.float64)  # As scoring.probabilities.
        return scoring.fuse_scores(probs, enrollment.fusion) if k > 1 else probs[:, 0]
    # 'znorm' fuses in logits, where standardising is exact: a head that adds a constant to
    # every logit, or scales them all, gives the same scores.
    fused = scoring.fuse_scores(logits.astype(np.float64), enrollment.fusion)
    return scipy.special.expit((fused - enrollment.center) / enrollment.spread)


# ---- What eval.py stores for siamjax-verify and the service -----------------------------------
#
# A writer enrolment's scores live on their own scale, so its threshold is chosen on validation
# under the same method and K (eval.py does), and stored in the workdir beside what 'svm' needs
# (the training writers' genuine embeddings): <workdir>/enrollment/<method>_k<K>.json and
# <workdir>/enrollment/negatives_step<N>.npy.
FOLDER = "enrollment"


def calibration_path(workdir: str, method: str, k: int) -> str:
    return os.path.join(workdir, FOLDER, f"{method}_k{k}.json")


def negatives_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, FOLDER, f"negatives_step{step}.npy")


def save_calibration(
    workdir: str,
    method: str,
    k: int,
    *,
    threshold: float,
    step: int,
    fusion: str,
    negatives: np.ndarray | None,
    combine: tuple[float, float, float] | None = None,
) -> str:
    """Writes the calibration of (`method`, `k`) at checkpoint `step` (with COMBINED methods'
    weights); returns its path."""
    os.makedirs(os.path.join(workdir, FOLDER), exist_ok=True)
    if negatives is not None:
        np.save(negatives_path(workdir, step), np.asarray(negatives, np.float32))
    path = calibration_path(workdir, method, k)
    doc = {"method": method, "references": k, "threshold": float(threshold), "step": int(step)}
    doc["fusion"] = fusion
    if combine is not None:
        doc["combine"] = [float(v) for v in combine]  # w_svm, w_pair, bias.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)  # Never half-written: a reader sees the old file or the new one.
    return path


def load_calibration(
    workdir: str, method: str, k: int, step: int
) -> tuple[dict, np.ndarray | None]:
    """(calibration, negatives or None) of (`method`, `k`) for checkpoint `step`; a UserError
    saying which eval.py command makes them when they are missing or of another checkpoint."""
    path = calibration_path(workdir, method, k)
    make = (
        f"run `python eval.py --config=... --workdir={workdir} --split=validation "
        f"--config.eval.enrollment={method} --config.eval.references={k}` to choose it"
    )
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError):
        raise UserError(
            f"no calibrated threshold for enrolment {method!r} with {k} reference(s) in "
            f"{os.path.dirname(path)}: {make}."
        ) from None
    if int(doc["step"]) != int(step):
        raise UserError(
            f"{path} was calibrated on checkpoint step {doc['step']}, not {step}: {make}."
        )
    if method in COMBINED and "combine" not in doc:
        raise UserError(f"{path} holds no combination weights for {method!r}: {make}.")
    negatives = None
    if method in WITH_NEGATIVES:
        try:
            negatives = np.load(negatives_path(workdir, step))
        except OSError:
            raise UserError(
                f"{negatives_path(workdir, step)} is missing (the training writers' genuine "
                f"embeddings {method!r} enrols against): {make}."
            ) from None
    return doc, negatives
