#!/usr/bin/env bash
# GPU benchmark run for a lent NVIDIA machine with no network:   bash benchmarks/gpu.sh OUTDIR
#
# Needs only the repository and a python3 that has torch with CUDA, numpy and transformers
# (matplotlib optional). Nothing is installed: `mm2face.*` is made importable through a folder of
# symlinks on PYTHONPATH. Runs, each under its own time limit (about 7.5 minutes in all):
#   1. environment check                         -> OUTDIR/env.json
#   2. latency, eager, in-process, + comparisons  -> OUTDIR/latency_eager/   (KV vs prefix at 5/10/30 s,
#      streaming vs offline, eager vs static shapes)
#   3. latency, torch.compile (CUDA graphs)       -> OUTDIR/latency_compile/
#   4. throughput, eager                          -> OUTDIR/throughput_eager/
#   5. throughput, compile                        -> OUTDIR/throughput_compile/
#   6. summary of the key numbers                 -> OUTDIR/summary.md, OUTDIR/summary.json
# A step that fails or runs out of time is recorded in OUTDIR/steps.log and the next one still runs.
#
# Environment: PYTHON (default python3), DEVICE (default cuda), QUICK=1 (tiny config, short runs:
# checks the script itself, e.g. on a CPU machine).
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/steps.log"
: > "$LOG"
T0=$(date +%s)

# `import mm2face.engine` etc. without installing the package
SITE=$(mktemp -d)/site
mkdir -p "$SITE/mm2face"
cp "$REPO/mm2face/__init__.py" "$SITE/mm2face/"
for d in engine realtime viewer training benchmarks; do ln -s "$REPO/$d" "$SITE/mm2face/$d"; done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export MM2FACE_CACHE="$OUT/.cache" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="$OUT/.inductor"
cd "$REPO"

step() {   # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  echo "== $name (limit ${limit}s, at +$((t - T0))s)" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   $name: exit $rc after $(( $(date +%s) - t ))s" | tee -a "$LOG"
  tail -n 25 "$OUT/$name.log" | grep -v -i warning | sed 's/^/   | /'
  return 0
}

# 1. environment
$PY - "$DEVICE" > "$OUT/env.json" 2> "$OUT/env.err" <<'EOF'
import importlib, json, platform, sys
dev = sys.argv[1]
info = {"python": sys.version.split()[0], "platform": platform.platform()}
for mod in ("torch", "numpy", "transformers", "matplotlib", "websockets", "onnxruntime", "torch_tensorrt", "scipy"):
    try:
        m = importlib.import_module(mod)
        info[mod] = getattr(m, "__version__", "present")
    except Exception as e:
        info[mod] = f"MISSING ({type(e).__name__})"
