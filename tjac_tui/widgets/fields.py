"""ConfigField: one config key with an input validated as you type (the CLI's rules)."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Static

from engine.config import ConfigError

from ..state import parse_field, value_to_text


def field_id(key: str) -> str:
    return "field-" + key.replace(".", "--").replace("_", "-")


class ConfigField(Vertical):
    """``key  [value]`` with the help text, or the validation error, underneath."""

    class Changed(Message):
        def __init__(self, field: "ConfigField") -> None:
            super().__init__()
            self.field = field

    def __init__(self, key: str, value: Any, help: str) -> None:
        super().__init__(id=field_id(key), classes="config-field")
        self.key = key
        self.help = help
        self.value = value
        self.error: str | None = None
        self._initial = value_to_text(value)

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield Label(self.key, classes="field-key")
            yield Input(self._initial, classes="field-input", compact=True)
        yield Static(self.help, classes="field-msg", markup=False)

    @property
    def input(self) -> Input:
        return self.query_one(Input)

    def set_value(self, value: Any) -> None:
        """Show ``value`` (re-validated through the input's Changed event)."""
        self.value = value
        self.error = None
        self.input.value = value_to_text(value)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        try:
            self.value = parse_field(self.key, event.value)
            self.error = None
        except ConfigError as e:
            self.error = str(e)
        msg = self.query_one(".field-msg", Static)
        msg.update(self.error or self.help)
        msg.set_class(self.error is not None, "-error")
        self.input.set_class(self.error is not None, "-bad-value")
        self.post_message(self.Changed(self))
