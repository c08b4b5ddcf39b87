#!/usr/bin/env bash
# The SigNet design rows of the README's results table, on one H100/H200 with JAX preinstalled,
# in about 5-8 minutes:
#   sigcomp2011_signet_bf16    configs/sigcomp.py, writer-disjoint 70/15/15, seeds 0 1 2
#   cedar_signet_bf16_kfold5   configs/cedar.py, --config.split.method=kfold, folds 0..4 (seed 0)
# plus, with EXTRA_EVALS=1, two evaluation-only rows per SigComp seed on the same workdirs:
#   sigcomp2011_signet_bf16_k5 (5 references, mean fusion), sigcomp2011_signet_bf16_to_cedar.
# The rows are named _bf16: bfloat16 runs on a GPU are other runs than the float32 CPU rows of
# scripts/cpu_results.sh (sigcomp2011_signet, ...), and a row's runs must be alike.
# Every run goes through scripts/run_result.py into results/<row>/<run>/; then
# scripts/results_table.py rebuilds results/table.json and the README table.
#
#   bash scripts/gpu_results.sh
#   WHEELS_DIR=.whl JOBS=3 bash scripts/gpu_results.sh
#   PREPARE_ONLY=1 SIAMJAX_DATA_DIR=../shared/datasets bash scripts/gpu_results.sh   # CPU, once
#
# Installs nothing from the internet (the GPU machine has none). What the machine lacks must come
# as wheels in $WHEELS_DIR, installed with --no-index into $SITE_DIR (leave jax out: the machine's
# CUDA JAX stays):
# tensorflow-cpu, tensorflow-datasets and their needs, ml-collections, clu, ... Fetch them where
# pip works, for the machine's Python (3.12 on this workplace's GPU image), e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl tensorflow-cpu==2.21.0 ...
# and check the list with this script's import check below. Data: the datasets must already be
# prepared at 150x220 in $SIAMJAX_TFDS_DIR (default workdirs/tfds; prepared data is tens of MB,
# the raw scans over 100 MB), or the raw scans must be in $SIAMJAX_DATA_DIR. PREPARE_ONLY=1
# prepares them and stops: run it where the raw scans are, then carry workdirs/tfds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
WHEELS_DIR="${WHEELS_DIR:-}"                   # Wheels of the missing packages ('' = none).
SITE_DIR="${SITE_DIR:-/tmp/siamjax_site}"      # Where those wheels are installed.
SEEDS="${SEEDS:-0 1 2}"
FOLDS="${FOLDS:-0 1 2 3 4}"
JOBS="${JOBS:-3}"                              # Runs sharing the GPU at a time.
EXTRA_EVALS="${EXTRA_EVALS:-0}"
PREPARE_ONLY="${PREPARE_ONLY:-0}"
LOGS="${LOGS:-workdirs/results/logs}"
# bf16 compute (parameters stay float32). The batch stays the design's 32: a SigNet step at 32 pairs
# takes milliseconds on an H100, so process start and compilation, not the steps, set the time.
MODEL_ARGS=(--config.model.dtype=bfloat16 --config.batch_size=32)

# Prepared datasets: workdirs/ is git-ignored, so carry workdirs/tfds to the GPU machine.
export SIAMJAX_TFDS_DIR="${SIAMJAX_TFDS_DIR:-$PWD/workdirs/tfds}"
# Raw scans are read only to prepare a dataset that is not prepared yet, but the builders want the
# folder to exist: the scans beside the checkout if there, else an empty folder.
if [ -z "${SIAMJAX_DATA_DIR:-}" ]; then
  SIAMJAX_DATA_DIR="$PWD/../shared/datasets"
  [ -d "$SIAMJAX_DATA_DIR" ] || SIAMJAX_DATA_DIR=/tmp/siamjax_no_raw_scans
fi
export SIAMJAX_DATA_DIR
mkdir -p "$SIAMJAX_TFDS_DIR" "$SIAMJAX_DATA_DIR" "$LOGS"
# Without .git in the copied tree, run.json records this commit instead.
export SIAMJAX_COMMIT="${SIAMJAX_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
# Compiled programs are shared between the runs: only the first of each shape compiles.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/workdirs/jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5
# JOBS processes share the GPU: each takes a share of its memory instead of 75%.
XLA_PYTHON_CLIENT_MEM_FRACTION="$("$PYTHON" -c "print(round(0.9 / $JOBS, 2))")"
export XLA_PYTHON_CLIENT_MEM_FRACTION
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1

