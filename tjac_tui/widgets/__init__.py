"""Small widgets of the workbench: text plots, the Jacobian progress line, config fields."""

from .checklist import CheckList
from .fields import ConfigField
from .plot import PlotView
from .progress import JacobianBar

__all__ = ["CheckList", "ConfigField", "JacobianBar", "PlotView"]
