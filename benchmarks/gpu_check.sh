#!/usr/bin/env bash
# The check of the CUDA path on a GPU machine: one prepared run that answers, in one short
# window, what the CPU cannot (speed, memory, the SVD's scaling, what the machine has). Steps,
# in the order they run, each under its own cap (timeout) inside one hard budget
# (GPU_CHECK_BUDGET seconds, default 420), each writing its file as soon as it finishes:
#
#   env        45 s  env.txt: GPU (nvidia-smi, else torch), torch / CUDA / cuDNN / cuSOLVER,
#                    python, free disk and memory (host, device), what engine.device looks at
#                    to find CUDA and what it says, the numerics engine.device.configure sets,
#                    the packages the steps need (MISSING ones named) and the wheels installed
#   tests     100 s  gpu_tests.txt: every gpu-marked test (pytest -m gpu), each one's duration
#                    printed as it ends, at most 60 s a test
#   paper      75 s  paper.json: tjac run paper-digits-sgd --skip-analyses --device cuda, its
#                    manifest, spectrum.json and every event (stage times, per-chunk rates,
#                    gpu_mem), the wall time; targets J <= 1 s, whole run <= 5 s
#   svd       120 s  svd.json: the float64 SVD with vectors by the Gram route and the direct
#                    one at n = 4,096, 8,192, 16,384 (benchmarks/svd_routes.py --device cuda,
#                    each in its own process and timeout, written row by row), seconds and
#                    peak device memory beside the plan's P^2 figures, the fit t = c n^3 per
#                    route extrapolated to n = 61,706
#   lenet      75 s  lenet.json: LeNet-5's appendix run measured in part
#                    (benchmarks/gpu_lenet.py): the automatic chunk, 10 steps of one chunk
#                    timed by CUDA events, peak memory, a 2-step profile (top kernels,
#                    launches, synchronisations), the disk's write rate, J extrapolated to 900
#                    steps x 61,706 columns and, with the svd step's fit, J + SVD against the
#                    target (30 min on one H200)
#   summary.txt      one line per step (PASS / FAIL / SKIP, seconds) as each ends, then the
#                    step's key figures and targets; log.txt: every step's output
#
# At most 8 files, all in one folder: $OUT, else the argument, else ./gpu-check. Exit status 0
# when every step passed (a missed target is a finding, not a failure of the check).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          the check (about 7 minutes at most)
#   bash benchmarks/gpu_check.sh --dry-run [OUT]    every step on this CPU at tiny sizes, to
#                                                   check the script before device time
#   bash benchmarks/gpu_check.sh --svd [OUT]        only the svd step (budget 300 s; sizes:
#                                                   GPU_CHECK_SVD_SIZES="4096 8192 16384")
#   bash benchmarks/gpu_check.sh --lenet [OUT]      only the appendix run itself:
#                                                   lenet5-digits28 to a finished spectrum
#                                                   (lenet_run.json, as paper.json), budget
#                                                   600 s; needs 45.7 GB of disk under
#                                                   GPU_CHECK_SESSIONS (default a folder in /tmp)
#
# Installs nothing from the network. On this workplace's CUDA image (python3 3.12 with torch,
# numpy, scipy, rich, scikit-learn, pytest, pytest-timeout) one package is missing: tomli_w
# (sessions write their config.toml with it); textual, plotext and matplotlib are needed by no
# step. Fetch it on a machine with PyPI, in the repository's root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl tomli_w==1.2.0
#
# (another image may lack more: env.txt names each MISSING one; add it the same way, with
# scikit-learn: joblib and threadpoolctl; with pytest: iniconfig, pluggy, packaging). Every
# wheel in .whl/ is installed on its own into /tmp/site (GPU_CHECK_SITE), a failed one named
# in env.txt and left out.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0; MODE=check
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --lenet) MODE=lenet ;;
    --svd) MODE=svd ;;
    *) echo "gpu_check.sh: unknown option $1 (--dry-run, --svd, --lenet)" >&2; exit 2 ;;
  esac
  shift
