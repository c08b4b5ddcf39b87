#!/usr/bin/env bash
# The GPU benchmark: siamjax train-step pairs/s, TFLOP/s and MFU at batch 256 and 1024 in bfloat16,
# each beside the PyTorch reference (eager-bf16-cl) when torch is importable. About 3 minutes on an
# H100 or H200 (JAX and siamjax's dependencies installed; no network needed), under 6 in any case.
#
#   bash bench/gpu.sh                    # JSON lines (bench/run.py), then an MFU table
#   OUT=/some/dir bash bench/gpu.sh      # also writes $OUT/bench_gpu.jsonl
#
# Environment: PYTHON (default python), STEPS (timed steps per setting, default 30), BATCHES
# (default 256,1024), TORCH_REFERENCE (default ../shared/bench/torch_reference.py, else
# shared/bench/torch_reference.py), TORCH_WHEELS (a folder of wheels to install torch from, offline,
# when it is missing). MFU = achieved FLOP/s (7.23 GFLOP per SigNet pair) / the chip's dense bf16
# peak (H100 SXM and H200: 989 TFLOP/s), the chip read from JAX's device kind.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
STEPS=${STEPS:-30}
BATCHES=${BATCHES:-256,1024}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

echo "== gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"

# JAX must see a GPU: the batch-1024 setting would take hours on a CPU.
"$PYTHON" - <<'EOF'
import sys
import jax
d = jax.devices()
print(f"== jax {jax.__version__}: {len(d)}x {d[0].device_kind} ({d[0].platform})")
if d[0].platform != "gpu":
    sys.exit("error: JAX sees no GPU; this script is for an H100/H200 (bench/run.py runs anywhere)")
EOF

missing=$("$PYTHON" - <<'EOF'
import importlib
names = ["flax", "optax", "ml_collections", "tensorflow", "tensorflow_datasets", "clu",
         "orbax.checkpoint", "absl", "siamjax"]
bad = []
for n in names:
    try:
        importlib.import_module(n)
    except Exception as e:  # noqa: BLE001
        bad.append(f"{n} ({type(e).__name__}: {e})")
print("; ".join(bad))
EOF
)
if [[ -n "$missing" ]]; then
  echo "error: cannot import: $missing" >&2
  echo "install siamjax's dependencies first (pip install -e . from this folder)" >&2
  exit 4
fi

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  if [[ -n "${TORCH_WHEELS:-}" ]]; then
    echo "== torch missing: installing it from $TORCH_WHEELS (offline)"
    "$PYTHON" -m pip install --quiet --no-index --find-links "$TORCH_WHEELS" torch ||
      echo "== could not install torch from $TORCH_WHEELS"
  fi
fi
if "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "== torch $("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.is_available())')"
else
  echo "== torch is not importable: the torch_reference line will say 'skipped' (set TORCH_WHEELS to install it)"
fi

REF=${TORCH_REFERENCE:-}
if [[ -z "$REF" ]]; then
  for candidate in ../shared/bench/torch_reference.py shared/bench/torch_reference.py; do
    if [[ -f "$candidate" ]]; then REF=$candidate; break; fi
  done
fi
REF=${REF:-../shared/bench/torch_reference.py}  # Absent: run.py prints a 'skipped' line.

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  JSONL="$OUT/bench_gpu.jsonl"
else
  JSONL=$(mktemp /tmp/bench_gpu.XXXXXX.jsonl)
fi

rc=0
timeout 330 "$PYTHON" bench/run.py --only train_step,torch_reference --batches "$BATCHES" \
  --dtypes bfloat16 --steps "$STEPS" --torch_reference "$REF" --timeout 240 --out "$JSONL" || rc=$?

"$PYTHON" - "$JSONL" <<'EOF'
import json
import sys

def pct(x):
    return f"{100 * x:5.1f}%" if x is not None else "    -"

def num(x, fmt):
    return format(x, fmt) if x is not None else "-"

print(f"\n== results ({sys.argv[1]})")
print(f"{'impl':<22} {'batch':>5} {'pairs/s':>9} {'TFLOP/s':>8} {'MFU':>6}  note")
for line in open(sys.argv[1]):
    r = json.loads(line)
    b = r["benchmark"]
    if "error" in r or "skipped" in r:
        note = r.get("skipped") or r["error"].splitlines()[-1]
        print(f"{b:<22} {r.get('batch', ''):>5} {'':>9} {'':>8} {'':>6}  {note[:120]}")
    elif b == "train_step":
        print(f"{'siamjax-' + r['dtype']:<22} {r['batch']:>5} {r['pairs_per_s']:>9.0f} "
              f"{num(r['tflops'], '.1f'):>8} {pct(r['mfu'])}  compile {r['compile_s']:.0f} s, "
              f"peak {num(r['peak_flops_per_chip'] and r['peak_flops_per_chip'] / 1e12, '.0f')} "
              f"TFLOP/s per chip, {r['device']}")
    elif b == "torch_reference":
        print(f"{'torch-' + r['mode']:<22} {r['batch']:>5} {r['torch_pairs_per_s']:>9.0f} "
              f"{num(r['torch_tflops'], '.1f'):>8} {pct(r['torch_mfu'])}  siamjax / torch = "
              f"{num(r['ratio_siamjax_over_torch'], '.2f')}")
EOF
exit "$rc"
