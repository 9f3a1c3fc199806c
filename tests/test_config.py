"""Preset validation: every kind of bad preset is exit 2, one line naming the file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine import config
from tjac_tui.cli import main

from conftest import PRESETS

GOOD = (PRESETS / "quick.toml").read_text()


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "x.toml"
    p.write_text(text)
    return p


BAD = {
    "unknown key": (GOOD.replace("lr = 0.1", "lr = 0.1\nlearning_rate = 0.1"),
                    "train.learning_rate: unknown key"),
    "unknown section": (GOOD + "\n[trian]\nlr = 1\n", "trian: unknown key"),
    "wrong type": (GOOD.replace("lr = 0.1", 'lr = "fast"'),
                   'train.lr: expected a positive number, got "fast"'),
    "out of range": (GOOD.replace("momentum = 0.9", "momentum = 1.5"),
                     "train.momentum: expected a number in [0, 1), got 1.5"),
    "negative int": (GOOD.replace("epochs = 2", "epochs = -1"),
                     "train.epochs: expected a positive integer, got -1"),
    "bad choice": (GOOD.replace('activation = "gelu_tanh"', 'activation = "swish"'),
                   'model.activation: expected one of "relu", "tanh", "gelu", "gelu_tanh", '
                   'got "swish"'),
    "bad widths": (GOOD.replace("hidden = [16]", "hidden = [16, 0]"),
                   "model.hidden: expected a list of positive integers"),
    "bool for number": (GOOD.replace("lr = 0.1", "lr = true"),
                        "train.lr: expected a positive number, got true"),
    "section not a table": ("spectrum = 3\n" + GOOD.replace("[spectrum]\nbulk_tol = 1e-3", ""),
                            "spectrum: expected a table, got 3"),
    "missing data file": (GOOD.replace('dataset = "digits"', 'dataset = "npz"\npath = "nope.npz"'),
                          "data.path: no such file: {dir}/nope.npz"),
    "missing init file": (GOOD.replace('activation = "gelu_tanh"',
                                       'activation = "gelu_tanh"\ninit = "missing.npz"'),
                          "model.init: no such file: {dir}/missing.npz"),
    "adam without eps_root": (GOOD.replace('optimizer = "sgd"',
                                           'optimizer = "adam"\neps_root = 0.0'),
                              "train.eps_root: expected a positive number for the Jacobian"),
    "broken TOML": (GOOD.replace("lr = 0.1", "lr = = 0.1"), "invalid TOML"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_preset_is_one_line_exit_2(tmp_path, capsys, case):
    text, expected = BAD[case]
    path = write(tmp_path, text)
    code, out, err = run_cli(["run", str(path), "--sessions", str(tmp_path / "s")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{path}: ")
    assert expected.format(dir=path.parent) in lines[0]
    assert not (tmp_path / "s").exists()  # nothing was created


def test_missing_preset_file(tmp_path, capsys):
    code, _, err = run_cli(["run", str(tmp_path / "nope.toml")], capsys)
    assert code == 2
    assert err.strip().startswith(f"{tmp_path / 'nope.toml'}: no such preset file or shipped "
                                  "preset; shipped presets: ")


@pytest.mark.parametrize("override,expected", [
    ("train.lr=fast", 'train.lr: expected a positive number, got "fast"'),
    ("train.lr=-1", "train.lr: expected a positive number, got -1"),
    ("train.nope=1", "train.nope: unknown key"),
    ("model.hidden=[8,x]", "model.hidden: expected a list of positive integers"),
    ("lr", "expected KEY=VALUE"),
])
def test_bad_override(tmp_path, capsys, override, expected):
    code, _, err = run_cli(["run", str(PRESETS / "quick.toml"), "--set", override,
                            "--sessions", str(tmp_path)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert expected in err


def test_overrides_apply_and_resolved_config_round_trips(tmp_path):
    cfg = config.load(PRESETS / "quick.toml", ["train.lr=0.05", "model.activation=relu",
                                               "model.hidden=[8, 4]", "seed=3",
                                               "train.shuffle=true"])
    assert (cfg.train.lr, cfg.model.activation, cfg.model.hidden, cfg.seed, cfg.train.shuffle) \
        == (0.05, "relu", [8, 4], 3, True)
    again = config.loads(config.dumps(cfg))
    assert again == cfg


def test_no_traceback_from_the_real_command(tmp_path):
    path = write(tmp_path, GOOD.replace("lr = 0.1", 'lr = "fast"'))
    r = subprocess.run([sys.executable, "-m", "tjac_tui.cli", "run", str(path)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == f'{path}: train.lr: expected a positive number, got "fast"\n'
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS.glob("*.toml")))
def test_shipped_presets_are_valid(preset):
    config.load(PRESETS / preset)


def test_paper_presets_match_the_paper():
    sgd = config.load(PRESETS / "paper-digits-sgd.toml")
    assert sgd.model.hidden == [64] and sgd.model.activation == "gelu_tanh"
    assert (sgd.train.optimizer, sgd.train.lr, sgd.train.momentum, sgd.train.schedule) == \
        ("sgd", 0.1, 0.9, "cosine")
    assert (sgd.train.batch_size, sgd.train.epochs, sgd.train.shuffle) == (64, 25, False)
    assert (sgd.data.test_size, sgd.data.split_seed, sgd.dtype) == (197, 0, "float32")
    adam = config.load(PRESETS / "paper-digits-adam.toml")
    assert (adam.train.optimizer, adam.train.lr, adam.train.eps_root) == ("adam", 3e-3, 1e-8)
