#!/usr/bin/env bash
# Drive the real `tjac` TUI in tmux at 80x24 and 160x48: time the first paint, open a finished
# session, visit every pane (Live with its sparklines, Spectrum, Regions, Analyses with the
# findings, Sessions, Compare, Setup with its field search, preset picker and save-as screen,
# help), start a run from the Setup pane, and check the captured screens show the regions table
# (with the counts of the session's spectrum.json) and ASCII-only plots under --ascii with
# NO_COLOR.
#
#   scripts/tui_smoke.sh [OUT_DIR]        captures go to OUT_DIR (default: a new temp folder)
#
# Needs tmux (apt-get install tmux). Exit status 0 when every check passed.
set -euo pipefail

cd "$(dirname "$0")/.."
command -v tmux >/dev/null || { echo "tui_smoke: tmux is not installed (apt-get install tmux)" >&2; exit 2; }
command -v tjac >/dev/null || { echo "tui_smoke: tjac is not on PATH (pip install -e .)" >&2; exit 2; }

OUT=${1:-$(mktemp -d /tmp/tjac-smoke.XXXXXX)}
mkdir -p "$OUT"
SESS="$OUT/sessions"
SOCK="tjac-smoke-$$"            # a private tmux server: never touches the user's sessions
TMUX_CMD=(tmux -L "$SOCK")
FAILS=0
trap '"${TMUX_CMD[@]}" kill-server 2>/dev/null || true' EXIT

say() { printf '%s\n' "$*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }

capture() {  # capture NAME: the visible pane as text
    "${TMUX_CMD[@]}" capture-pane -p -t smoke > "$OUT/$1.txt"
}

wait_for() {  # wait_for TEXT SECONDS: poll the screen until TEXT shows
    local text=$1 secs=$2 i
    for ((i = 0; i < secs * 4; i++)); do
        if "${TMUX_CMD[@]}" capture-pane -p -t smoke | grep -qF -- "$text"; then return 0; fi
        sleep 0.25
    done
    return 1
}

start() {  # start W H CMD...: a fresh tmux session of that size running CMD
    local w=$1 h=$2
    shift 2
    "${TMUX_CMD[@]}" kill-server 2>/dev/null || true
    sleep 0.5
    local try
    for try in 1 2 3; do  # a server still shutting down can refuse the first try
        "${TMUX_CMD[@]}" new-session -d -s smoke -x "$w" -y "$h" "$*; sleep 30" && return 0
        sleep 1
    done
    fail "tmux would not start a session"
    return 1
}

keys() { "${TMUX_CMD[@]}" send-keys -t smoke "$@"; sleep "${PAUSE:-1.5}"; }

say "tjac TUI smoke: captures in $OUT"
say "- a finished session of presets/quick (headless, for the open/attach checks)"
tjac run quick --sessions "$SESS" --name quick -q > /dev/null
read -r CHAOTIC BULK STABLE P < <(python - "$SESS/quick/spectrum.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
r = s["regions"]
print(r["chaotic"]["count"], r["bulk"]["count"], r["stable"]["count"], s["P"])
PY
)
say "  spectrum.json: chaotic $CHAOTIC, bulk $BULK, stable $STABLE, P $P"

check_regions() {  # check_regions FILE: the regions table with the right counts
    local f=$1 name count
    for name in chaotic bulk stable; do
        case $name in chaotic) count=$CHAOTIC ;; bulk) count=$BULK ;; stable) count=$STABLE ;; esac
        grep -qE "^ *$name +$count " "$f" || fail "$f: no '$name $count' row in the regions table"
    done
    grep -qF "P = $P" "$f" || fail "$f: no 'P = $P' summary"
}

say "- time to first paint (80x24): from the command to the Setup pane on screen"
for try in 1 2 3; do
    start 80 24 tjac --sessions "$SESS"
    t0=$(date +%s.%N)
    for ((i = 0; i < 1000; i++)); do
        if "${TMUX_CMD[@]}" capture-pane -p -t smoke | grep -qF "preset:"; then break; fi
        sleep 0.01
    done
    t1=$(date +%s.%N)
    say "  first paint, try $try: $(python -c "print(f'{$t1 - $t0:.2f}')") s"
    keys q
done
say "  for scale, 'import torch' alone: $(python -c "
import time; t = time.perf_counter(); import torch; print(f'{time.perf_counter() - t:.2f}')") s"