done
out=${OUT:-${1:-gpu-check}}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
case $MODE in check) dflt=420 ;; svd) dflt=300 ;; lenet) dflt=600 ;; esac
budget=${GPU_CHECK_BUDGET:-$dflt}
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
start_ms=$(now_ms)
left() { echo $(( budget - ($(now_ms) - start_ms) / 1000 )); }
capped() { local t=$(( $(left) - 10 )); echo $(( t < $1 ? t : $1 )); }  # a step's seconds
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
sessions=${GPU_CHECK_SESSIONS:-$tmp/sessions}
mkdir -p "$sessions"
summary=$out/summary.txt log=$out/log.txt
rm -f "$out"/{env.txt,gpu_tests.txt,paper.json,svd.json,lenet.json,lenet_run.json}
: > "$summary"; : > "$log"
fails=0

if (( DRY )); then
  dev=cpu site=$tmp/site
  # one thread a process: the dry run checks the script, and torch's thread pool on a busy
  # machine with few cores turns a millisecond step into a second
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
  paper_set=(--set data.n_train=256 --set train.epochs=1 --set "model.hidden=[8]")
  lenet_args=(--set data.n_train=40 --set data.test_size=20 --set train.batch_size=20
              --chunk 4 --profile-steps 1 --disk-bytes 8388608)
  lenet_preset=cnn-quick lenet_run_set=()  # (LeNet-5's P = 61,706 is no CPU's spectrum)
  svd_sizes=(64 256)
else
  dev=cuda site=${GPU_CHECK_SITE:-/tmp/site}
  paper_set=() lenet_args=() lenet_preset=lenet5-digits28 lenet_run_set=()
  read -r -a svd_sizes <<< "${GPU_CHECK_SVD_SIZES:-4096 8192 16384}"
fi
echo "gpu_check.sh $MODE$( (( DRY )) && echo ' --dry-run (the CPU, tiny sizes)') on" \
     "$(uname -n), budget ${budget} s, $(date '+%Y-%m-%d %H:%M:%S')" | tee -a "$summary"

