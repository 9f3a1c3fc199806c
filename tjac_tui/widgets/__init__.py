"""Small widgets of the workbench: text plots, the Jacobian progress line, config fields.

Imported on first use (PEP 562): the Setup pane's widgets do not pull in the plotting code."""

from __future__ import annotations

import importlib

_WHERE = {"CheckList": "checklist", "ConfigField": "fields", "JacobianBar": "progress",
          "OrderedInput": "inputs", "PlotView": "plot", "Spark": "spark"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
