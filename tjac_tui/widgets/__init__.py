"""Small widgets of the workbench: text plots, the Jacobian progress line, config fields."""

from .fields import ConfigField
from .plot import PlotView
from .progress import JacobianBar

__all__ = ["ConfigField", "JacobianBar", "PlotView"]
