"""J's chunks on N ranks (torchrun, engine.distributed) against one process, on this machine.

    python benchmarks/bench_distributed.py [--preset paper-digits-sgd] [--nproc 2]
                                           [--set train.epochs=4 ...]

Runs the preset twice, skipping the analyses: once in one process (its torch threads: all the
cores), once on N ranks (the cores split among them), and prints the Jacobian stage's seconds
of each (from the manifests), their ratio, and whether the two J are bitwise equal (expected
only when every process computes with the same number of threads).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "tjac_tui.cli", "run", *args, "-q",
                        "--skip-analyses"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper-digits-sgd")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    from engine.session import Session

    with tempfile.TemporaryDirectory() as tmp:
        common = [a.preset, "--sessions", tmp] + [x for s in a.set for x in ("--set", s)]
        run(common + ["--name", "one"])
        run(common + ["--name", "ranks", "--nproc", str(a.nproc)])
        secs = {n: Session(Path(tmp) / n).manifest()["stages"]["jacobian"]["seconds"]
                for n in ("one", "ranks")}
        same = np.array_equal(np.load(Path(tmp) / "one" / "jacobian.npy"),
                              np.load(Path(tmp) / "ranks" / "jacobian.npy"))
        P = Session(Path(tmp) / "one").manifest()["P"]
    print(f"{a.preset} {' '.join(a.set)}: P = {P}, {os.cpu_count()} cores")
    print(f"jacobian stage, 1 process:  {secs['one']:.1f} s")
    print(f"jacobian stage, {a.nproc} ranks:    {secs['ranks']:.1f} s "
          f"(speed-up {secs['one'] / secs['ranks']:.2f}x)")
    print(f"J bitwise equal: {same}")


if __name__ == "__main__":
    main()
