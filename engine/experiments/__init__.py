"""The paper's analyses, one module each: ``run(ctx, cfg) -> dict`` over a finished spectrum.

Each analysis's preset section (``[analysis.NAME]``) is declared and registered, torch-free, in
:mod:`engine.sections`; its implementation is ``engine/experiments/NAME.py``, imported by the
runner only when the analysis runs. The runner runs the configured analyses as stages
``analysis.NAME`` after the spectrum, in registration order, so they resume like any stage. An
analysis saves arrays with ``ctx.write_npy("analyses/NAME_x.npy", a)`` and returns the
JSON-able result stored as ``analyses/NAME.json``; a long one keeps a :class:`common.Partial`
checkpoint (``analyses/.NAME.partial.json``) so an interrupted stage picks up where it stopped.
Shared helpers: :mod:`engine.experiments.common`.
"""
