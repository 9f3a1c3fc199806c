#!/usr/bin/env bash
# The dependency floors: a fresh venv with every dependency of pyproject.toml (and of its test
# extra) at exactly the version its ">=" names, then a part of the test suite that touches each of
# them. Not part of .ci/run (it downloads and installs a second environment: minutes). Usage:
#   bash .ci/floors.sh [VENV_DIR] [PYTEST_ARGS...]     (VENV_DIR defaults to /tmp/tjac-floors)
# torch: PyPI's Linux wheels of torch are CUDA builds (GBs of nvidia-* packages), so by default
# the venv is given this interpreter's own torch (linked in, its pure-Python requirements installed
# in the venv); TJAC_FLOORS_TORCH=pypi installs torch==<floor> from PyPI instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/tjac-floors}
shift || true
TESTS=("$@")
if [ ${#TESTS[@]} -eq 0 ]; then
    TESTS=(tests/test_layers.py tests/test_config.py tests/test_matfree.py tests/test_report.py
           tests/test_figures.py tests/test_results.py tests/test_cli.py
           tests/test_workbench.py tests/test_trackers.py tests/test_api.py tests/test_linop.py
           -m "not slow and not gpu")
fi
PY=${PYTHON:-python3}
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# name==floor for every "name>=floor" of [project] dependencies and the test extra (markers kept)
"$PY" - > "$VENV/floors.txt" <<'PYEOF'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in p["dependencies"] + p["optional-dependencies"]["test"]:
    spec, _, marker = req.partition(";")
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([^,\s]+)\s*(?:,.*)?", spec)
    if m is None:
        raise SystemExit(f"floors: {req!r} has no '>=' floor")
    print(f"{m[1]}=={m[2]}" + (f"; {marker.strip()}" if marker else ""))
PYEOF
TORCH_FLOOR=$(grep -i '^torch==' "$VENV/floors.txt")
if [ "${TJAC_FLOORS_TORCH:-here}" = pypi ]; then
    cp "$VENV/floors.txt" "$VENV/requirements.txt"
else
    grep -vi '^torch==' "$VENV/floors.txt" > "$VENV/requirements.txt"
    # this interpreter's torch, linked in; its own requirements (floors of torch's, not ours)
    TORCH_SITE=$("$PY" -c "import torch, os; print(os.path.dirname(torch.__path__[0]))")
    LINKS="$VENV/torch-here"
    mkdir -p "$LINKS"
    for d in torch torchgen functorch torch-*.dist-info; do
        for f in "$TORCH_SITE"/$d; do [ -e "$f" ] && ln -s "$f" "$LINKS/"; done
    done
    SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
    echo "$LINKS" > "$SITE/torch-here.pth"
    printf '%s\n' filelock fsspec jinja2 networkx 'setuptools>=77' sympy typing-extensions >> "$VENV/requirements.txt"
fi
echo "floors: $(tr '\n' ' ' < "$VENV/requirements.txt")"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r "$VENV/requirements.txt"
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip check || true
"$VENV/bin/python" -c "import torch, numpy, scipy, sklearn, textual, rich, plotext
print('floors: torch', torch.__version__, '(' + ('${TORCH_FLOOR}' if '${TJAC_FLOORS_TORCH:-here}' == 'pypi' else 'this interpreter') + ')', 'numpy', numpy.__version__, 'scipy', scipy.__version__,
      'scikit-learn', sklearn.__version__, 'textual', textual.__version__, 'plotext',
      plotext.__version__)"
PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
