"""siamjax-verify: is a questioned signature by the writer of some genuine references?

    siamjax-verify --workdir=/tmp/sigcomp --reference=ref1.png --reference=ref2.png \\
        --questioned=q.png
    siamjax-verify --workdir=/tmp/sigcomp --pairs=pairs.csv --json > decisions.jsonl

What it is for: scoring user files (any scan PIL or tifffile reads, at any resolution) against a
trained workdir, one pair or a CSV of pairs, for people (an aligned table) or programs (`--json`).
Each file goes through the same `siamjax.preprocess` as the training data, each distinct file is
embedded once, and the head scores (reference, questioned) in the order training used. Batches are
padded to one shape, so nothing compiles again whatever the number of files.

What it is not for: measuring a model on a labelled split (that is `eval.py`), or choosing the
threshold: it comes from the checkpoint (chosen on the validation split), or `--threshold`.

Everything a user can fix (a bad path or file, a workdir without a run, a bad CSV) is one line on
stderr naming it, and exit code 2. With `--pairs` a bad row does not stop the others: they are
scored and the failures listed at the end (exit code 2 if any failed).

Python API: `Verifier(workdir).verify(references, questioned)` -> `Decision`;
`Verifier.verify_pairs(pairs)` yields a `Decision` or a `Failure` per `Pair`;
`Verifier.embeddings(paths)` -> the encoder's [n, D] embeddings of files;
`read_pairs_csv(path)` -> the `Pair`s of a CSV.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from siamjax.errors import UserError

FUSIONS = ("mean", "max", "min")  # Those of evaluate_metrics.FUSE_METHODS (imported lazily).
GENUINE, FORGED = "genuine", "forged"
# Images per jitted embedding call (rounded up to a multiple of the devices). Small, because a
# typical call has a handful of files; a CSV of thousands still runs at a useful batch size.
DEFAULT_BATCH_SIZE = 32
# Pairs of a CSV handled together: their new files are read, embedded and scored, then printed.
# Bounds memory (images live only while their chunk is processed; embeddings are cached).
PAIRS_PER_CHUNK = 512
REFERENCE_SEPARATOR = ";"  # Between several references in one CSV cell.


@dataclasses.dataclass(frozen=True)
class Pair:
    """One question: is `questioned` by the writer of `references` (one or more genuine files)?"""

    references: tuple[str, ...]
    questioned: str
    id: str = ""


@dataclasses.dataclass(frozen=True)
class Decision:
    """The answer to a `Pair`. Scores are probabilities that the questioned file is genuine.

    `score` fuses `reference_scores` (one per reference, in order) with `fusion`; `llr` is
    logit(score) - logit(prior_positive), in nats (> 0 favours genuine), where `prior_positive` is
    the share of genuine pairs the model was trained on; `decision` is "genuine" iff
    score >= threshold.
    """

    id: str
    questioned: str
    references: tuple[str, ...]
    reference_scores: tuple[float, ...]
    fusion: str
    score: float
    llr: float
    prior_positive: float
    threshold: float
    decision: str
    checkpoint_step: int

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["references"], d["reference_scores"] = list(self.references), list(self.reference_scores)
        if not self.id:
            del d["id"]
        return d


@dataclasses.dataclass(frozen=True)
class Failure:
    """A `Pair` (or CSV row) that could not be scored, and why (one line naming the file)."""

    id: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "error": self.error}


def display_path(path: str | os.PathLike) -> str:
    """How outputs and errors name a file: relative to the working directory when it lies inside
    it, else as given (normalised), so that a user recognises what they typed."""
    given = os.path.normpath(os.fspath(path))
    rel = os.path.relpath(os.path.abspath(given))
    return given if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_config(workdir: str | os.PathLike) -> Any:
    """The ConfigDict a workdir was trained with, from the config.json that train.py writes."""
    import ml_collections

    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        what = "is not a directory" if os.path.exists(workdir) else "does not exist"
        raise UserError(f"--workdir {workdir} {what}: pass the workdir of a training run.")
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UserError(
            f"{path} not found: --workdir must be the workdir of a training run "
            "(train.py writes config.json there)."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the training config ({_one_line(e)}).") from e
    if not isinstance(doc, dict) or not {"image_height", "image_width", "model"} <= doc.keys():
        raise UserError(
            f"{path} is not a siamjax training config (no image_height, image_width "
            "and model keys)."
        )
    return ml_collections.ConfigDict(doc)


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
        self.fusion = fusion
        self._requested_step, self._threshold_override = step, threshold
        self._batch_size = batch_size
        self._workers = workers or min(8, os.cpu_count() or 1)
        self._model: Any = None
        self._embeddings: dict[str, np.ndarray] = {}  # Absolute path -> [D] float32.
        self._bad_files: dict[str, str] = {}  # Absolute path -> one-line error.

    # ---- the model, restored lazily --------------------------------------------------------

    def _ensure_model(self) -> None:
        if self._model is not None:
            return
        import jax

        from siamjax import eval_lib, parallel
        from siamjax.models import SiameseNet

        # Local devices only: a verifier is one process, even on a host of a multi-host job.
        mesh = parallel.make_mesh(jax.local_devices())
        n = mesh.devices.size
        self.batch_size = -(-self._batch_size // n) * n
        model, variables, step, meta = eval_lib.restore_for_inference(
            self.config, self.workdir, self._requested_step, mesh
        )
        threshold = self._threshold_override
        self.threshold_source = "--threshold"
        if threshold is None:
            threshold = meta.get("val_threshold")
            self.threshold_source = "calibrated on validation"
        if threshold is None:
            raise UserError(
                f"the checkpoint of step {step} in {self.workdir} was saved without a "
                "validation, so it has no calibrated threshold: pass --threshold, or "
                "a --step that was validated."
            )
        self.threshold = float(threshold)
        self.prior_positive = float(meta.get("prior_positive") or self.config.pairs.positive)
        self.step = int(step)
        data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
        self._embed_fn = jax.jit(
            lambda v, x: model.apply(v, x, method=SiameseNet.embed),
            in_shardings=(rep, data),
            out_shardings=rep,
        )
        self._score_fn = jax.jit(
            lambda v, e1, e2: model.apply(v, e1, e2, method=SiameseNet.score),
            in_shardings=(rep, data, data),
            out_shardings=rep,
        )
        self._variables = variables
        self._model = model

    def _padded(self, fn, *arrays: np.ndarray) -> np.ndarray:
        """`fn(variables, *batch)` over batches of `batch_size` rows of `arrays`; the last batch is
        padded with copies of its first row, so that `fn` compiles once."""
        n, size = len(arrays[0]), self.batch_size
        out = []
        for start in range(0, n, size):
            rows = [a[start : start + size] for a in arrays]
            m = len(rows[0])
            rows = [np.concatenate([r, np.repeat(r[:1], size - m, axis=0)]) for r in rows]
            out.append(np.asarray(fn(self._variables, *rows))[:m])
        return np.concatenate(out)

    # ---- files -> embeddings ---------------------------------------------------------------

    def _preprocess(self, key_and_name: tuple[str, str]) -> np.ndarray | str:
        from siamjax.preprocess import preprocess_file

        try:
            return preprocess_file(key_and_name[1], self.height, self.width)
        except UserError as e:
            return _one_line(str(e))

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
        emb = self._padded(self._embed_fn, np.stack([r for _, r in good]))
        self._embeddings.update((k, e) for (k, _), e in zip(good, emb, strict=True))

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
        import jax
        import jax.numpy as jnp

        from siamjax import evaluate_metrics

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
            logits = self._padded(self._score_fn, e_ref, e_q)
            # As evaluate.sigmoid, so that the scores are those the threshold was chosen on.
            scores = np.asarray(jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)), np.float64)
        start = 0
        for i, pair in enumerate(pairs):
            if results[i] is not None:
                continue
            k = len(pair.references)
            per_ref = scores[start : start + k]
            start += k
            fused = float(evaluate_metrics.fuse_scores(per_ref[None, :], self.fusion)[0])
            llr = float(evaluate_metrics.llr(np.array([fused]), self.prior_positive)[0])
            results[i] = Decision(
                id=pair.id,
                questioned=display_path(pair.questioned),
                references=tuple(display_path(r) for r in pair.references),
                reference_scores=tuple(float(s) for s in per_ref),
                fusion=self.fusion,
                score=fused,
                llr=llr,
                prior_positive=self.prior_positive,
                threshold=self.threshold,
                decision=GENUINE if fused >= self.threshold else FORGED,
                checkpoint_step=self.step,
            )
        return results  # type: ignore[return-value]


def read_pairs_csv(path: str | os.PathLike) -> list[Pair]:
    """The pairs of a CSV with a header naming `reference`, `questioned` and optionally `id`.

    A reference cell may hold several paths separated by ';'. Relative paths are relative to the
    CSV's folder (so the CSV works from any directory). A row without an `id` gets its line number
    (the header is line 1). An empty cell stays empty: `Verifier.verify_pairs` reports that row.
    A missing or unreadable file, or a header without the two columns, raises `UserError`.
    """
    name = display_path(path)
    base = os.path.dirname(os.fspath(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            columns = [c.strip().lower() for c in header or []]
            if "reference" not in columns or "questioned" not in columns:
                raise UserError(
                    f"{name}: the first line must name the columns 'reference' and "
                    f"'questioned' (and optionally 'id'); it is {header or 'empty'}."
                )
            at = {c: columns.index(c) for c in ("reference", "questioned", "id") if c in columns}
            pairs = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                cell = {c: row[i].strip() if i < len(row) else "" for c, i in at.items()}
                refs = [r.strip() for r in cell["reference"].split(REFERENCE_SEPARATOR)]
                questioned = cell["questioned"] and os.path.join(base, cell["questioned"])
                pairs.append(
                    Pair(
                        tuple(os.path.join(base, r) for r in refs if r),
                        questioned,
                        cell.get("id") or str(reader.line_num),
                    )
                )
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{name}: cannot read the pairs CSV ({_one_line(e)})") from e
    if not pairs:
        raise UserError(f"{name}: no pairs below the header.")
    return pairs


# ---------------------------------------------------------------------------------------------
# The command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamjax-verify",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Scores questioned signatures against genuine references of the claimed writer with\n"
            "a trained siamjax workdir. score = probability that the questioned signature is\n"
            "genuine (fused over the references); decision: genuine iff score >= threshold."
        ),
        epilog=(
            "examples:\n"
            "  siamjax-verify --workdir run/ --reference ref1.png ref2.png --questioned q.png\n"
            "  siamjax-verify --workdir run/ --reference ref.tif --questioned q.jpg --json\n"
            "  siamjax-verify --workdir run/ --pairs pairs.csv --fusion min --json > out.jsonl\n"
            "\n"
            "pairs.csv:\n"
            "  id,reference,questioned\n"
            "  case1,scans/a1.png;scans/a2.png,scans/q1.png\n"
            "\n"
            "files: any image PIL or tifffile reads (PNG of any mode, JPEG, TIFF, BMP, ...), any\n"
            "resolution; they are normalised as the training data was.\n"
            "exit codes: 0 every pair decided; 2 a bad argument, workdir or file (with --pairs:\n"
            "some pair failed; the others are still printed, the failures listed at the end)."
        ),
    )
    p.add_argument(
        "--workdir",
        required=True,
        help="workdir of a training run (holds config.json and checkpoints/)",
    )
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: the best by validation EER)",
    )
    p.add_argument(
        "--reference",
        action="extend",
        nargs="+",
        default=[],
        metavar="IMG",
        help="genuine signature of the claimed writer; repeat for K references",
    )
    p.add_argument("--questioned", metavar="IMG", help="the signature to verify")
    p.add_argument(
        "--pairs",
        metavar="CSV",
        help="batch mode: a CSV with a header and columns reference (paths separated "
        "by ';'), questioned and optionally id; relative paths are relative to "
        "the CSV's folder",
    )
    p.add_argument(
        "--fusion",
        choices=FUSIONS,
        default="mean",
        help="how the scores against K references become one (default: mean)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold in [0, 1] (default: the one calibrated on the "
        "validation split, stored with the checkpoint)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON: one object, or with --pairs one object per line (JSON Lines)",
    )
    p.add_argument("--verbose", action="store_true", help="keep JAX/orbax log messages")
    return p


def _quiet(verbose: bool) -> None:
    """Keeps TF, XLA, JAX and orbax messages off the terminal: stdout carries only results."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose else "3")
    if verbose:
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    for name in ("jax", "orbax", "absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def format_decision(d: Decision, threshold_source: str) -> str:
    """The aligned table of one decision, for people."""
    k = len(d.references)
    rows = [("questioned", "", d.questioned)]
    rows += [
        ("reference" + (f" {i + 1}" if k > 1 else ""), f"{s:.4f}", r)
        for i, (r, s) in enumerate(zip(d.references, d.reference_scores, strict=True))
    ]
    how = f"{d.fusion} of {k} references" if k > 1 else "probability genuine"
    rows += [
        ("score", f"{d.score:.4f}", how),
        ("llr", f"{d.llr:+.3f}", "nats; > 0 favours genuine"),
        (
            "threshold",
            f"{d.threshold:.4f}",
            f"{threshold_source} (checkpoint step {d.checkpoint_step})",
        ),
        ("decision", d.decision.upper(), ""),
    ]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)


