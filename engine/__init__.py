"""tjac engine: exact training Jacobians, their spectra and sessions on disk.

A library with no UI imports; every stage is a plain function over tensors, arrays and
dataclasses (see :mod:`engine.runner` for the pipeline that strings them together). The public
API, for notebooks and scripts (docs/python.md)::

    import engine

    J = engine.training_jacobian(model, (X, y), loss=mse_loss, optimizer="adam", lr=1e-3)
    cfg = engine.load("presets/quick.toml")           # a preset, validated
    b = engine.build(cfg)                             # its data, model, problem and theta_0

* :func:`training_jacobian` -- J (P, P) of training any ``nn.Module`` (:mod:`engine.api`);
* :func:`build` / :class:`Built` -- a preset's run built on a device (:mod:`engine.build`);
* :func:`load`, :func:`loads`, :class:`RunConfig` and its sections (:class:`DataConfig`,
  :class:`ModelConfig`, :class:`TrainConfig`, :class:`JacobianConfig`,
  :class:`SpectrumConfig`), :class:`ConfigError` (:mod:`engine.config`).

The names are imported on first use (``engine.training_jacobian``), not by ``import engine``:
importing any engine module runs this file, and the config layer stays torch-free.
"""

__version__ = "0.1.0"

__all__ = ["training_jacobian", "build", "Built", "load", "loads", "ConfigError", "RunConfig",
           "DataConfig", "ModelConfig", "TrainConfig", "JacobianConfig", "SpectrumConfig",
           "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
