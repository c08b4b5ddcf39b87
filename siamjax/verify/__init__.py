"""siamjax-verify: is a questioned signature by the writer of some genuine references?

    siamjax-verify --workdir=/tmp/sigcomp --reference=ref1.png --reference=ref2.png \\
        --questioned=q.png
    siamjax-verify --workdir=/tmp/sigcomp --pairs=pairs.csv --json > decisions.jsonl

What it is for: scoring user files (any scan PIL or tifffile reads, at any resolution) against a
trained workdir, one pair or a CSV of pairs, for people (an aligned table) or programs (`--json`).
Each file goes through the same `siamjax.preprocess` as the training data, each distinct file is
embedded once, and the head scores (reference, questioned) in the order training used, through the
same `siamjax.inference` core as validation and eval.py. TensorFlow is never imported.

What it is not for: measuring a model on a labelled split (that is `eval.py`), or choosing the
threshold: it comes from the checkpoint (chosen on the validation split), or `--threshold`.

Python API (from `siamjax.verify.lib` and `siamjax.verify.records`):
`Verifier(workdir).verify(references, questioned)` -> `Decision`; `Verifier.verify_pairs(pairs)`
yields a `Decision` or a `Failure` per `Pair`; `Verifier.embeddings(paths)` -> the encoder's [n, D]
embeddings of files; `read_pairs_csv(path)` -> the `Pair`s of a CSV. For callers that hold bytes
and embeddings rather than files (`siamjax.serve`, `siamjax.export`): `Verifier.preprocess_bytes`,
`embed_images`, `decide_embeddings`, `model_identity`. The command line is
`siamjax.verify.cli`.
"""

from siamjax.verify.cli import format_decision, main, run
from siamjax.verify.lib import FUSIONS, Verifier, config_fusion, load_config
from siamjax.verify.records import Decision, Failure, Pair, display_path, read_pairs_csv

__all__ = [
    "FUSIONS",
    "Decision",
    "Failure",
    "Pair",
    "Verifier",
    "config_fusion",
    "display_path",
    "format_decision",
    "load_config",
    "main",
    "read_pairs_csv",
    "run",
]
