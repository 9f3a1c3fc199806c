"""ConfigField: one config key and its editor, validated as you type (the CLI's rules).

A closed choice (dataset, optimizer, schedule, activation, arch...) and a boolean get a Select
that offers only the valid values; everything else an input checked on every key. The label
carries two markers that read without colour: ``>`` where the focus is, ``*`` when the value
differs from the loaded preset.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Label, Select, Static

from engine.config import ConfigError

from ..state import parse_field, value_to_text
from .inputs import OrderedInput

_UNSET = object()


def field_id(key: str) -> str:
    return "field-" + key.replace(".", "--").replace("_", "-")


class ConfigField(Vertical):
    """``key  [value]``; the validation error, when there is one, underneath."""

    class Changed(Message):
        def __init__(self, field: "ConfigField") -> None:
            super().__init__()
            self.field = field

    class Focused(Message):
        def __init__(self, field: "ConfigField") -> None:
            super().__init__()
            self.field = field

    def __init__(self, key: str, value: Any, help: str, *, label: str | None = None,
                 choices: tuple[str, ...] | None = None, boolean: bool = False,
                 loaded: Any = _UNSET, label_width: int = 22) -> None:
        super().__init__(id=field_id(key), classes="config-field")
        self.key = key
        self.help = help
        self.value = value
        self.loaded = value if loaded is _UNSET else loaded
        self.error: str | None = None
        self.label_text = label or key
        self.label_width = label_width
        self.boolean = boolean
        self.choices = ("true", "false") if boolean else choices
        self.focused_here = False
        self._ready = False

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield Label(self._label(), classes="field-key")
            if self.choices:
                text = value_to_text(self.value)
                options = [(c, c) for c in self.choices]
                if text not in self.choices:  # cannot happen for a loaded config; be safe
                    options.append((text, text))
                yield Select(options, value=text, allow_blank=False, compact=True,
                             classes="field-input")
            else:
                yield OrderedInput(value_to_text(self.value), classes="field-input",
                                   compact=True)
        yield Static("", classes="field-msg", markup=False)

    def on_mount(self) -> None:
        self._ready = True
        if self.input.value != value_to_text(self.value):  # set while it was being built
            self.set_value(self.value)
        self._refresh_label()

    # ---- state -----------------------------------------------------------------------------
    @property
    def input(self) -> OrderedInput | Select:
        """The editor: an input, or a Select for a choice or a boolean."""
        return self.query_one(".field-input")

    @property
    def modified(self) -> bool:
        return self.error is not None or self.value != self.loaded

    def _label(self) -> Text:
        t = Text(">" if self.focused_here else " ", style="bold")
        t.append("*" if self.modified else " ", style="bold yellow")
        t.append(self.label_text)
        t.truncate(self.label_width, overflow="ellipsis")
        return t

    def _refresh_label(self) -> None:
        if self._ready:
            self.query_one(".field-key", Label).update(self._label())
        self.set_class(self.modified, "-modified")

    def set_value(self, value: Any, loaded: Any = _UNSET) -> None:
        """Show ``value`` (``loaded``: the preset's value, for the modified marker)."""
        self.value = value
        if loaded is not _UNSET:
            self.loaded = loaded
        self.error = None
        if not self._ready:
            return  # on_mount shows it
        text = value_to_text(value)
        editor = self.input
        if isinstance(editor, Select):
            with editor.prevent(Select.Changed):
                editor.value = text
            self._show_error()
        else:
            editor.value = text  # re-validated through its Changed event
        self._refresh_label()

    def _accept(self, text: str) -> None:
        try:
            self.value = parse_field(self.key, text)
            self.error = None
        except ConfigError as e:
            self.error = str(e)
        self._show_error()
        self._refresh_label()
        self.post_message(self.Changed(self))

    def _show_error(self) -> None:
        msg = self.query_one(".field-msg", Static)
        msg.update(self.error or "")
        msg.set_class(self.error is not None, "-error")
        self.input.set_class(self.error is not None, "-bad-value")

    # ---- events ----------------------------------------------------------------------------
    def on_input_changed(self, event: OrderedInput.Changed) -> None:
        event.stop()
        self._accept(event.value)

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        # a Changed still queued from the Select's first value is stale once set_value ran
        if isinstance(event.value, str) and event.value == event.select.value:
            self._accept(event.value)

    def on_descendant_focus(self) -> None:
        self.focused_here = True
        self.add_class("-focused")
        self._refresh_label()
        self.post_message(self.Focused(self))

    def on_descendant_blur(self) -> None:
        self.focused_here = False
        self.remove_class("-focused")
        self._refresh_label()
