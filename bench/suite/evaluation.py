"""After training: eval.py's peak RSS, siamjax-verify's latency, scoring memory (eval_memory),
embedding throughput (eval_embed), and layouts (processes x devices)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import statistics
import sys
import time

from suite.common import (
    CHILD_ENV,
    IMAGE_SUFFIXES,
    BenchError,
    Context,
    benchmark,
    load_config,
    run_child,
)
from suite.end_to_end import _workdir


@benchmark("eval_rss")
def bench_eval_rss(ctx: Context):
    t = _workdir(ctx)
    child = run_child(
        [
            sys.executable,
            "eval.py",
            f"--config={t['config']}",
            f"--workdir={t['workdir']}",
            *t["overrides"],
        ],
        ctx.args.timeout,
    )
    if child.rc != 0:
        raise BenchError(child.failure())
    metrics_path = os.path.join(t["workdir"], "eval", "test", "metrics.json")
    eer = None
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            eer = json.load(f).get("metrics", {}).get("eer")
    yield (
        "eval_rss",
        {
            "config": t["config"],
            "split": "test",
            "peak_rss_mb": child.max_rss_mb,
            "wall_s": child.wall_s,
            "eer": eer,
        },
    )


def _verify_images(ctx: Context) -> tuple[list[str], str]:
    """Scans as users have them (the originals), else PNGs drawn by the synthetic generator."""
    root = ctx.args.verify_images
    files = []
    if root and os.path.isdir(root):
        for d, _, names in os.walk(root):
            files += [os.path.join(d, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    if len(files) >= 2:
        return sorted(files), root
    from PIL import Image

    from siamjax.datasets.synthetic import generator as synthetic

    out = os.path.join(ctx.tmp, "verify_images")
    os.makedirs(out, exist_ok=True)
    for w in range(4):
        writer = synthetic.make_writer(0, w)
        for g in range(8):
            img = synthetic.render_genuine(writer, g, 300, 440, 0, w)[..., 0]
            path = os.path.join(out, f"w{w}_{g}.png")
            Image.fromarray(255 - img).save(path)  # Dark ink on paper, as a scan.
            files.append(path)
    return files, "siamjax.datasets.synthetic.generator"


@benchmark("verify")
def bench_verify(ctx: Context):
    t = _workdir(ctx)
    files, source = _verify_images(ctx)
    env = {**CHILD_ENV, "PYTHONUNBUFFERED": "1"}  # Each decision line arrives when printed.
    base = [sys.executable, "-m", "siamjax.verify", "--workdir", t["workdir"], "--json"]
    cold = run_child(
        base + ["--reference", files[0], "--questioned", files[1]], ctx.args.timeout, env
    )
    decided = [tl for tl in cold.json_lines() if "decision" in tl[1]]
    if cold.rc != 0 or not decided:
        raise BenchError(cold.failure())
    cold_s = decided[0][0]
    n = ctx.args.verify_pairs
    csv_path = os.path.join(ctx.tmp, "verify_pairs.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "reference", "questioned"])
        for i in range(n):
            w.writerow([f"p{i}", files[(2 * i) % len(files)], files[(2 * i + 1) % len(files)]])
    warm = run_child(base + ["--pairs", csv_path], ctx.args.timeout, env)
    decided = [tl for tl in warm.json_lines() if "decision" in tl[1]]
    if warm.rc != 0 or len(decided) != n:
        raise BenchError(f"{len(decided)} of {n} pairs decided; " + warm.failure())
    last = decided[-1][0]
    distinct = len({files[j % len(files)] for j in range(2 * n)})
    yield (
        "verify",
        {
            "config": t["config"],
            "images": source,
            "cold_start_s": cold_s,
            "cold_wall_s": cold.wall_s,
            "cold_peak_rss_mb": cold.max_rss_mb,
            "pairs": n,
            "distinct_files": distinct,
            "pairs_first_to_last_decision_s": last,
            "warm_pairs_per_s": n / (last - cold_s) if last > cold_s else None,
            "pairs_peak_rss_mb": warm.max_rss_mb,
        },
    )


def _load_sibling(name: str):
    """bench/<name>.py as a module (bench/ is a folder of scripts, not a package)."""

    bench = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(bench, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"siamjax_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@benchmark("layouts")
def bench_layouts(ctx: Context):
    """Training pairs/s of 1x1, 1x8 and 2x4 (processes x devices) on simulated CPU devices."""
    for r in _load_sibling("layouts").bench_layouts(steps=ctx.args.layout_steps):
        yield ("layouts", r)


@benchmark("eval_memory")
def bench_eval_memory(ctx: Context):
    """Peak RSS of scoring 1k, 10k and 100k pairs over cached embeddings: flat by design."""
    for r in _load_sibling("eval_memory").bench_eval_memory():
        yield ("eval_memory", r)


@benchmark("eval_embed")
def bench_eval_embed(ctx: Context):
    a = ctx.args
    ctx.hide_gpus_from_tensorflow()
    import jax
    import numpy as np

    from siamjax import inference, models, parallel, train_lib

    cfg = load_config(a.eval_config)
    if a.eval_dtype:
        cfg.model.dtype = a.eval_dtype
    cfg.eval_batch_size = a.eval_batch
    mesh = parallel.make_mesh()
    model = models.create_model(cfg.model)
    state, _ = train_lib.init_state_on_mesh(cfg, model, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    scorer = inference.Scorer(model, mesh, cfg.eval_batch_size)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (a.eval_images, cfg.image_height, cfg.image_width, 1), np.uint8)
    t0 = time.perf_counter()
    emb = scorer.embeddings(variables, images[: cfg.eval_batch_size])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(a.eval_repeats):
        t0 = time.perf_counter()
        emb = scorer.embeddings(variables, images)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    yield (
        "eval_embed",
        {
            "config": a.eval_config,
            "encoder": cfg.model.encoder,
            "dtype": cfg.model.dtype,
            "image_size": [cfg.image_height, cfg.image_width],
            "eval_batch_size": cfg.eval_batch_size,
            "images": a.eval_images,
            "repeats": a.eval_repeats,
            "embeddings_per_s": a.eval_images / med,
            "seconds_median": med,
            "compile_s": compile_s,
            "embedding_dim": int(emb.shape[1]),
            "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        },
    )