for size in 80x24 160x48; do
    W=${size%x*}
    H=${size#*x}
    say "- $size: tjac open quick"
    start "$W" "$H" tjac --sessions "$SESS" open quick
    wait_for "status done" 60 || fail "$size: the Live pane never showed 'status done'"
    wait_for "accuracy" 30 || fail "$size: no training curves"
    capture "live-$size"
    grep -qE "loss +[▁▂▃▄▅▆▇█]+ " "$OUT/live-$size.txt" || fail "$size: no loss sparkline"
    grep -qE "col/s +[▁▂▃▄▅▆▇█]+ " "$OUT/live-$size.txt" || fail "$size: no col/s sparkline"
    keys 4
    wait_for "chaotic" 30 || fail "$size: no regions table"
    capture "regions-$size"
    check_regions "$OUT/regions-$size.txt"
    keys 3
    wait_for "singular values" 30 || fail "$size: no spectrum plot"
    capture "spectrum-$size"
    keys 7
    wait_for "Findings: the paper vs this run" 30 || fail "$size: no findings in Analyses"
    capture "analyses-$size"
    keys 5
    capture "sessions-$size"
    grep -qF "quick" "$OUT/sessions-$size.txt" || fail "$size: the session is not listed"
    grep -qF "by created" "$OUT/sessions-$size.txt" || fail "$size: Sessions says no order"
    keys 6
    capture "compare-$size"
    grep -qF "sessions" "$OUT/compare-$size.txt" || fail "$size: no Compare pane"
    keys 1
    capture "setup-$size"
    grep -qE "^ .*optimizer +sgd" "$OUT/setup-$size.txt" || fail "$size: Setup shows no train group"
    keys /
    PAUSE=0.3 keys s e e d
    keys Enter
    capture "setup-search-$size"
    grep -qE "^ *> *seed +0" "$OUT/setup-search-$size.txt" \
        || fail "$size: the field search did not land on the seed field"
    keys Escape
    keys C-s
    capture "saveas-$size"
    grep -qF "Save the edited config" "$OUT/saveas-$size.txt" || fail "$size: no save-as screen"
    keys Escape
    keys C-o
    capture "presets-$size"
    grep -qF "Load a preset" "$OUT/presets-$size.txt" || fail "$size: no preset picker"
    keys Escape
    keys '?'
    capture "help-$size"
    grep -qF "Export" "$OUT/help-$size.txt" || fail "$size: the help screen lists no bindings"
    keys Escape
    keys q
    sleep 1
done

say "- 160x48: start presets/quick from the Setup pane, watch it to the end"
start 160 48 tjac --sessions "$SESS" --preset quick
wait_for "Start run" 30 || fail "Setup pane did not come up"
keys C-r
wait_for "status running" 60 || fail "the run did not start"
capture "run-started-160x48"
wait_for "status done" 300 || fail "the run started from the TUI did not finish"
wait_for "● train loss" 30 || fail "no training curves after the run"
capture "run-live-160x48"
keys 4
wait_for "chaotic" 30 || fail "no regions after the run"
capture "run-regions-160x48"
grep -qE "^ *chaotic +$CHAOTIC " "$OUT/run-regions-160x48.txt" \
    || fail "the run from the TUI found other region counts than the headless run"
keys e
wait_for "report.md" 30 || fail "export did not show the report path"
capture "run-export-160x48"
keys q

say "- 80x24, NO_COLOR and --ascii: the spectrum has no braille or block characters"
start 80 24 env NO_COLOR=1 tjac --ascii --sessions "$SESS" open quick
wait_for "status done" 60 || fail "ascii: no session"
keys 3
wait_for "singular values" 30 || fail "ascii: no spectrum plot"
capture "spectrum-ascii-80x24"
if python - "$OUT/spectrum-ascii-80x24.txt" <<'PY'
import sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
first = next(i for i, line in enumerate(lines) if "singular values" in line)
plot = "".join(line[:78] for line in lines[first:-1])  # not the scrollbar, not the footer
bad = sorted({c for c in plot if 0x2580 <= ord(c) <= 0x259F or 0x2800 <= ord(c) <= 0x28FF})
print("non-ASCII in the plot:", sorted({c for c in plot if ord(c) > 127}) or "none")
sys.exit(1 if bad else 0)
PY
then :; else fail "ascii: braille or block characters in the spectrum plot"; fi
keys q

say "captures:"
ls -1 "$OUT"/*.txt | sed 's/^/  /'
if ((FAILS)); then
    say "tui_smoke: $FAILS check(s) failed"
    exit 1
fi
say "tui_smoke: all checks passed"