# ---- wheels: each on its own, so that one wrong tag leaves the others installed
: > "$tmp/install.txt"
for w in .whl/*.whl; do
  [[ -f "$w" ]] || continue
  if timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
       --upgrade --target "$site" "$w" > "$tmp/pip.txt" 2>&1; then
    echo "installed $(basename "$w")" >> "$tmp/install.txt"
  else
    echo "FAILED $(basename "$w"): $(grep -v '^\s*$' "$tmp/pip.txt" | tail -n 1)" \
      >> "$tmp/install.txt"
  fi
done
[[ -s "$tmp/install.txt" ]] || echo "none (no .whl/*.whl)" > "$tmp/install.txt"
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

STEP_RC=0 STEP_MS=0
run() {  # run NAME CAP FILE CMD...: CMD under min(CAP, budget left - 10) s, output to FILE
  local name=$1 file=$3 t; t=$(capped "$2"); shift 3
  if (( t < 10 )); then STEP_RC=-1 STEP_MS=0; return; fi
  echo "== $name (at most $t s): $*" | tee -a "$log"
  local t0=$(now_ms)
  timeout -k 5 "$t" "$@" >> "$file" 2>&1
  STEP_RC=$?
  STEP_MS=$(( $(now_ms) - t0 ))
  (( STEP_RC == 124 || STEP_RC == 137 )) && echo "(stopped at its cap, $t s)" >> "$file"
  [[ "$file" == "$log" ]] || tail -n 15 "$file"
}
record() {  # record NAME [NOTE]: the summary line of the last run, as it stands
  local name=$1 note=${2:-} verdict=PASS
  if (( STEP_RC == -1 )); then verdict=SKIP note="budget spent"
  elif (( STEP_RC == 124 || STEP_RC == 137 )); then verdict=FAIL note="timed out${note:+; $note}"
  elif (( STEP_RC != 0 )); then verdict=FAIL note="exit $STEP_RC${note:+; $note}"
  fi
  [[ $verdict == PASS ]] || fails=$((fails + 1))
  printf '%-4s  %-6s %7.1f s%s\n' "$verdict" "$name" "$(( STEP_MS / 100 ))e-1" \
    "${note:+  ($note)}" | tee -a "$summary"
}
figures() {  # figures STEP: its key figures into the summary
  python3 benchmarks/gpu_check.py figures "$1" "$out" 2>> "$log" | tee -a "$summary"
}
session_step() {  # session_step NAME CAP JSON PRESET TARGET... -- RUN_ARGS...: tjac run, gathered
  local name=$1 cap=$2 json=$3 preset=$4; shift 4
  local targets=()
  while [[ "$1" != -- ]]; do targets+=(--target "$1"); shift; done
  shift
  local root=$sessions/$name t0
  mkdir -p "$root"
  local cmd=(python3 -m tjac_tui.cli run "$preset" --skip-analyses --device "$dev" -q
             --sessions "$root" "$@")
  t0=$(now_ms)
  run "$name" "$cap" "$log" "${cmd[@]}"
  local rc=$STEP_RC wall=$STEP_MS
  (( rc == -1 )) && { record "$name"; return; }
  python3 benchmarks/gpu_check.py session --sessions "$root" --json "$out/$json" \
    --wall "$(( wall / 100 ))e-1" --rc "$rc" --command "${cmd[*]}" "${targets[@]}" \
    >> "$log" 2>&1
  local grc=$?
  STEP_MS=$(( $(now_ms) - t0 ))
  (( STEP_RC == 0 )) && STEP_RC=$grc
  record "$name" "$( (( grc )) && echo "the session did not finish: $json")"
}

run env 45 "$out/env.txt" python3 benchmarks/gpu_check.py env --device "$dev" \
  --sessions "$sessions" --install-log "$tmp/install.txt"
record env

svd_step() {  # svd_step CAP: its rows get the step's time less 8 s (to write the fit)
  local cap=$1 t; t=$(capped "$1")
  run svd "$cap" "$log" python3 benchmarks/svd_routes.py --device "$dev" \
    --sizes "${svd_sizes[@]}" --json "$out/svd.json" --budget $(( t - 8 )) \
    --timeout $(( t - 8 ))
  record svd
  figures svd
}

case $MODE in
  svd)
    svd_step $(( budget - 60 ))
    ;;
  lenet)
    session_step lenet 100000 lenet_run.json "$lenet_preset" "j_svd_spectrum_s<=1800" -- \
      "${lenet_run_set[@]}"
    figures lenet_run
    ;;
  check)
    gpu_files=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
    timeout_flag=()
    python3 -c "import pytest_timeout" 2>/dev/null && timeout_flag=(--timeout 60)
    # shellcheck disable=SC2086
    run tests 100 "$out/gpu_tests.txt" python3 -m pytest -m gpu -v -rfEs -p no:cacheprovider \
      -o console_output_style=times --durations=20 "${timeout_flag[@]}" $gpu_files
    record tests

    session_step paper 75 paper.json paper-digits-sgd "jacobian_s<=1" "run_s<=5" -- \
      "${paper_set[@]}"
    figures paper

    svd_step 120

    t=$(capped 75)
    run lenet 75 "$log" python3 benchmarks/gpu_lenet.py --device "$dev" \
      --sessions "$sessions/lenet" --json "$out/lenet.json" --svd-json "$out/svd.json" \
      --budget $(( t - 5 )) "${lenet_args[@]}"
    record lenet
    figures lenet
    ;;
esac

# log.txt stays under 8 MiB (its end kept)
if (( $(stat -c %s "$log") > 8388608 )); then
  tail -c 8000000 "$log" > "$tmp/log" && mv "$tmp/log" "$log"
fi
echo "total $(( ($(now_ms) - start_ms) / 1000 )) s of a ${budget} s budget, $fails step(s)" \
     "failed or skipped" | tee -a "$summary"
exit $(( fails > 0 ))
