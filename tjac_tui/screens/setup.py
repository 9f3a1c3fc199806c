"""Setup pane: pick a preset (shipped or any TOML file), see and edit every config field with
the CLI's validation as you type, save as a new preset, start the run."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Select, Static

from engine import config as config_mod

from ..state import field_help, flatten, unflatten
from ..widgets import ConfigField


class SetupPane(Vertical):
    # ctrl+r (start) and ctrl+s (save) are app bindings, live while this pane is shown
    BINDINGS = [Binding("escape", "leave_field", "Leave field", show=False)]

    def __init__(self, presets: list[Path], *, id: str | None = None):
        super().__init__(id=id)
        self.presets = list(presets)
        self.preset_path: Path | None = None
        self.status_text = ""
        self._described: set[str] = set()
        # the fields shown, kept here (not queried from the DOM): a field being removed is gone
        # from this dict at once, so the status, the buttons and ctrl+r agree immediately
        self._fields: dict[str, ConfigField] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(id="setup-source"):
            yield Select([(p.stem, str(p)) for p in self.presets], id="preset-select",
                         prompt="shipped preset", compact=True)
            yield Input(placeholder="or a TOML file: path, then enter", id="preset-path",
                        compact=True)
        yield Static("", id="setup-status")
        with VerticalScroll(id="setup-fields"):
            for info in config_mod.describe():
                self._described.add(info.key)
                self._fields[info.key] = ConfigField(info.key, info.default, info.help)
                yield self._fields[info.key]
        with Horizontal(id="setup-actions"):
            yield Input(placeholder="save as: name or path.toml", id="save-path", compact=True)
            yield Button("Save preset", id="save-btn", compact=True)
            yield Button("Start run", id="start-btn", variant="primary", compact=True)

    # ---- fields ----------------------------------------------------------------------------
    def fields(self) -> dict[str, ConfigField]:
        return dict(self._fields)

    def field(self, key: str) -> ConfigField:
        return self.fields()[key]

    def values(self) -> dict:
        return {k: f.value for k, f in self.fields().items()}

    def errors(self) -> dict[str, str]:
        return {k: f.error for k, f in self.fields().items() if f.error}

    def config(self) -> config_mod.RunConfig:
        """The edited config, validated as a whole (raises ConfigError)."""
        errs = self.errors()
        if errs:
            raise config_mod.ConfigError(next(iter(errs.values())))
        where = str(self.preset_path) if self.preset_path else "<setup>"
        return config_mod.from_dict(unflatten(self.values()), where,
                                    self.preset_path.parent if self.preset_path else None)

    def set_status(self, text: str, style: str = "") -> None:
        self.status_text = text
        self.query_one("#setup-status", Static).update(Text(text, style=style))

    def on_config_field_changed(self, event: ConfigField.Changed) -> None:
        self._refresh_status()

    def _refresh_status(self) -> None:
        errs = self.errors()
        src = str(self.preset_path) if self.preset_path else "defaults"
        self.query_one("#start-btn", Button).disabled = bool(errs)
        if errs:
            self.set_status(f"{len(errs)} invalid field(s); first: {next(iter(errs.values()))}",
                            "bold red")
            return
        try:
            self.config()
        except config_mod.ConfigError as e:
            self.set_status(str(e), "bold red")
            return
        self.set_status(f"{src}: valid. ctrl+r starts the run, ctrl+s saves a preset", "green")

    # ---- loading ---------------------------------------------------------------------------
    def load_preset(self, path: str | Path) -> bool:
        path = Path(path)
        try:
            cfg = config_mod.load(path)
        except config_mod.ConfigError as e:
            self.set_status(str(e), "bold red")
            return False
        self.preset_path = path
        values = flatten(config_mod.to_dict(cfg))
        for key, f in list(self._fields.items()):  # sections of the previous preset only
            if key not in values and key not in self._described:
                del self._fields[key]
                f.remove()
        box = self.query_one("#setup-fields", VerticalScroll)
        for key, value in values.items():
            if key in self._fields:
                self._fields[key].set_value(value)
            else:
                self._fields[key] = ConfigField(key, value, field_help(key))
                box.mount(self._fields[key])
        sel = self.query_one("#preset-select", Select)
        if str(path) in [str(p) for p in self.presets] and sel.value != str(path):
            with sel.prevent(Select.Changed):
                sel.value = str(path)
        self._refresh_status()
        return True

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset-select" and isinstance(event.value, str):
            event.stop()
            self.load_preset(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "preset-path" and event.value.strip():
            event.stop()
            self.load_preset(Path(event.value.strip()).expanduser())
        elif event.input.id == "save-path":
            event.stop()
            self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start-btn":
            self.action_start()
        elif event.button.id == "save-btn":
            self.action_save()

    # ---- actions ---------------------------------------------------------------------------
    def action_leave_field(self) -> None:
        self.app.set_focus(None)

    def action_save(self) -> Path | None:
        text = self.query_one("#save-path", Input).value.strip()
        if not text:
            self.set_status("type a file name for the new preset first", "bold red")
            self.query_one("#save-path", Input).focus()
            return None
        try:
            cfg = self.config()
        except config_mod.ConfigError as e:
            self.set_status(str(e), "bold red")
            return None
        path = Path(text).expanduser()
        if path.suffix != ".toml":
            path = path.with_name(path.name + ".toml")
        if path.exists():
            self.set_status(f"{path}: exists; pick another name", "bold red")
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# saved from the tjac workbench\n{config_mod.dumps(cfg)}",
                            encoding="utf-8")
        except OSError as e:
            self.set_status(f"{path}: cannot write: {e}", "bold red")
            return None
        self.preset_path = path
        self.presets.append(path)
        sel = self.query_one("#preset-select", Select)
        with sel.prevent(Select.Changed):
            sel.set_options([(p.stem, str(p)) for p in self.presets])
            sel.value = str(path)
        self.set_status(f"saved {path}", "green")
        self.app.notify(f"preset saved: {path}")
        return path

    def action_start(self) -> Path | None:
        try:
            cfg = self.config()
        except config_mod.ConfigError as e:
            self.set_status(str(e), "bold red")
            return None
        return self.app.start_run(cfg, self.preset_path)
