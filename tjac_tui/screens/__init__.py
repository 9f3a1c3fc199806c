"""The panes of the workbench (one per tab) and its modal screens.

Imported on first use (PEP 562), so that starting the app loads only the Setup pane's code; the
other panes (and numpy, plotext) load while the first screen is already shown."""

from __future__ import annotations

import importlib

_WHERE = {"ComparePane": "compare", "ConfirmScreen": "confirm", "HelpScreen": "help",
          "LivePane": "live", "RegionsPane": "regions", "SessionsPane": "sessions",
          "SetupPane": "setup", "SpectrumPane": "spectrum",
          "AnalysesPane": "analyses"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
