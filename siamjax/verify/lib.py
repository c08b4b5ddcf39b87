"""The library behind siamjax-verify: a trained workdir as a `Verifier` that turns `Pair`s of files
into `Decision`s (`siamjax.verify.records`). See `siamjax.verify` for the whole story.

Everything a user can fix (a bad path or file, a workdir without a run, a bad CSV) is a `UserError`
naming it, or with `verify_pairs`, a `Failure` for that pair while the others are scored. Batches
are padded to one shape (`siamjax.inference`), so nothing compiles again whatever the number of
files. JAX and the model are loaded on first use, so a bad file is reported at once.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from siamjax import enrollment as enrollment_lib
from siamjax import scoring
from siamjax import workdir as workdir_lib
from siamjax.errors import UserError, one_line
from siamjax.verify.records import FORGED, GENUINE, Decision, Failure, Pair, display_path
from siamjax.workdir import ink_of, load_config

FUSIONS = scoring.FUSE_METHODS
ENROLLMENTS = enrollment_lib.METHODS
# Images per jitted embedding call (rounded up to a multiple of the devices). Small, because a
# typical call has a handful of files; a CSV of thousands still runs at a useful batch size.
DEFAULT_BATCH_SIZE = 32
# Pairs of a CSV handled together: their new files are read, embedded and scored, then printed.
# Bounds memory (images live only while their chunk is processed; embeddings are cached).
PAIRS_PER_CHUNK = 512


def config_fusion(config: Any) -> str:
    """How a workdir's config fuses K reference scores (`config.eval.fusion`, as eval.py does);
    the default of the export's contract and of the service's enrolled writers."""
    eval_config = config.get("eval") or {}
    return str(eval_config.get("fusion", "mean"))


class Verifier:
    """A trained workdir ready to score pairs of files.

    Reads `<workdir>/config.json` at once; restores the checkpoint (best by validation EER, or
    `step`) on first use, so that a bad input file is reported without waiting for the model.
    `threshold` overrides the calibrated one; `fusion` is one of FUSIONS.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        step: int | None = None,
        threshold: float | None = None,
        fusion: str = "mean",
        enrollment: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = None,
    ):
        if fusion not in FUSIONS:
            raise UserError(f"--fusion {fusion!r} is unknown; use one of {', '.join(FUSIONS)}.")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise UserError(f"--threshold {threshold} must lie in [0, 1] (a probability).")
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.config = load_config(self.workdir)
        self.height, self.width = int(self.config.image_height), int(self.config.image_width)
        self.ink = ink_of(self.config)
        self.fusion = fusion
        # Writer enrolment (siamjax.enrollment): given, else the workdir's config.eval.enrollment.
        self.enrollment = enrollment or str(
            (self.config.get("eval") or {}).get("enrollment", "none")
        )
        if self.enrollment not in ENROLLMENTS:
            raise UserError(
                f"--enrollment {self.enrollment!r} is unknown; use one of {', '.join(ENROLLMENTS)}."
            )
        self._calibrations: dict[int, tuple[dict, Any]] = {}  # K -> (calibration, negatives).
        self._requested_step, self._threshold_override = step, threshold
        self._batch_size = batch_size
        self._workers = workers or min(8, os.cpu_count() or 1)
        self._scorer: Any = None  # An inference.Scorer, once the model is restored.
        self._embeddings: dict[str, np.ndarray] = {}  # Absolute path -> [D] float32.
        self._bad_files: dict[str, str] = {}  # Absolute path -> one-line error.
        self._identity: dict[str, Any] | None = None  # model_identity(), once computed.

    def _ensure_model(self) -> None:
        """Restores the checkpoint and its calibration, on this process's devices."""
        if self._scorer is not None:
            return
        import jax

        from siamjax import inference, parallel
        from siamjax import workdir as workdir_lib

        mesh = parallel.make_mesh(jax.local_devices())  # A verifier is one process.
        n = mesh.devices.size
        restored = workdir_lib.restore(self.config, self.workdir, self._requested_step, mesh)
        threshold, self.threshold_source = self._threshold_override, "--threshold"
        if threshold is None:
            threshold, self.threshold_source = restored.threshold, "calibrated on validation"
        if threshold is None:
            raise UserError(
                f"the checkpoint of step {restored.step} in {self.workdir} was saved without a "
                "validation, so it has no calibrated threshold: pass --threshold, or "
                "a --step that was validated."
            )
        self.threshold = float(threshold)
        self.prior_positive = float(restored.prior_positive or self.config.pairs.positive)
        self.step = restored.step
        self._variables = restored.variables
        self._scorer = inference.Scorer(restored.model, mesh, -(-self._batch_size // n) * n)

    def load(self) -> Verifier:
        """Restores the model now rather than on first use (a service's start-up, the export);
        afterwards `threshold`, `threshold_source`, `prior_positive`, `step` and `variables`
        are set. Returns self."""
        self._ensure_model()
        return self

    @property
    def variables(self) -> Any:
        """The restored {"params", "batch_stats"} (after `load`), replicated on this process's
        devices: what the export traces and the service's digest covers."""
        self._ensure_model()
        return self._variables

    def model_identity(self) -> dict[str, Any]:
        """What tells this model from any other: `model_fingerprint` (the config keys that shape
        the network and its input), `checkpoint_step` and `weights_sha256` (every restored
        variable, by name, dtype, shape and bytes). Embeddings compare only under equal ones."""
        if self._identity is None:
            import hashlib

            import jax

            digest = hashlib.sha256()
            leaves = jax.tree_util.tree_flatten_with_path(self.variables)[0]
            for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
                a = np.ascontiguousarray(np.asarray(leaf))
                digest.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
                digest.update(a.tobytes())
            self._identity = {
                "model_fingerprint": workdir_lib.model_fingerprint(self.config),
                "checkpoint_step": self.step,
                "weights_sha256": digest.hexdigest(),
            }
        return dict(self._identity)

    # ---- files -> embeddings ---------------------------------------------------------------

    def _preprocess(self, key_and_name: tuple[str, str]) -> np.ndarray | str:
        from siamjax.preprocess import preprocess_file

        try:
            return preprocess_file(key_and_name[1], self.height, self.width, self.ink)
        except UserError as e:
            return one_line(str(e))

    def _embed_files(self, paths: Iterable[str], all_or_nothing: bool = False) -> None:
        """Reads, normalises and embeds every file of `paths` not seen before; a file that cannot
        be used lands in `_bad_files`. With `all_or_nothing`, one bad file means nothing is
        embedded (and the model is not even restored)."""
        todo: dict[str, str] = {}
        for p in paths:
            key = os.path.abspath(p)
            if key not in self._embeddings and key not in self._bad_files:
                todo.setdefault(key, display_path(p))
        if not todo:
            return
        if len(todo) == 1:
            results = [self._preprocess(next(iter(todo.items())))]
        else:
            with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
                results = list(pool.map(self._preprocess, todo.items()))
        good = [(k, r) for k, r in zip(todo, results, strict=True) if not isinstance(r, str)]
        bad = {k: r for k, r in zip(todo, results, strict=True) if isinstance(r, str)}
        self._bad_files.update(bad)
        if not good or (bad and all_or_nothing):
            return
        self._ensure_model()
        emb = self._scorer.embeddings(self._variables, np.stack([r for _, r in good]))
        self._embeddings.update((k, e) for (k, _), e in zip(good, emb, strict=True))

    def preprocess_bytes(self, data: bytes, name: str) -> np.ndarray:
        """A file's bytes as the model sees them: uint8 [height, width, 1], exactly what
        `embeddings` embeds for a file of these bytes; a bad file is a `UserError` naming `name`."""
        from siamjax.preprocess import preprocess_bytes

        return preprocess_bytes(data, name, self.height, self.width, self.ink)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [n, height, width, 1] (from `preprocess_bytes`) -> float32 [n, D] embeddings, by
        the same jitted, padded encoder as `embeddings`; nothing is cached."""
        self._ensure_model()
        return self._scorer.embeddings(self._variables, np.asarray(images, np.uint8))

    def embeddings(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """float32 [len(paths), D] encoder outputs of files (cached), e.g. to compare scans or build
        a gallery of a writer's references; raises `UserError` naming the first unusable file."""
        paths = [os.fspath(p) for p in paths]
        self._embed_files(paths, all_or_nothing=True)
        for p in paths:
            if os.path.abspath(p) in self._bad_files:
                raise UserError(self._bad_files[os.path.abspath(p)])
        return np.stack([self._embeddings[os.path.abspath(p)] for p in paths])

    # ---- pairs -> decisions ----------------------------------------------------------------

    def verify(
        self,
        references: str | os.PathLike | Sequence[str | os.PathLike],
        questioned: str | os.PathLike,
        id: str = "",
    ) -> Decision:
        """Decides one pair; raises `UserError` naming the first file that cannot be used."""
        if isinstance(references, str | os.PathLike):
            references = [references]
        pair = Pair(tuple(os.fspath(r) for r in references), os.fspath(questioned), id)
        self.embeddings([*pair.references, pair.questioned])  # Stops at the first bad file.
        (result,) = self.verify_pairs([pair])
        if isinstance(result, Failure):
            raise UserError(result.error)
        return result

    def verify_pairs(self, pairs: Iterable[Pair]) -> Iterator[Decision | Failure]:
        """A `Decision` or a `Failure` for each pair, in order, a chunk of pairs at a time."""
        chunk: list[Pair] = []
        for pair in pairs:
            chunk.append(pair)
            if len(chunk) == PAIRS_PER_CHUNK:
                yield from self._verify_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._verify_chunk(chunk)

    def _verify_chunk(self, pairs: list[Pair]) -> list[Decision | Failure]:
        self._embed_files(p for pair in pairs for p in (*pair.references, pair.questioned) if p)
        results: list[Decision | Failure | None] = []
        rows_ref, rows_q = [], []  # Keys of every (reference, questioned) to score.
        for pair in pairs:
            keys = [os.path.abspath(p) for p in (*pair.references, pair.questioned)]
            bad = next((k for k in keys if k in self._bad_files), None)
            if not pair.questioned or not pair.references:
                empty = "questioned file" if not pair.questioned else "reference"
                results.append(Failure(pair.id, f"no {empty} given"))
            elif bad is not None:
                results.append(Failure(pair.id, self._bad_files[bad]))
            else:
                results.append(None)
                rows_ref += keys[:-1]
                rows_q += [keys[-1]] * (len(keys) - 1)
        if rows_ref:
            e_ref = np.stack([self._embeddings[k] for k in rows_ref])
            e_q = np.stack([self._embeddings[k] for k in rows_q])
            logits = self._scorer.score_embeddings(self._variables, e_ref, e_q)
            scores = scoring.probabilities(logits)  # As validation's: the threshold's scale.
        start = 0
        for i, pair in enumerate(pairs):
            if results[i] is not None:
                continue
            k = len(pair.references)
            embedded = None
            if self.enrollment != "none":
                embedded = (
                    np.stack([self._embeddings[os.path.abspath(r)] for r in pair.references]),
                    self._embeddings[os.path.abspath(pair.questioned)],
                )
            try:
                results[i] = self._decision(
                    scores[start : start + k],
                    display_path(pair.questioned),
                    tuple(display_path(r) for r in pair.references),
                    pair.id,
                    embedded,
                )
            except UserError as e:  # No calibration for this K: that pair fails, the rest go on.
                results[i] = Failure(pair.id, one_line(str(e)))
            start += k
        return results  # type: ignore[return-value]

    def decide_embeddings(
        self,
        references: np.ndarray,
        questioned: np.ndarray,
        reference_names: Sequence[str],
        questioned_name: str,
        id: str = "",
    ) -> Decision:
        """The `Decision` for embeddings already computed (a service's enrolled references):
        references float32 [K, D], questioned [D], scored and fused exactly as `verify` scores
        the files they came from. The names are what the decision reports."""
        self._ensure_model()
        references = np.asarray(references, np.float32)
        if references.ndim != 2 or len(references) == 0 or len(reference_names) != len(references):
            raise ValueError(f"references must be [K >= 1, D], got shape {references.shape}.")
        e_q = np.repeat(np.asarray(questioned, np.float32)[None], len(references), axis=0)
        logits = self._scorer.score_embeddings(self._variables, references, e_q)
        return self._decision(
            scoring.probabilities(logits),
            questioned_name,
            tuple(reference_names),
            id,
            (references, np.asarray(questioned, np.float32)),
        )

    def _enrolled(self, references: np.ndarray, questioned: np.ndarray) -> tuple[float, float]:
        """(score, threshold) of a questioned embedding [D] against references [K, D] through
        `self.enrollment`, at the threshold eval.py chose on validation for it and K."""
        k = len(references)
        if k not in self._calibrations:
            self._calibrations[k] = enrollment_lib.load_calibration(
                self.workdir, self.enrollment, k, self.step
            )
        calibration, negatives = self._calibrations[k]

        def pair_logits(e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
            return self._scorer.score_embeddings(self._variables, e1, e2)

        enrolled = enrollment_lib.enroll(
            self.enrollment,
            references,
            pair_logits,
            fusion=self.fusion,
            negatives=negatives,
            combine=calibration.get("combine"),
        )
        score = float(enrollment_lib.score(enrolled, questioned[None], pair_logits)[0])
        threshold = self._threshold_override
        return score, float(calibration["threshold"] if threshold is None else threshold)

    def _decision(
        self,
        per_ref: np.ndarray,
        questioned: str,
        references: tuple[str, ...],
        id: str,
        embedded: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Decision:
        """The K reference scores [K] of one questioned file, fused (or, with a writer enrolment,
        its score from `embedded`: references [K, D], questioned [D]), with llr and decision."""
        threshold = self.threshold
        if self.enrollment == "none":
            fused = float(scoring.fuse_scores(per_ref[None, :], self.fusion)[0])
        else:
            fused, threshold = self._enrolled(*embedded)
        llr = float(scoring.llr(np.array([fused]), self.prior_positive)[0])
        return Decision(
            id=id,
            questioned=questioned,
            references=references,
            reference_scores=tuple(float(s) for s in per_ref),
            fusion=self.fusion,
            score=fused,
            llr=llr,
            prior_positive=self.prior_positive,
            threshold=threshold,
            decision=GENUINE if fused >= threshold else FORGED,
            checkpoint_step=self.step,
            enrollment=self.enrollment,
        )
