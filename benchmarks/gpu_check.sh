#!/usr/bin/env bash
# GPU check for a machine with CUDA (about 5 minutes on one H200): the GPU-marked tests, the
# Jacobian benchmark on the device, and one full paper-digits-sgd session.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Installs nothing from the network. If a folder .whl/ holds wheels (tomli-w, scikit-learn,
# joblib, threadpoolctl, plotext, ... for a machine whose image lacks them), they are installed
# from there into /tmp/site first. Figures go to OUT_DIR (default ./gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" | tee -a "$out/gpu.txt"

echo "== GPU tests"
timeout 180 python3 -m pytest -m gpu -q -p no:cacheprovider tests/ 2>&1 | tee "$out/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}

echo "== Jacobian benchmark (cuda)"
timeout 240 python3 benchmarks/bench_jacobian.py --device cuda --baseline-columns 1024 \
  --cases paper-sgd,paper-adam,mlp-128,mlp-64x64 --json "$out/bench_cuda.json" 2>&1 \
  | tee "$out/bench_cuda.txt"

echo "== full session: paper-digits-sgd on cuda"
start=$(date +%s.%N)
timeout 120 python3 -m tjac_tui.cli run paper-digits-sgd --device cuda --sessions /tmp/gpu-sessions \
  --name gpu-sgd 2>&1 | tail -n 14 | tee "$out/session.txt"
end=$(date +%s.%N)
echo "wall $(python3 -c "print(round($end - $start, 1))") s" | tee -a "$out/session.txt"
cp /tmp/gpu-sessions/gpu-sgd/manifest.json /tmp/gpu-sessions/gpu-sgd/spectrum.json "$out/" 2>/dev/null
exit $tests_rc