if [ -n "$WHEELS_DIR" ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE_DIR" "$WHEELS_DIR"/*.whl
  export PYTHONPATH="$SITE_DIR${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c "import jax, flax, optax, orbax.checkpoint, tensorflow, tensorflow_datasets, \
ml_collections, clu, scipy, matplotlib, tifffile, PIL" 2>"$LOGS/imports.err"; then
  echo "error: a package is missing ($(tail -n 1 "$LOGS/imports.err")); bring it as a wheel in" \
    "WHEELS_DIR (see the top of $0)." >&2
  exit 2
fi
"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())"

# Prepare both datasets once, before runs that would otherwise prepare them side by side.
"$PYTHON" - <<'EOF'
from siamjax import entry

entry.hide_gpus_from_tensorflow()
from configs import cedar, sigcomp
from siamjax.datasets import registry

for make in (sigcomp.get_config, cedar.get_config):
    registry.prepare(make())
EOF
if [ "$PREPARE_ONLY" = 1 ]; then
  echo "prepared in $SIAMJAX_TFDS_DIR"
  exit 0
fi

# Runs "$@" (scripts/run_result.py arguments) in the background, JOBS at a time; its output goes
# to $LOGS/<name>.log and its exit code to $LOGS/<name>.rc.
launch() {
  local name="$1"
  shift
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "start $name"
  (
    rc=0
    "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$LOGS/$name.rc"
    echo "done  $name (exit $rc)"
  ) &
}

sigcomp_chain() {  # One seed: train + evaluate, then the evaluation-only rows on its workdir.
  local seed="$1"
  local args=(-- --config=configs/sigcomp.py "--config.seed=$seed" "${MODEL_ARGS[@]}")
  # errexit does not hold inside `launch`'s `||`: each step returns its own failure.
  "$PYTHON" scripts/run_result.py --row sigcomp2011_signet_bf16 --run "seed$seed" --order 14 \
    "${args[@]}" || return
  if [ "$EXTRA_EVALS" = 1 ]; then
    "$PYTHON" scripts/run_result.py --row sigcomp2011_signet_bf16_k5 \
      --train_row sigcomp2011_signet_bf16 --run "seed$seed" --order 15 \
      --eval_args="--config.eval.references=5" "${args[@]}" || return
    "$PYTHON" scripts/run_result.py --row sigcomp2011_signet_bf16_to_cedar \
      --train_row sigcomp2011_signet_bf16 --run "seed$seed" --order 16 \
      --eval_args="--config.eval.dataset=cedar" "${args[@]}" || return
  fi
}

rm -f "$LOGS"/*.rc
start=$(date +%s)
for seed in $SEEDS; do
  launch "sigcomp_seed$seed" sigcomp_chain "$seed"
done
for fold in $FOLDS; do
  launch "cedar_fold$fold" "$PYTHON" scripts/run_result.py --row cedar_signet_bf16_kfold5 \
    --run "fold$fold" --order 31 -- --config=configs/cedar.py --config.split.method=kfold \
    "--config.split.fold=$fold" --config.seed=0 "${MODEL_ARGS[@]}"
done
wait
echo "all runs finished in $(($(date +%s) - start)) s"

failed=0
for rc in "$LOGS"/*.rc; do
  if [ "$(cat "$rc")" != 0 ]; then
    echo "FAILED: ${rc%.rc}.log (exit $(cat "$rc")):" >&2
    tail -n 20 "${rc%.rc}.log" >&2
    failed=1
  fi
done
"$PYTHON" scripts/results_table.py
# The device tool brings back at most 8 files, 2 folders deep: one archive of what matters.
if [ -n "${OUT:-}" ]; then
  shopt -s nullglob
  tar -czf "$OUT/results.tgz" results README.md "$LOGS" workdirs/results/*/*/summary.json
  echo "wrote $OUT/results.tgz"
fi
exit "$failed"