import torch
info["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["cuda"] = torch.version.cuda
from mm2face.engine.backends import backend_status
info["backends"] = backend_status(dev)
print(json.dumps(info, indent=1))
if dev.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("DEVICE=cuda but torch sees no CUDA GPU")
for mod in ("torch", "numpy", "transformers"):
    if str(info[mod]).startswith("MISSING"):
        sys.exit(f"{mod} is required")
EOF
rc=$?
cat "$OUT/env.json"; cat "$OUT/env.err" | grep -v -i warning | tail -5
if [ $rc -ne 0 ]; then echo "environment check failed (see $OUT/env.err)" | tee -a "$LOG"; exit 1; fi
if [ -z "$($PY -c 'import matplotlib' 2>&1)" ]; then :; else echo "matplotlib missing: no PNG plots" | tee -a "$LOG"; fi

if [ "$QUICK" = 1 ]; then
  SZ="--tiny --threads 1"; LSEC=3; CSEC=3; CTX=5,10; TSEC=2; TSTART=1; TMAX=4; BUDGET=10
  L1=150; L2=150; L3=90; L4=120
else
  SZ=""; LSEC=20; CSEC=8; CTX=5,10,30; TSEC=8; TSTART=16; TMAX=2048; BUDGET=75
  L1=100; L2=150; L3=100; L4=100
fi
B="$PY -m mm2face.benchmarks.cli"

# 2-5. the benchmarks (in-process: the GPU image has no websockets; docs/benchmarks.md explains)
step latency_eager   $L1 $B latency --device "$DEVICE" $SZ --backend eager --transport inproc --seconds $LSEC \
  --contexts $CTX --compare-seconds $CSEC --compare-backends eager,static --head none \
  --out "$OUT/latency_eager"
step latency_compile $L2 $B latency --device "$DEVICE" $SZ --backend compile --transport inproc \
  --seconds $LSEC --no-compare --out "$OUT/latency_compile"
step throughput_eager   $L3 $B throughput --device "$DEVICE" $SZ --backend eager --seconds $TSEC --chunk-ms 40 \
  --start $TSTART --max $TMAX --time-budget-s $BUDGET --out "$OUT/throughput_eager"
# compile: the inductor cache of step 3 ($TORCHINDUCTOR_CACHE_DIR) makes its warm-up shorter
step throughput_compile $L4 $B throughput --device "$DEVICE" $SZ --backend compile --seconds $TSEC \
  --chunk-ms 40 --start $TSTART --max $TMAX --time-budget-s $BUDGET --out "$OUT/throughput_compile"

# 6. summary
$PY - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
env = json.loads((out / "env.json").read_text())
summ = {"gpu": env.get("gpu"), "torch": env.get("torch"), "cuda": env.get("cuda")}
lines = [f"GPU run on {env.get('gpu') or 'no GPU'} (torch {env.get('torch')}, CUDA {env.get('cuda')})", ""]
for name in ("latency_eager", "latency_compile"):
    p = out / name / "latency.json"
    if not p.exists():
        lines.append(f"- {name}: no result (see {name}.log)"); continue
    r = json.loads(p.read_text()); s = r["stream"]
    g = s.get("stages_ms", {}).get("g_step", {})
    a = s.get("audio_to_face_ms", {})
    summ[name] = {"a2f_p50": a.get("p50"), "a2f_p95": a.get("p95"), "g_step_p99": g.get("p99"),
                  "compute_ms_per_hop": s.get("compute_ms_per_hop"), "rtf": s.get("rtf")}
    lines.append(f"- {name}: audio-to-face p50 {a.get('p50', 0):.1f} / p95 {a.get('p95', 0):.1f} ms; "
                 f"G step p99 {g.get('p99', 0):.2f} ms; compute per hop {s.get('compute_ms_per_hop', 0):.2f} ms; "
                 f"RTF {s.get('rtf') or 0:.4f}")
    for kv in r.get("kv_vs_prefix", []):
        lines.append(f"  - KV vs prefix at {kv['context_s']:g} s: {kv['kv_cache_ms']['p50']:.2f} vs "
                     f"{kv['prefix_ms']['p50']:.2f} ms ({kv['speedup_p50']:.1f}x)")
    for b in r.get("backends", []):
        if "single" in b:
            lines.append(f"  - backend {b['backend']}: 1 stream {b['single']['round_ms']['p50']:.2f} ms/hop, "
                         f"8 streams {b['batch8']['round_ms']['p50']:.2f} ms/round, max diff {b['max_abs_diff_vs_eager']:.1e}, "
                         f"build {b['build_and_first_run_s']:.0f} s")
        else:
            lines.append(f"  - backend {b['backend']}: {b.get('unavailable') or b.get('error')}")
for name in ("throughput_eager", "throughput_compile"):
    p = out / name / "throughput.json"
    if not p.exists():
        lines.append(f"- {name}: no result (see {name}.log)"); continue
    r = json.loads(p.read_text())
    summ[name] = {"max_sessions": r["max_sessions"],
                  "levels": [[lv["n"], lv.get("worst_session_a2f_p95_ms"), lv["holds"]] for lv in r["levels"]]}
    lines.append(f"- {name}: most real-time sessions holding a2f p95 <= {r['target_ms']:.0f} ms: {r['max_sessions']} "
                 f"(levels tried: {', '.join(str(lv['n']) + ('+' if lv['holds'] else '-') for lv in r['levels'])})")
(out / "summary.json").write_text(json.dumps(summ, indent=1))
print("\n".join(lines))
EOF
echo "total $(( $(date +%s) - T0 ))s; results in $OUT" | tee -a "$LOG"
