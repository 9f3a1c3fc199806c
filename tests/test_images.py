"""Image data and convolutional models: MNIST-format IDX files (made here, small), digits28,
LeNet-5's parameter count, the cnn-quick preset end to end, and the sizes --plan reports."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from engine import config, data, models, runner
from engine import plan as plan_mod
from engine.session import Session
from tjac_tui.cli import main

from conftest import PRESETS


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    raw = struct.pack(">BBBB", 0, 0, code, arr.ndim) + \
        b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def fake_mnist(folder: Path, gz: bool = True, n_train: int = 60, n_test: int = 20) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
              "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_y": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for key, name in data.IDX_FILES.items():
        write_idx(folder / name, arrays[key], gz)
    return arrays


@pytest.mark.parametrize("layout", ["flat gz", "flat raw", "torchvision"])
def test_mnist_is_read_from_idx_files(tmp_path, layout):
    root = tmp_path / "mnist"
    folder = root / "MNIST" / "raw" if layout == "torchvision" else root
    arrays = fake_mnist(folder, gz=layout != "flat raw")
    cfg = config.from_dict({"data": {"dataset": "mnist", "path": str(root), "n_test": 15}})
    ds = data.load(cfg.data)
    assert ds.image_shape == (1, 28, 28) and ds.x_train.shape == (60, 784)
    assert len(ds.x_test) == 15  # the official test set, cut by n_test
    np.testing.assert_array_equal(ds.x_train, arrays["train_x"].reshape(60, -1) / 255.0)
    np.testing.assert_array_equal(ds.y_test, arrays["test_y"][:15])


def test_fashion_mnist_uses_its_own_torchvision_folder(tmp_path):
    fake_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    cfg = config.from_dict({"data": {"dataset": "fashion_mnist", "path": str(tmp_path)}})
    assert data.load(cfg.data).name == "fashion_mnist"


def run_preset(tmp_path, capsys, *sets):
    code = main(["run", str(PRESETS / "lenet5-mnist.toml"), "--sessions", str(tmp_path / "s"),
                 *[x for s in sets for x in ("--set", s)]])
    return code, capsys.readouterr().err.strip().splitlines()


def test_missing_or_malformed_mnist_is_one_line_exit_2(tmp_path, capsys):
    code, err = run_preset(tmp_path, capsys)  # the shipped preset leaves data.path to the user
    assert code == 2 and len(err) == 1
    assert err[0].startswith("data.path: set it to the folder that holds the mnist IDX files")
    code, err = run_preset(tmp_path, capsys, f'data.path="{tmp_path / "none"}"')
    assert code == 2 and err == [f"{tmp_path / 'none'}: not a folder (data.path must name the "
                                 "folder that holds the mnist IDX files)"]
    folder = tmp_path / "m"
    fake_mnist(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    code, err = run_preset(tmp_path, capsys, f'data.path="{folder}"')
    assert code == 2 and len(err) == 1 and "no t10k-labels-idx1-ubyte" in err[0]
    fake_mnist(folder)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" +
                                                                      b"\x00" * 20))
    code, err = run_preset(tmp_path, capsys, f'data.path="{folder}"')
    assert code == 2 and len(err) == 1 and "an IDX array of shape" in err[0]
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    code, err = run_preset(tmp_path, capsys, f'data.path="{folder}"')
    assert code == 2 and len(err) == 1 and "cannot read" in err[0]
    assert not (tmp_path / "s").exists()


def test_digits28_and_lenet5_sizes():
    cfg = config.load(PRESETS / "lenet5-digits28.toml")
    ds = data.load(cfg.data)
    assert ds.image_shape == (1, 28, 28) and ds.x_train.shape == (1200, 784)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    m = models.build(cfg.model, ds.n_features, ds.n_classes, cfg.seed, ds.image_shape)
    assert models.Layout.of(m).size == 61706
    assert [n for n, _ in m.named_parameters()][:4] == ["convs.0.weight", "convs.0.bias",
                                                        "convs.1.weight", "convs.1.bias"]
    w = dict(m.named_parameters())["convs.1.weight"].detach().numpy()
    assert abs(w.std() - (6 * 25) ** -0.5) < 0.01  # the paper's init: variance 1/fan_in
    with pytest.raises(ValueError, match='model.arch = "lenet5" needs images'):
        models.build(cfg.model, 64, 10, 0, None)


def test_plan_reports_the_appendix_sizes(tmp_path, capsys):
    assert main(["run", "lenet5-digits28", "--plan", "--sessions", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "P = 61,706 parameters, 900 optimizer steps over 1,200 training rows" in out
    assert "jacobian.npy: 15.2 GB on disk (61,706 x 61,706, 32-bit)" in out
    # the CPU's Gram route: 2 P^2 float64 and a few blocks of 512 columns
    assert "memory while it runs: 61.7 GB (Gram route, CPU;" in out
    assert not (tmp_path / "lenet5-digits28").exists()


def test_plan_of_a_run_that_cannot_fit_does_not_probe_it(tmp_path, capsys, monkeypatch):
    """--plan says why a run does not fit and stops there: the probe of a run far too large
    ran for minutes and took gigabytes."""
    from engine import runner

    monkeypatch.setattr(runner, "probe", lambda *a, **k: pytest.fail("probed"))
    assert main(["run", "quick", "--plan", "--sessions", str(tmp_path),
                 "--set", "model.hidden=[100000]"]) == 0
    out = capsys.readouterr().out
    assert "does not fit: this run needs" in out
    assert "no time probe: the run does not fit here" in out
    assert main(["run", "quick", "--plan", "--json", "--sessions", str(tmp_path),
                 "--set", "model.hidden=[100000]"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["fits"].startswith("does not fit") and "jacobian_s" not in got


@pytest.mark.slow
def test_cnn_quick_end_to_end(tmp_path):
    cfg = config.load(PRESETS / "cnn-quick.toml", ["device=cpu"])
    s = Session.create(tmp_path, "cnn", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    m = s.manifest()
    assert m["P"] == 1762 and m["steps"] == 4
    assert s.load_npy("jacobian.npy").shape == (1762, 1762)
    assert sum(s.spectrum()["regions"][r]["count"] for r in ("chaotic", "bulk", "stable")) \
        == 1762


# ---- J and its SVD past memory -----------------------------------------------------------------


def test_the_device_svd_path_equals_the_cpu_one(tmp_path):
    """The path a GPU takes (J assembled on the device from column blocks of the file, U and
    Vh written back in row blocks), run here with torch on the CPU."""
    import torch

    from engine import files, spectrum

    rng = np.random.default_rng(0)
    P = 300
    J = np.asfortranarray(np.eye(P) + 0.3 * rng.standard_normal((P, P))).astype(np.float32)
    np.save(tmp_path / "J.npy", J)
    Jm = np.load(tmp_path / "J.npy", mmap_mode="r")
    U, S, Vh = spectrum.svd_device(Jm, torch.device("cpu"), block=64)
    U0, S0, Vh0 = spectrum.svd(Jm)
    np.testing.assert_allclose(S.numpy(), S0, rtol=0, atol=1e-12 * S0[0])
    rec = (U.numpy() * S.numpy()) @ Vh.numpy()
    np.testing.assert_allclose(rec, J.astype(np.float64), atol=1e-11)
    files.atomic_save_npy_rows(tmp_path / "U.npy", (P, P), np.float32,
                               (U[a: a + 64].numpy() for a in range(0, P, 64)))
    np.testing.assert_array_equal(np.load(tmp_path / "U.npy"), U.numpy().astype(np.float32))
    cos_t = spectrum.region_cosines(U, Vh, S.numpy(), 0.05)
    cos_n = spectrum.region_cosines(U.numpy(), Vh.numpy(), S.numpy(), 0.05)
    for k in cos_n:
        np.testing.assert_allclose(cos_t[k], cos_n[k], atol=1e-10)
    _, S_only, _ = spectrum.svd_device(Jm, torch.device("cpu"), vectors=False)
    np.testing.assert_allclose(S_only.numpy(), S0, atol=1e-12 * S0[0])


def test_singular_values_alone(tmp_path):
    cfg = config.load(PRESETS / "quick.toml", ["spectrum.vectors=false", "device=cpu"])
    s = Session.create(tmp_path, "s-only", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK
    assert sorted(p.name for p in (s.path / "svd").iterdir()) == ["S.npy"]
    summary = s.spectrum()
    assert "alignment_note" not in summary and "align_mean" not in summary["regions"]["bulk"]
    ref = Session.create(tmp_path, "full", config.load(PRESETS / "quick.toml", ["device=cpu"]))
    assert runner.run_session(ref.path) == runner.EXIT_OK
    # the same values, to the accuracy of the CPU's Gram route (eps s_1^2 / s per value: its
    # values-only eigensolver is not the one that computes vectors)
    a, b = s.load_npy("svd/S.npy"), ref.load_npy("svd/S.npy")
    eps = np.finfo(np.float64).eps
    assert np.all(np.abs(a - b) <= 1e-12 * b + 16 * eps * b[0] ** 2 / np.maximum(b, 1e-300))
    with pytest.raises(config.ConfigError, match="spectrum.vectors: analysis.distance needs"):
        config.load(PRESETS / "paper-digits-sgd.toml", ["spectrum.vectors=false"])


def test_an_svd_that_cannot_fit_is_refused_with_the_figure(tmp_path, capsys, monkeypatch):
    from engine import plan

    monkeypatch.setattr(plan, "available_memory", lambda: 16 * 10**9)
    code = main(["run", "lenet5-digits28", "--set", "device=cpu", "--sessions", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [  # the Gram route (default): float32 would need more
        "the float64 SVD of this run's 61,706 x 61,706 Jacobian (Gram route, CPU) needs 61.7 GB "
        "of memory and 16.0 GB is available here: set spectrum.vectors = false (the singular "
        "values alone need 31.2 GB), or run where it fits"]
    code = main(["run", "lenet5-digits28", "--set", "device=cpu", "--sessions", str(tmp_path),
                 "--set", "spectrum.svd_method=gesdd"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == ("the float64 SVD of this run's 61,706 x 61,706 Jacobian (LAPACK gesdd) "
                      "needs 274.1 GB of memory and 16.0 GB is available here: set "
                      'spectrum.svd_dtype = "float32" (it needs 137.1 GB) or spectrum.vectors '
                      "= false (the singular values alone need 60.9 GB), or run where it fits")
    code = main(["run", "lenet5-digits28", "--set", "device=cpu", "--sessions", str(tmp_path),
                 "--set", "spectrum.vectors=false", "--set", "spectrum.svd_dtype=float32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "the float32 SVD of this run's 61,706 x 61,706 Jacobian (LAPACK gesdd) needs 30.5 GB "
        "of memory and 16.0 GB is available here: set jacobian.svd = false, or run where it "
        "fits"]
    assert not any(tmp_path.iterdir())


def test_a_float32_svd_is_recorded_and_close_to_the_float64_one(tmp_path):
    """spectrum.svd_dtype = "float32": half the memory; S within float32 rounding of s_1 of the
    float64 SVD of the same J, the alignment still float64 on disk, the summary says which."""
    cfg = config.load(PRESETS / "quick.toml", ["spectrum.svd_dtype=float32", "device=cpu"])
    s = Session.create(tmp_path, "f32", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK
    S32 = s.load_npy("svd/S.npy")
    S64 = np.linalg.svd(s.load_npy("jacobian.npy").astype(np.float64), compute_uv=False)
    assert S32.dtype == np.float64 and s.load_npy("svd/alignment.npy").dtype == np.float64
    err = np.abs(S32 - S64).max() / S64[0]
    assert 0 < err < 1e-5
    assert s.spectrum()["svd_dtype"] == "float32"
    from engine.present.report import render_report

    assert "The SVD ran in float32 (`spectrum.svd_dtype`)" in render_report(s)
    f32 = plan_mod.make_plan(cfg)
    f64 = plan_mod.make_plan(config.load(PRESETS / "quick.toml", ["device=cpu"]))
    gesdd64 = plan_mod.make_plan(config.load(PRESETS / "quick.toml",
                                             ["device=cpu", "spectrum.svd_method=gesdd"]))
    assert f32.svd_memory("cpu") * 2 == gesdd64.svd_memory("cpu") > 0
    # the Gram route (the CPU's float64 default) needs 2 P^2 float64 and a few blocks of J's
    # columns: less than gesdd's float32
    assert f64.svd_memory("cpu") == 2 * 8 * f64.P ** 2 + 3 * 8 * f64.P * 512 \
        < f32.svd_memory("cpu")
    # on a GPU float32 is torch's direct SVD: 5 P^2 of 4 bytes (gesvd after gesvdj), or, as
    # here (P = 1210 < a block of 2048 columns), J assembled from one block of all its columns
    assert f32.svd_memory("cuda") == max(5 * 4 * f32.P ** 2, 4 * f32.P ** 2 + 3 * 8 * f32.P ** 2)
    assert f32.lines()[2].startswith("SVD: 11.7 MB on disk (S, U, Vh); float32, memory while")