def _batch_header(v: Verifier, id_width: int) -> str:
    return (
        f"# threshold {v.threshold:.4f} ({v.threshold_source}), fusion {v.fusion}, "
        f"checkpoint step {v.step}\n"
        f"{'id':<{id_width}}  {'score':<6}  {'llr':>7}  {'decision':<8}  questioned  "
        "references (scores)"
    )


def _batch_row(d: Decision, id_width: int) -> str:
    refs = "; ".join(
        f"{r} ({s:.4f})" for r, s in zip(d.references, d.reference_scores, strict=True)
    )
    return (
        f"{d.id:<{id_width}}  {d.score:.4f}  {d.llr:+7.3f}  {d.decision:<8}  {d.questioned}  {refs}"
    )


def _error(message: str) -> None:
    print(f"error: {_one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit code (0, or 2 when anything the user gave was unusable)."""
    parser = _parser()
    args = parser.parse_args(argv)
    single = args.questioned is not None or args.reference
    if args.pairs and single:
        parser.error("give either --pairs, or --reference and --questioned, not both")
    if not args.pairs and not (args.questioned and args.reference):
        parser.error("give --reference (one or more) and --questioned, or --pairs")
    _quiet(args.verbose)
    try:
        from siamjax import cli

        cli.hide_gpus_from_tensorflow()
        verifier = Verifier(
            args.workdir, step=args.step, threshold=args.threshold, fusion=args.fusion
        )
        if args.pairs:
            return _run_batch(verifier, args.pairs, args.json)
        decision = verifier.verify(args.reference, args.questioned)
    except UserError as e:
        _error(str(e))
        return 2
    if args.json:
        print(json.dumps(decision.to_json()))
    else:
        print(format_decision(decision, verifier.threshold_source))
    return 0


def _run_batch(verifier: Verifier, csv_path: str, as_json: bool) -> int:
    pairs = read_pairs_csv(csv_path)
    failures = []
    id_width = max([len(p.id) for p in pairs] + [2])
    header_done = False
    for result in verifier.verify_pairs(pairs):
        if isinstance(result, Failure):
            failures.append(result)
        elif as_json:
            print(json.dumps(result.to_json()), flush=True)
        else:
            if not header_done:
                print(_batch_header(verifier, id_width))
                header_done = True
            print(_batch_row(result, id_width), flush=True)
    for f in failures:
        if as_json:
            print(json.dumps(f.to_json()))
        _error(f"pair {f.id}: {f.error}")
    if failures:
        print(f"{len(failures)} of {len(pairs)} pairs failed", file=sys.stderr)
    return 2 if failures else 0


def run() -> None:
    """Entry point of the `siamjax-verify` console script and of `python -m siamjax.verify`."""
    if "--verbose" not in sys.argv:
        warnings.filterwarnings("ignore")  # Library deprecation notes are not for this user.
    sys.exit(main())


if __name__ == "__main__":
    run()
