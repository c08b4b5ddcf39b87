"""onnxruntime against siamjax (JAX) on this CPU: one pair, a batch, and a whole process.

    python bench/onnx_vs_jax.py --workdir W [--out DIR] [--batch 64] [--rounds 15]

Exports W (siamjax-export, into --out or a temporary folder), then alternates rounds of the two
runtimes in this process, so that both share whatever else the machine is doing:
  pair:  2 preprocessed images embedded and 1 pair scored, fused and decided
         (JAX: `Verifier.embed_images` + `decide_embeddings`; onnxruntime: the example's
         `OnnxVerifier.embed` + `scores` + `decide`);
  batch: --batch images embedded, the last scored against the --batch - 1 others and fused.
Preprocessing is left out of both (it is the same numpy code), and so is the first call
(compilation, session warm-up). Then `process`: the wall time of a fresh process that decides one
pair from files, `python examples/onnx_verify.py` against `python -m siamjax.verify`, alternated
--process_rounds times. Images are real scans where $SIAMJAX_DATA_DIR has SigComp2011, else
synthetic signatures. Prints one JSON line: medians, every round, the ratios
onnxruntime / siamjax (below 1: onnxruntime is faster) and the largest score difference seen.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _example():
    spec = importlib.util.spec_from_file_location(
        "onnx_verify", os.path.join(REPO, "examples", "onnx_verify.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scan_paths(n: int, folder: str) -> tuple[list[str], str]:
    """n scan files: SigComp2011's where the data is here, else synthetic ones written to folder."""
    root = os.path.join(os.environ.get("SIAMJAX_DATA_DIR", ""), "sigcomp2011", "sign_data", "train")
    if os.path.isdir(root):
        paths = []
        for writer in sorted(os.listdir(root)):
            d = os.path.join(root, writer)
            paths += sorted(os.path.join(d, f) for f in os.listdir(d))
        step = max(1, len(paths) // n)
        return paths[::step][:n], "sigcomp2011"
    from PIL import Image

    from siamjax.datasets.synthetic import generator as synthetic

    out = []
    for i in range(n):
        w = synthetic.make_writer(5, i % 12)
        ink = synthetic.render_genuine(w, i // 12, 90, 150, 5, i % 12)
        page = np.full((130, 210), 255, np.uint8)
        page[20:110, 30:180] = 255 - ink[..., 0]
        out.append(os.path.join(folder, f"s{i}.png"))
        Image.fromarray(page).save(out[-1])
    return out, "synthetic"


def _time(fn, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default=None, help="export folder (default: a temporary one)")
    p.add_argument("--batch", type=int, default=64, help="images in the batch case")
    p.add_argument("--rounds", type=int, default=15, help="alternated rounds of each case")
    p.add_argument("--reps", type=int, default=20, help="pair decisions timed per round")
    p.add_argument("--process_rounds", type=int, default=3)
    p.add_argument("--note", default="", help="copied into the line (e.g. what else ran)")
    args = p.parse_args()

    from suite.common import commit_info, machine_info  # bench/suite/, beside this file.

    from siamjax import entry, export
    from siamjax.verify import Verifier, config_fusion, load_config

    entry.prepare_process()
    tmp = tempfile.TemporaryDirectory()
    out = args.out or os.path.join(tmp.name, "model")
    export.export(args.workdir, out)
    config = load_config(args.workdir)
    jax_v = Verifier(args.workdir, fusion=config_fusion(config)).load()
    onnx_v = _example().OnnxVerifier(out)
    paths, source = _scan_paths(args.batch, tmp.name)
    images = np.stack([onnx_v.preprocess(q) for q in paths])
    pair = images[:2]

    def jax_pair():
        e = jax_v.embed_images(pair)
        return jax_v.decide_embeddings(e[:1], e[1], ["r"], "q").score

    def onnx_pair():
        e = onnx_v.embed(pair)
        return onnx_v.decide(onnx_v.scores(e[:1], e[1:]), ["r"], "q")["score"]

    names = [f"r{i}" for i in range(len(images) - 1)]

    def jax_batch():  # The last image questioned against all the others.
        e = jax_v.embed_images(images)
        return jax_v.decide_embeddings(e[:-1], e[-1], names, "q").reference_scores

    def onnx_batch():
        e = onnx_v.embed(images)
        return onnx_v.decide(onnx_v.scores(e[:-1], np.repeat(e[-1:], len(names), 0)), names, "q")[
            "reference_scores"
        ]

    diffs = [abs(jax_pair() - onnx_pair())]  # Warm-up: compiles, and the first parity figure.
    diffs.append(float(np.abs(np.subtract(jax_batch(), onnx_batch())).max()))
    rounds = {k: [] for k in ("jax_pair", "onnx_pair", "jax_batch", "onnx_batch")}
    for _ in range(args.rounds):
        rounds["jax_pair"].append(_time(jax_pair, args.reps))
        rounds["onnx_pair"].append(_time(onnx_pair, args.reps))
        rounds["jax_batch"].append(_time(jax_batch, 1))
        rounds["onnx_batch"].append(_time(onnx_batch, 1))

    # Whole processes: from `python ...` to the decision printed, one pair of files.
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    refs, q = paths[:1], paths[1]
    commands = {
        "onnx_process": [sys.executable, os.path.join(REPO, "examples", "onnx_verify.py"), out]
        + ["--reference", *refs, "--questioned", q],
        "jax_process": [sys.executable, "-m", "siamjax.verify", "--workdir", args.workdir]
        + ["--reference", *refs, "--questioned", q, "--json", "--fusion", jax_v.fusion],
    }
    process = {k: [] for k in commands}
    decisions = {}
    for _ in range(args.process_rounds):
        for name, cmd in commands.items():
            start = time.perf_counter()
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            process[name].append(time.perf_counter() - start)
            decisions[name] = json.loads(r.stdout)
    diffs.append(abs(decisions["onnx_process"]["score"] - decisions["jax_process"]["score"]))

    med = {k: statistics.median(v) for k, v in {**rounds, **process}.items()}
    line = {
        "benchmark": "onnx_vs_jax",
        "note": args.note,
        "workdir": os.path.abspath(args.workdir),
        "model": config.model.to_dict(),
        "input": [jax_v.height, jax_v.width],
        "images": source,
        "batch": args.batch,
        "pair_ms": {"siamjax": med["jax_pair"] * 1e3, "onnxruntime": med["onnx_pair"] * 1e3},
        "batch_ms": {"siamjax": med["jax_batch"] * 1e3, "onnxruntime": med["onnx_batch"] * 1e3},
        "process_s": {"siamjax": med["jax_process"], "onnxruntime": med["onnx_process"]},
        "ratio_onnx_over_jax": {
            "pair": med["onnx_pair"] / med["jax_pair"],
            "batch": med["onnx_batch"] / med["jax_batch"],
            "process": med["onnx_process"] / med["jax_process"],
        },
        "max_abs_score_diff": float(max(diffs)),
        "same_decision": decisions["onnx_process"]["decision"]
        == decisions["jax_process"]["decision"],
        "rounds": args.rounds,
        "every_round_ms": {k: [round(x * 1e3, 3) for x in v] for k, v in rounds.items()},
        "every_process_s": {k: [round(x, 3) for x in v] for k, v in process.items()},
        "machine": machine_info(),
        "load_avg_1m": os.getloadavg()[0],
        **commit_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
