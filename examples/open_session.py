"""Open a finished session's results: its config, training metrics and spectrum.

    python examples/open_session.py sessions/quick          # a session `tjac run` wrote
    python examples/open_session.py --small                 # runs presets/quick.toml first,
                                                            # in a temporary folder (~10 s)
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from engine import config
from engine.runner import run_session
from engine.session import Session

if "--small" in sys.argv:
    root = Path(tempfile.mkdtemp())
    preset = Path(__file__).resolve().parents[1] / "presets" / "quick.toml"
    path = Session.create(root, "quick", config.load(preset), str(preset)).path
    assert run_session(path) == 0
else:
    path = Path(sys.argv[1])

s = Session(path)
cfg = s.config()
last = s.metrics()[-1]
spec = s.spectrum()  # spectrum.json: the regions' counts and ranges
S = s.load_vector("svd/S.npy")  # the singular values of J, float64, descending
print(f"{s.name}: {cfg.model.hidden} MLP, {cfg.train.optimizer} lr {cfg.train.lr}, "
      f"status {s.manifest()['status']}")
print(f"step {last['step']}: train loss {last['train_loss']:.4f}, test acc "
      f"{last['test_acc']:.3f}")
print(f"P = {len(S)}, s_max = {S[0]:.4f}, s_min = {S[-1]:.3e}, "
      f"bulk_tol = {spec['bulk_tol']:g}")
print("regions:", " ".join(f"{k} {spec['regions'][k]['count']}"
                           for k in ("chaotic", "bulk", "stable")))
assert sum(spec["regions"][k]["count"] for k in spec["regions"]) == len(S) == np.size(S)
