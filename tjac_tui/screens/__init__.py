"""The panes of the workbench (one per tab) and its modal screens."""

from .compare import ComparePane
from .confirm import ConfirmScreen
from .help import HelpScreen
from .live import LivePane
from .regions import RegionsPane
from .sessions import SessionsPane
from .setup import SetupPane
from .spectrum import SpectrumPane

__all__ = ["ComparePane", "ConfirmScreen", "HelpScreen", "LivePane", "RegionsPane",
           "SessionsPane", "SetupPane", "SpectrumPane"]
