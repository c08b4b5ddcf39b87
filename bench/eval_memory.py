"""Peak memory of evaluation as the number of scored pairs grows: it must stay flat.

    python bench/eval_memory.py                                   # 1k, 10k, 100k pairs
    python bench/eval_memory.py --pairs=1000,100000 --embedding_dim=256 --images=200

`inference.Scorer.logits` embeds each image once and applies the head batch by batch, gathering
the two embeddings of only that batch's pairs, so its memory grows with images, not with pairs:
the per-pair arrays left are the pair indices and the scores (tens of bytes a pair). Gathering
both embeddings of every pair up front would instead cost 2 x D x 4 bytes a pair (`naive_mb`).

One fresh process scores random pairs over `--images` random images with an untrained model of
the tiny synthetic config (the memory does not depend on the weights), the counts in increasing
order, the first one twice (compilation and allocator warm-up). Per count it prints one JSON line:
the process's peak RSS (ru_maxrss) and its growth over the first count. A peak only rises, so
`growth_mb` is the most that any count up to this one needed beyond the first.

From Python (bench/run.py): `bench_eval_memory()` runs this file in a subprocess (the caller's own
peak would hide the growth) and returns the lines as dicts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PAIRS = (1_000, 10_000, 100_000)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB.


def measure(
    pair_counts: list[int], images: int, embedding_dim: int, batch: int, seed: int = 0
) -> list[dict]:
    """Scores `pair_counts` pairs in turn in this process; one dict per count."""
    sys.path.insert(0, REPO)
    import jax
    import numpy as np

    from configs import synthetic
    from siamjax import inference, models, parallel, scoring
    from siamjax import pairs as pairs_lib

    cfg = synthetic.get_config("tiny")
    cfg.model.embedding_dim = embedding_dim
    model = models.create_model(cfg.model)
    h, w = cfg.image_height, cfg.image_width
    dummy = np.zeros((2, h, w, 1), np.uint8)
    variables = jax.jit(lambda k: model.init({"params": k}, dummy, dummy, train=False))(
        jax.random.key(seed, impl="rbg")
    )
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (images, h, w, 1), dtype=np.uint8)
    scorer = inference.Scorer(model, parallel.make_mesh(), batch)

    def score(n: int) -> float:
        ab = rng.integers(0, images, (2, n), dtype=np.int32)
        kind = rng.integers(0, 3, n, dtype=np.int32)
        p = pairs_lib.Pairs(ab[0], ab[1], (kind == pairs_lib.GENUINE).astype(np.int32), kind)
        t0 = time.perf_counter()
        scores = scoring.probabilities(scorer.logits(variables, imgs, p))
        assert scores.shape == (n,) and np.all(np.isfinite(scores))
        return time.perf_counter() - t0

    counts = sorted(pair_counts)
    score(counts[0])  # Compiles; the measured runs start from a warm process.
    out, base = [], None
    for n in counts:
        seconds = score(n)
        peak = _peak_rss_mb()
        base = peak if base is None else base
        out.append(
            {
                "bench": "eval_memory",
                "pairs": n,
                "images": images,
                "embedding_dim": embedding_dim,
                "eval_batch_size": batch,
                "devices": jax.device_count(),
                "peak_rss_mb": round(peak, 1),
                "growth_mb": round(peak - base, 1),
                "naive_mb": round(2 * n * embedding_dim * 4 / 2**20, 1),
                "seconds": round(seconds, 3),
            }
        )
    return out


def bench_eval_memory(
    pairs: tuple[int, ...] = DEFAULT_PAIRS,
    images: int = 200,
    embedding_dim: int = 256,
    batch: int = 1024,
    timeout: float = 600,
) -> list[dict]:
    """Runs `measure` in a fresh single-device CPU process; its JSON lines as dicts."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--pairs=" + ",".join(map(str, pairs)),
        f"--images={images}",
        f"--embedding_dim={embedding_dim}",
        f"--batch={batch}",
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--pairs", default=",".join(map(str, DEFAULT_PAIRS)), help="Comma-separated pair counts."
    )
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--embedding_dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1024, help="eval_batch_size.")
    args = ap.parse_args()
    for line in measure(
        [int(p) for p in args.pairs.split(",")], args.images, args.embedding_dim, args.batch
    ):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
