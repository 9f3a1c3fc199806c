#!/usr/bin/env bash
# GPU check for a machine with CUDA: every gpu-marked test, the Jacobian benchmark on the device,
# and one full paper-digits-sgd session (train, J, SVD, spectrum; no analyses). Each step has a
# time cap inside one hard budget (GPU_CHECK_BUDGET seconds, default 450: under 8 minutes with
# the setup), each exit status is checked, and each result is written as soon as it exists.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      on the GPU machine (OUT_DIR default: $OUT or
#                                               ./gpu-check)
#   bash benchmarks/gpu_check.sh --dry-run      the same steps on this CPU at tiny sizes, to
#                                               check the script itself before device time
#   bash benchmarks/gpu_check.sh --lenet [OUT]  only the LeNet-5 appendix run: lenet5-digits28
#                                               (900 steps of batch 200, P = 61,706) to a
#                                               finished spectrum, under GPU_CHECK_BUDGET
#                                               (default 600 s here)
#   bash benchmarks/gpu_check.sh --svd [OUT]    only the SVD routes on the device
#                                               (benchmarks/svd_routes.py --device cuda): the
#                                               seconds and peak memory of the Gram route and
#                                               the direct one at n = 8,192 .. 32,768, which
#                                               measures cuSOLVER's syevd workspace (the plan
#                                               takes 3 P^2) and shows whether this CUDA's
#                                               syevd takes n > 26,732; GPU_CHECK_BUDGET
#                                               default 300 s here
#
# Installs nothing from the network. A bare image needs torch, numpy, scipy and rich (there)
# plus these wheels in .whl/ (installed from there into /tmp/site first):
#   tomli_w, scikit-learn, joblib, threadpoolctl, pytest, iniconfig, pluggy, packaging
# (this workplace's CUDA image has all of them but tomli_w; nothing of the TUI is needed).
# Output: OUT_DIR/summary.txt (one line per step: PASS/FAIL, seconds), gpu.txt, gpu_tests.txt,
# bench_cuda.txt + bench_cuda.jsonl (a row per case as it finishes), session.txt,
# manifest.json, spectrum.json.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0; LENET=0; SVD=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ "${1:-}" == "--lenet" ]]; then LENET=1; shift; fi
if [[ "${1:-}" == "--svd" ]]; then SVD=1; shift; fi
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
budget=${GPU_CHECK_BUDGET:-$(( LENET ? 600 : (SVD ? 300 : 450) ))}
start_all=$(date +%s)
: > "$out/summary.txt"
fails=0

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1

left() { echo $(( budget - ($(date +%s) - start_all) )); }

step() {  # step NAME CAP_SECONDS LOGFILE CMD...: run CMD under min(CAP, budget left)
  local name=$1 cap=$2 log=$3; shift 3
  local t=$(left)
  (( t > cap )) && t=$cap
  if (( t < 10 )); then
    echo "SKIP  $name (budget spent)" | tee -a "$out/summary.txt"; fails=$((fails + 1)); return
  fi
  echo "== $name (at most ${t} s)"
  local t0=$(date +%s)
  timeout "$t" "$@" > "$log" 2>&1
  local rc=$?
  tail -n 25 "$log"
  local verdict=PASS
  (( rc != 0 )) && { verdict="FAIL rc=$rc"; fails=$((fails + 1)); }
  echo "$verdict  $name  $(( $(date +%s) - t0 )) s" | tee -a "$out/summary.txt"
}

if (( DRY )); then
  dev=cpu; tests=(tests/test_gpu.py tests/test_device.py); cases=quick; preset=quick
  bench_extra=(--baseline-columns 64)
  session_extra=(--set model.hidden=[8])
  svd_sizes=(256 512)
  echo "dry run on the CPU: the GPU steps with device=cpu and tiny sizes" | tee "$out/gpu.txt"
else
  dev=cuda; tests=(-m gpu tests/test_gpu.py); cases=paper-sgd,paper-adam; preset=paper-digits-sgd
  bench_extra=(--baseline-columns 1024)
  session_extra=()
  svd_sizes=(8192 16384 32768)
  nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" | tee -a "$out/gpu.txt"

report_session() {  # report_session LOG: copy the session's manifest and print its timings
  local spath
  spath=$(tail -n 1 "$1")
  [[ -f "$spath/manifest.json" ]] || return
  cp "$spath/manifest.json" "$out/$(basename "$1" .txt).manifest.json"
  cp "$spath/spectrum.json" "$out/$(basename "$1" .txt).spectrum.json" 2>/dev/null
  python3 - "$spath" <<'PY' | tee -a "$1"
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
st = m.get("stages", {})
print("stages:", ", ".join(f"{k} {v.get('seconds', 0):.2f} s" for k, v in st.items()),
      f"| total {sum(v.get('seconds', 0) for v in st.values()):.2f} s",
      f"| chunk {st.get('jacobian', {}).get('chunk')}",
      f"| primal_dev {st.get('jacobian', {}).get('primal_dev')}",
      f"| tf32 {m.get('numerics', {}).get('tf32_matmul')}")
PY
}

if (( SVD )); then
  step "SVD routes on $dev (n = ${svd_sizes[*]})" "$budget" "$out/svd_routes.txt" \
    python3 benchmarks/svd_routes.py --device "$dev" --sizes "${svd_sizes[@]}"
  echo "total $(( $(date +%s) - start_all )) s, $fails step(s) failed" | tee -a "$out/summary.txt"
  exit $(( fails > 0 ))
fi

if (( LENET )); then
  step "lenet5-digits28 on $dev: J and spectrum" "$budget" "$out/lenet.txt" \
    python3 -m tjac_tui.cli run lenet5-digits28 --device "$dev" -q \
    --sessions "$(mktemp -d /tmp/gpu-sessions.XXXXXX)"
  report_session "$out/lenet.txt"
  echo "total $(( $(date +%s) - start_all )) s, $fails step(s) failed" | tee -a "$out/summary.txt"
  exit $(( fails > 0 ))
fi

step "gpu tests" 150 "$out/gpu_tests.txt" \
  python3 -m pytest -q -p no:cacheprovider -s "${tests[@]}"

step "jacobian benchmark ($dev)" 150 "$out/bench_cuda.txt" \
  python3 benchmarks/bench_jacobian.py --device "$dev" --cases "$cases" --case-timeout 60 \
  --json "$out/bench_cuda.jsonl" "${bench_extra[@]}"

sessions=$(mktemp -d /tmp/gpu-sessions.XXXXXX)
step "session: $preset on $dev" 150 "$out/session.txt" \
  python3 -m tjac_tui.cli run "$preset" --device "$dev" --skip-analyses -q \
  --sessions "$sessions" "${session_extra[@]}"
report_session "$out/session.txt"

step "lenet5-digits28 plan and probe on $dev" 60 "$out/lenet_plan.txt" \
  python3 -m tjac_tui.cli run lenet5-digits28 --device "$dev" --plan --sessions "$sessions"
echo "total $(( $(date +%s) - start_all )) s, $fails step(s) failed" | tee -a "$out/summary.txt"
exit $(( fails > 0 ))
