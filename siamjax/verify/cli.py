"""The `siamjax-verify` command line: arguments, output for people (an aligned table) or programs
(JSON), exit codes. Scoring is `siamjax.verify.lib`'s.

Everything a user can fix is one line on stderr naming it, and exit code 2. With `--pairs` a bad
row does not stop the others: they are scored and the failures listed at the end (exit code 2 if
any failed). TensorFlow is never imported: nothing on this path needs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from siamjax import entry
from siamjax.errors import UserError, one_line
from siamjax.verify.lib import ENROLLMENTS, FUSIONS, Verifier
from siamjax.verify.records import Decision, Failure, read_pairs_csv


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
        "--enrollment",
        choices=ENROLLMENTS,
        default=None,
        help="writer enrolment of the K references (siamjax/enrollment.py; default: the "
        "workdir's config.eval.enrollment); other than 'none' it needs the threshold eval.py "
        "chose for it on validation (--config.eval.enrollment=... --config.eval.references=K)",
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


def format_decision(d: Decision, threshold_source: str) -> str:
    """The aligned table of one decision, for people."""
    k = len(d.references)
    rows = [("questioned", "", d.questioned)]
    rows += [
        ("reference" + (f" {i + 1}" if k > 1 else ""), f"{s:.4f}", r)
        for i, (r, s) in enumerate(zip(d.references, d.reference_scores, strict=True))
    ]
    if d.enrollment != "none":  # The enrolment's own score, not a fusion of the pair scores.
        how = f"{d.enrollment} enrolment of {k} reference{'s' if k > 1 else ''}"
    else:
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
    print(f"error: {one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit code (0, or 2 when anything the user gave was unusable)."""
    parser = _parser()
    args = parser.parse_args(argv)
    single = args.questioned is not None or args.reference
    if args.pairs and single:
        parser.error("give either --pairs, or --reference and --questioned, not both")
    if not args.pairs and not (args.questioned and args.reference):
        parser.error("give --reference (one or more) and --questioned, or --pairs")
    entry.quiet_terminal(args.verbose)
    try:
        verifier = Verifier(
            args.workdir,
            step=args.step,
            threshold=args.threshold,
            fusion=args.fusion,
            enrollment=args.enrollment,
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
    entry.run_console(main)  # TensorFlow is never imported here.


if __name__ == "__main__":
    run()
