"""input_pipeline: TrainData.batches() alone, no device work."""

from __future__ import annotations

import os
import time

from suite.common import Context, benchmark, load_config, real_data_dir


@benchmark("input_pipeline")
def bench_input_pipeline(ctx: Context):
    a = ctx.args
    ctx.hide_gpus_from_tensorflow()
    from siamjax.data import Data
    from siamjax.datasets import registry
    from siamjax.input_pipeline import TrainData

    data_dir = real_data_dir()
    spec = a.pipeline_config or ("configs/sigcomp.py" if data_dir else "configs/synthetic.py")
    cfg = load_config(spec)
    if not os.environ.get("SIAMJAX_TFDS_DIR"):
        cfg.tfds_data_dir = os.path.join(ctx.tmp, "tfds")
    if a.pipeline_batch:
        cfg.batch_size = a.pipeline_batch
    t0 = time.perf_counter()
    train = TrainData(Data(cfg), cfg)
    setup_s = time.perf_counter() - t0
    batches = train.batches()
    t0 = time.perf_counter()
    next(batches)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.pipeline_batches):
        next(batches)
    seconds = time.perf_counter() - t0
    yield (
        "input_pipeline",
        {
            "config": spec,
            "dataset": cfg.dataset,
            "data_dir": (cfg.data_dir or data_dir) if cfg.dataset != "synthetic" else None,
            "tfds_dir": registry.tfds_data_dir(cfg),
            "images": len(train.data.catalog.images),
            # device: batches of indices (the step gathers the images); host: of images.
            "gathered_on": "device" if train.on_device else "host",
            "image_size": [cfg.image_height, cfg.image_width],
            "batch": cfg.batch_size,
            "batches": a.pipeline_batches,
            "steps_per_epoch": train.steps_per_epoch,
            "pairs_per_s": a.pipeline_batches * cfg.batch_size / seconds,
            "seconds": seconds,
            "setup_s": setup_s,
            "first_batch_s": first_s,
        },
    )
