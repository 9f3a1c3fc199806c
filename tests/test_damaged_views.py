"""The workbench and `tjac ls` / `tjac resume` on damaged and copied sessions: a file that does
not match its record is named on screen, the app keeps running, and a copy that only changed
the files' time stamps is not taken for damage (or stops being taken for it once resumed)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.session import Session, describe
from tjac_tui.app import TjacApp
from tjac_tui.cli import main

from conftest import compare, running, screen_lines, until


def text_of(app, selector: str) -> str:
    """The widget's text; empty while the panes are still being mounted."""
    from textual.css.query import NoMatches

    try:
        return str(app.query_one(selector).render())
    except NoMatches:
        return ""


def damage(path: Path, how: str) -> str:
    """Damage a copy of a finished session; returns the file the damage is in."""
    if how == "spectrum.json cut":
        p = path / "spectrum.json"
        p.write_bytes(p.read_bytes()[:300])
        return "spectrum.json"
    if how == "spectrum.json a list":
        (path / "spectrum.json").write_text("[1, 2, 3]")
        return "spectrum.json"
    if how == "S.npy cut":
        p = path / "svd" / "S.npy"
        p.write_bytes(p.read_bytes()[:500])
        return "svd/S.npy"
    if how == "S.npy 2-D":
        np.save(path / "svd" / "S.npy", np.ones((3, 4)))
        return "svd/S.npy"
    if how == "S.npy empty, unrecorded":  # a file the manifest does not know, hand-made
        m = json.loads((path / "manifest.json").read_text())
        del m["files"]["svd/S.npy"]
        (path / "manifest.json").write_text(json.dumps(m))
        np.save(path / "svd" / "S.npy", np.zeros(0))
        return "svd/S.npy"
    raise ValueError(how)


HOW = ["spectrum.json cut", "spectrum.json a list", "S.npy cut", "S.npy 2-D",
       "S.npy empty, unrecorded"]


@pytest.mark.parametrize("how", HOW)
def test_a_damaged_spectrum_is_named_on_screen_and_the_app_keeps_running(quick_session,
                                                                          tmp_path, how):
    path = tmp_path / "damaged"
    shutil.copytree(quick_session, path)
    rel = damage(path, how)

    async def go():
        app = TjacApp(sessions_dir=tmp_path, session=path.name)
        async with running(app, (120, 40)) as pilot:
            await pilot.press("3")  # the Spectrum pane
            await until(pilot, lambda: "damaged" in text_of(app, "#spectrum-head")
                        or "cannot" in text_of(app, "#spectrum-head"), what="the message")
            head = text_of(app, "#spectrum-head")
            assert rel in head and "tjac resume" in head, head
            if rel == "spectrum.json":  # the Regions pane reads only the summary
                await pilot.press("4")
                await until(pilot, lambda: "damaged" in text_of(app, "#regions-summary"),
                            what="the regions message")
                assert "spectrum.json" in text_of(app, "#regions-summary")
            await pilot.press("1")
            assert app.is_running and app.return_code is None
    asyncio.run(go())


def test_compare_names_the_damaged_session(quick_session, tmp_path):
    root = tmp_path / "s"
    shutil.copytree(quick_session, root / "good")
    shutil.copytree(quick_session, root / "bad")
    damage(root / "bad", "S.npy cut")

    async def go():
        app = TjacApp(sessions_dir=root)
        async with running(app, (120, 40)) as pilot:
            await compare(app, pilot, 2, [root / "good", root / "bad"])
            await until(pilot, lambda: "damaged" in text_of(app, "#compare-head"),
                        what="the message")
            head = text_of(app, "#compare-head")
            assert "bad" in head and "svd/S.npy" in head, head
            assert app.is_running
    asyncio.run(go())


@pytest.mark.parametrize("content", [b"{garbage", b"", b"[]"])
def test_live_says_why_a_manifest_is_damaged(quick_session, tmp_path, content):
    path = tmp_path / "m"
    shutil.copytree(quick_session, path)
    (path / "manifest.json").write_bytes(content)

    async def go():
        app = TjacApp(sessions_dir=tmp_path, session=path.name)
        async with running(app, (120, 40)) as pilot:
            await until(pilot, lambda: "damaged" in text_of(app, "#live-head"),
                        what="the Live header")
            head = text_of(app, "#live-head")
            assert "status damaged" in head and "manifest.json" in head, head
    asyncio.run(go())


def test_a_copy_that_changed_only_time_stamps_is_not_damaged(quick_session, tmp_path,
                                                              monkeypatch, capsys):
    """``cp -r`` keeps no modification times: small files are then judged by their contents;
    a large one is "modified" until ``tjac resume`` checks it and records its new time."""
    from engine import manifest as manifest_mod

    path = tmp_path / "copy"
    shutil.copytree(quick_session, path, copy_function=shutil.copy)  # cp -r: new times
    later = os.stat(path / "theta0.npz").st_mtime + 100
    for p in path.rglob("*"):
        if p.is_file():
            os.utime(p, (later, later))
    assert describe(Session(path))["status"] == "done"
    # the same copy where J counts as large: its time stamp cannot be trusted without a read
    monkeypatch.setattr(manifest_mod, "RECHECK_MAX", 10_000)  # (check_file's)
    row = describe(Session(path))
    assert row["status"] == "damaged"
    assert row["problem"].startswith("jacobian.npy: modified since it was written")
    assert main(["ls", "--sessions", str(tmp_path)]) == 0
    assert "copy: jacobian.npy: modified since it was written" in capsys.readouterr().out
    assert main(["resume", str(path)]) == 0
    assert "already done (every file checked)" in capsys.readouterr().err
    assert describe(Session(path))["status"] == "done"


def test_the_sessions_pane_says_why_a_session_is_damaged(quick_session, tmp_path):
    root = tmp_path / "s"
    shutil.copytree(quick_session, root / "bad")
    p = root / "bad" / "thetaT.npz"
    p.write_bytes(p.read_bytes()[:-10])

    async def go():
        app = TjacApp(sessions_dir=root)
        async with running(app, (120, 40)) as pilot:
            await pilot.press("5")
            await until(pilot, lambda: "damaged" in text_of(app, "#sessions-detail"),
                        what="the detail line")
            detail = text_of(app, "#sessions-detail")
            assert "thetaT.npz:" in detail and "bytes" in detail, detail
            assert "damaged: thetaT.npz" in "\n".join(screen_lines(app))
    asyncio.run(go())
