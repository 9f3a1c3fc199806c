"""Preset fuzzing (hypothesis): whatever a preset file holds, loading it either gives a valid
config or one line naming the file and the key, and `tjac run` on it exits 2 with that line and
no traceback."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import tomli_w  # noqa: E402

from engine import config  # noqa: E402
from tjac_tui.cli import main  # noqa: E402

KEYS = {row.key for row in config.describe(with_plugins=True)}
SECTIONS = sorted({k.rsplit(".", 1)[0] for k in KEYS if "." in k})
LEAVES = sorted(KEYS)

scalars = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet="abc./\\\x00 -_", max_size=12),
    st.booleans(),
    st.sampled_from(["digits", "npz", "sgd", "adam", "cosine", "relu", "auto", "cuda:99",
                     "lecun", "x.npz", "mod:fn", "bulk", "top", ""]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


@st.composite
def tables(draw) -> dict:
    """Mostly real keys with random values, some unknown keys, some wrong shapes."""
    table: dict = {}
    for key in draw(st.lists(st.sampled_from(LEAVES), max_size=6)):
        node = table
        *parents, leaf = key.split(".")
        for part in parents:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[leaf] = draw(values)
    if draw(st.booleans()):
        table[draw(st.sampled_from(SECTIONS + ["trian", "analysis", "study", "sweep"]))] = draw(values)
    if draw(st.booleans()):
        table[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return table


def toml_text(table: dict) -> str | None:
    try:
        return tomli_w.dumps(table)
    except (TypeError, ValueError):
        return None


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(table=tables())
def test_any_preset_is_valid_or_one_line_exit_2(table, tmp_path_factory, capsys):
    text = toml_text(table)
    if text is None:
        return
    d = tmp_path_factory.mktemp("fuzz")
    p = d / "fuzz.toml"
    p.write_text(text)
    try:
        cfg = config.load(p)
    except config.ConfigError as e:
        msg = str(e)
        assert msg.startswith(f"{p}: ") and "\n" not in msg and "Traceback" not in msg
        capsys.readouterr()
        assert main(["run", str(p), "--sessions", str(d / "s")]) == 2
        out, err = capsys.readouterr()
        assert err == msg + "\n" and out == ""
        assert not (d / "s").exists()
        return
    assert isinstance(cfg, config.RunConfig)
    assert math.isfinite(cfg.train.lr) and cfg.train.lr > 0


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(LEAVES + ["train", "nope", "train.nope", "a..b", ".x", "x."]),
       raw=st.text(max_size=30))
def test_any_override_is_valid_or_one_line_exit_2(key, raw, tmp_path_factory, capsys):
    preset = Path(__file__).resolve().parents[1] / "presets" / "quick.toml"
    d = tmp_path_factory.mktemp("fuzz-set")
    try:
        config.load(preset, [f"{key}={raw}"])
    except config.ConfigError as e:
        assert "\n" not in str(e)
        capsys.readouterr()
        assert main(["run", str(preset), "--set", f"{key}={raw}", "--sessions",
                     str(d / "s")]) == 2
        out, err = capsys.readouterr()
        assert err == str(e) + "\n" and out == ""
