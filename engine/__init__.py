"""tjac engine: exact training Jacobians, their spectra and sessions on disk.

A library with no UI imports; every stage is a plain function over tensors, arrays and
dataclasses (see :mod:`engine.runner` for the pipeline that strings them together).
"""

__version__ = "0.1.0"
