"""CUDA path (run by benchmarks/gpu_check.sh on a GPU machine; deselected in CI with -m "not gpu")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import config, jacobian, runner, train
from engine.session import Session

from conftest import PRESETS, make, tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_auto_device_is_cuda():
    assert runner.resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("kernel", ["mlp", "generic"])
def test_cuda_jacobian_equals_cpu_float64(tiny_npz, kernel):
    cfg = tiny_config(tiny_npz, optimizer="sgd", momentum=0.9, schedule="cosine")
    problem, theta0 = make(cfg, kernel)
    J_cpu = jacobian.exact_jacobian(problem, theta0, chunk=16)
    from engine import data, models

    ds = data.load(cfg.data)
    module = models.build(cfg.model, ds.n_features, ds.n_classes, cfg.seed)
    dev = torch.device("cuda")
    gp = train.make_problem(module, ds, cfg.train, cfg.seed, dev, torch.float64, kernel)
    J_gpu = jacobian.exact_jacobian(gp, theta0.to(dev), chunk=16)
    assert J_gpu.device.type == "cuda"
    assert torch.allclose(J_gpu.cpu(), J_cpu, rtol=0, atol=1e-10)


def test_cuda_session_end_to_end(tmp_path):
    cfg = config.load(PRESETS / "quick.toml", ["device=cuda"])
    s = Session.create(tmp_path, "gpu", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK
    m = s.manifest()
    assert m["device"].startswith("cuda") and "gpu" in m["environment"]
    S = s.load_npy("svd/S.npy")
    assert np.all(np.diff(S) <= 0) and s.spectrum()["P"] == 1210
