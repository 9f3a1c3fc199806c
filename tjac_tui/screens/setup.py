"""Setup pane: pick a preset (shipped or any TOML file), edit it, see the run's plan, start it.

Fields are grouped by section in collapsible groups; a group's fields are built the first time
it opens, so the pane (and the app) paints at once however many keys there are. ``/`` jumps to
a field by (fuzzy) name, with every key typed after it reaching the search box (and after
Enter, the field) in order however fast the keys come; closed choices and booleans are Selects offering only valid values;
the analyses are switched on and off in a list, and each one that is on has its own group.
Every field is checked as you type with the CLI's rules, and the whole config as it changes.
A ``*`` marks a field that differs from the loaded preset, ``>`` the field with the focus.

The plan (P, steps, J's size, the SVD's memory, whether it fits: the lines ``tjac run --plan``
prints, :class:`engine.control.PlanReport`) is computed off the event loop as the config changes
(no torch); ctrl+t adds the probe's times from ``tjac run --plan --json`` in a separate process
(a few timed training steps), read back into the same report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Group as Rows
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from engine import config as config_mod, control
from engine.schema import one_line
from engine.sections import ANALYSES

from ..locations import NotFound, find_preset
from ..state import field_help, flatten, unflatten
from ..widgets.fields import ConfigField
from ..widgets.groups import ActionLink, Group
from ..widgets.inputs import OrderedInput

RUN = "run"  # the group of the top-level keys (name, seed, device, dtype...)
BASE_SECTIONS = (RUN, "data", "model", "train", "jacobian", "spectrum")
OPEN_AT_START = ("train",)
PLAN_DELAY = 0.4  # seconds without a change before the plan is recomputed
SECTION_HELP = {RUN: "name, seed, device, dtype", "data": "dataset, split, variant",
                "model": "architecture, widths, init", "train": "optimizer, schedule, epochs",
                "jacobian": "chunks, kernel, SVD", "spectrum": "region rule, vectors, exact or matrix-free",
                "analyses": "switch the paper's analyses on and off",
                "sweep": "several runs: a grid, paired lists or named points"}


def section_of(key: str) -> str:
    parts = key.split(".")
    if len(parts) == 1:
        return RUN
    if parts[0] == "analysis":
        return f"analysis.{parts[1]}"
    return parts[0]


def section_id(name: str) -> str:
    return "section-" + name.replace(".", "--").replace("_", "-")


def short_key(key: str) -> str:
    sec = section_of(key)
    return key if sec == RUN else key[len(sec) + 1:]


class PresetScreen(ModalScreen[Path | None]):
    """The shipped (and saved) presets to choose from; enter loads one, escape cancels. The
    focus is in the path box, so a path typed at once lands there (on the list, it was
    lost); up and down move through the list, and enter on an empty box loads the one
    highlighted."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, presets: list[Path], current: Path | None) -> None:
        super().__init__()
        self.presets = presets
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="presets-box"):
            yield Static("Load a preset: pick one, or type the path of a TOML file (enter "
                         "loads, escape cancels)", id="presets-title")
            yield OrderedInput(placeholder="path/to/preset.toml", id="preset-path",
                               compact=True)
            yield Static("", id="presets-msg")
            yield OptionList(*[Option(f"{p.stem}  ({p})", id=str(p)) for p in self.presets],
                             id="presets-list")

    def on_mount(self) -> None:
        ol = self.query_one("#presets-list", OptionList)
        keys = [str(p) for p in self.presets]
        if self.current is not None and str(self.current) in keys:
            ol.highlighted = keys.index(str(self.current))
        elif keys:
            ol.highlighted = 0
        self.set_focus(self.query_one("#preset-path", OrderedInput))
        self.app.release_keys()  # the keys typed since ctrl+o go to the path box

    def on_key(self, event) -> None:
        ol = self.query_one("#presets-list", OptionList)
        if event.key in ("down", "up") and ol.option_count:
            event.stop()
            step = 1 if event.key == "down" else -1
            ol.highlighted = ((ol.highlighted or 0) + step) % ol.option_count

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(Path(event.option.id))

    def on_input_submitted(self, event: OrderedInput.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if not text:  # the preset highlighted in the list
            ol = self.query_one("#presets-list", OptionList)
            if ol.highlighted is not None:
                self.dismiss(Path(ol.get_option_at_index(ol.highlighted).id))
            return
        try:  # a path, or a shipped preset's name (as `tjac run` and `tjac --preset` take)
            path = find_preset(text)
        except NotFound as e:
            self.query_one("#presets-msg", Static).update(Text(str(e), style="bold red"))
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PresetPicker(Static, can_focus=True):
    """``preset: quick  v``: enter or a click opens the list of presets."""

    BINDINGS = [Binding("enter,space", "choose", "Choose preset", show=False)]

    def action_choose(self) -> None:
        pane = self.ancestors_with_self[1]
        pane.action_choose_preset()

    def on_click(self) -> None:
        self.action_choose()


class SaveAsScreen(ModalScreen[Path | None]):
    """Save the edited config as a new preset: a name (NAME.toml in the current folder, where
    ``tjac run NAME`` finds it) or a path; the config's ``name`` becomes the file's. Enter saves, Escape cancels; a refusal stays on screen with its reason."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, pane: "SetupPane", suggestion: str) -> None:
        super().__init__()
        self.pane = pane
        self.suggestion = suggestion

    def compose(self) -> ComposeResult:
        with Vertical(id="saveas-box"):
            yield Static("Save the edited config as a new preset (a name or a path; enter "
                         "saves, escape cancels)", id="saveas-title")
            yield OrderedInput(self.suggestion, id="save-path", compact=True)
            yield Static("", id="saveas-msg")

    def on_mount(self) -> None:
        self.set_focus(self.query_one("#save-path", OrderedInput))
        self.app.release_keys()  # the keys typed since ctrl+s go to the name box

    def on_input_submitted(self, event: OrderedInput.Submitted) -> None:
        event.stop()
        path, err = self.pane.save_as(event.value)
        if err:
            self.query_one("#saveas-msg", Static).update(Text(err, style="bold red"))
        else:
            self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)


def run_name(path: Path) -> str:
    """What to type after ``tjac run`` for the preset at ``path``: its bare name where
    that finds it (the current folder), else its path."""
    try:
        if find_preset(path.stem).resolve() == path.resolve():
            return path.stem
    except NotFound:
        pass
    return str(path)


class SetupPane(Vertical):
    # ctrl+r (start), ctrl+s (save as), ctrl+t (time estimate) are app bindings, live while
    # this pane is shown
    BINDINGS = [Binding("escape", "leave_field", "Leave field", show=False),
                Binding("slash", "search", "Find field", key_display="/")]

    def __init__(self, presets: list[Path], *, ascii: bool = False, id: str | None = None):
        super().__init__(id=id)
        self.presets = list(presets)
        self.ascii = ascii
        self.preset_path: Path | None = None
        self.status_text = ""
        self._help_key: str | None = None  # the field the help line is about
        self._bad: set[str] = set()  # fields whose text is not a valid value
        self.plan_text = ""  # the plan's lines: sizes, whether they fit (tjac run --plan's)
        self.estimate_text = ""  # the probe's lines (or why none), or what the probe is doing
        self.report: control.PlanReport | None = None  # the plan of the config (no probe)
        self.plan_error: str | None = None  # why the config has no plan (data not found...)
        self.probed: control.PlanReport | None = None  # the report ctrl+t's probe made
        self.estimate_note = ""  # the probe under way, or why it failed
        self.values: dict = {}  # every key of the edited config -> its last valid value
        self.loaded: dict = {}  # the preset's values (the "modified" markers compare to it)
        self._fields: dict[str, ConfigField] = {}  # the fields built so far (open groups)
        self._stash: dict[str, dict] = {}  # the values of analyses switched off, by name
        self._building: set = set()  # mounts of fields in flight (see settled())
        self._plan_gen = 0
        self._plan_timer = None
        self._estimate_for: str | None = None  # the config (TOML) the time estimate is of
        for info in config_mod.describe():
            self.values[info.key] = info.default
        self.loaded = dict(self.values)

    def compose(self) -> ComposeResult:
        yield PresetPicker("preset: -", id="preset-picker")
        yield Static("", id="setup-status")
        yield Static("", id="setup-plan")
        with Vertical(id="setup-search"):  # the search box, shown by "/"
            yield OrderedInput(placeholder="find a field: type part of its name, enter jumps",
                               id="field-search", compact=True)
            yield OptionList(id="field-matches", compact=True)
        with VerticalScroll(id="setup-fields"):
            for name in BASE_SECTIONS:
                yield self._group(name)
            yield Group("analyses", self._title("analyses"), ascii=self.ascii,
                        id=section_id("analyses"))
        yield Static("/ finds a field; enter on a group opens it", id="setup-help")
        with Horizontal(id="setup-actions"):
            yield ActionLink("Save as (ctrl+s)", id="save-btn")
            yield ActionLink("Time estimate (ctrl+t)", id="estimate-btn")
            yield ActionLink("Start run (ctrl+r)", id="start-btn")

    def on_mount(self) -> None:
        self.query_one("#setup-search").display = False
        self._refresh_status()
        self.call_after_refresh(self._open_at_start)

    def _open_at_start(self) -> None:
        """The groups open at start get their fields after the first paint."""
        for name in OPEN_AT_START:
            self._fill(self.sections()[name])

    # ---- groups ----------------------------------------------------------------------------
    def _title(self, name: str) -> str:
        extra = SECTION_HELP.get(name)
        if name.startswith("analysis."):
            extra = ANALYSES[name.split(".", 1)[1]].title
        return f"{name}  ({extra})" if extra else name

    def _group(self, name: str, collapsed: bool | None = None) -> Group:
        if collapsed is None:
            collapsed = name not in OPEN_AT_START
        return Group(name, self._title(name), collapsed=collapsed, ascii=self.ascii,
                     id=section_id(name))

    def sections(self) -> dict[str, Group]:
        return {g.name_: g for g in self.query(Group).results(Group)}

    def _keys_of(self, name: str) -> list[str]:
        return [k for k in self.values if section_of(k) == name
                and not (name.startswith("analysis.") and k.endswith(".enabled"))]

    def _group_names(self) -> list[str]:
        """The groups the current config has (base, the analyses that are on, sweep)."""
        names = list(BASE_SECTIONS)
        names += [f"analysis.{n}" for n in ANALYSES if self.values.get(f"analysis.{n}.enabled")]
        if any(k.startswith("sweep.") for k in self.values):
            names.append("sweep")
        return names

    def _make_field(self, key: str) -> ConfigField:
        try:
            info = config_mod.field_info(key)
            choices = info.check.choices
            boolean = info.check.schema.get("type") == "boolean"
        except KeyError:
            choices, boolean = None, False
        return ConfigField(key, self.values[key], field_help(key), label=short_key(key),
                           choices=choices, boolean=boolean,
                           loaded=self.loaded.get(key, self.values[key]))

    def _fill(self, group: Group):
        """Build the fields of a group (once); returns the mount's awaitable (or None)."""
        if group.filled or not self.app.is_running:  # built already, or quitting
            return None
        group.filled = True
        if group.name_ == "analyses":
            from textual.widgets.selection_list import Selection

            from ..widgets.checklist import CheckList

            toggles = CheckList(*[Selection(f"{n}: {spec.title}", n,
                                            bool(self.values.get(f"analysis.{n}.enabled")))
                                  for n, spec in ANALYSES.items()], id="analysis-toggles")
            mounting = group.body.mount(toggles)
            self._building.add(mounting)
            return mounting
        new = []
        for key in self._keys_of(group.name_):
            self._fields[key] = self._make_field(key)
            new.append(self._fields[key])
        if not new:
            return None
        mounting = group.body.mount(*new)
        self._building.add(mounting)
        return mounting

    async def settled(self) -> None:
        """Wait for the fields being built (quitting mid-build would tear them half-made)."""
        while self._building:
            await self._building.pop()

    def on_group_opened(self, event: Group.Opened) -> None:
        self._fill(event.group)

    def _sync_groups(self) -> None:
        """Add and remove the analysis / sweep groups so they match the config."""
        want = self._group_names()
        have = self.sections()
        box = self.query_one("#setup-fields", VerticalScroll)
        for name, sec in have.items():
            if name not in want and name not in BASE_SECTIONS and name != "analyses":
                for key in [k for k in self._fields if section_of(k) == name]:
                    del self._fields[key]
                    if key == self._help_key:  # its help (or its error) goes with it
                        self._help_key = None
                        self.query_one("#setup-help", Static).update("")
                sec.remove()
        for name in want:
            if name not in have:
                box.mount(self._group(name, collapsed=True))
        found = self.query("#analysis-toggles")
        if not found:
            return  # built with the current values when the group first opens
        toggles = found.first()
        with toggles.prevent(type(toggles).SelectedChanged, type(toggles).SelectionToggled):
            for n in ANALYSES:
                if self.values.get(f"analysis.{n}.enabled"):
                    toggles.select(n)
                else:
                    toggles.deselect(n)

    async def reveal(self, key: str, focus: bool = True):
        """Open the group of ``key``, build its fields if needed, scroll to the field and
        focus it; returns the field. ``analysis.NAME.enabled`` is the analysis's line in the
        toggle list of the analyses group (returned instead)."""
        if key.startswith("analysis.") and key.endswith(".enabled"):
            group = self.sections()["analyses"]
            group.collapsed = False
            pending = self._fill(group)
            if pending is not None:
                await pending
            toggles = self.query_one("#analysis-toggles")
            toggles.highlighted = list(ANALYSES).index(key.split(".")[1])
            if focus:
                toggles.focus()
            toggles.scroll_visible(animate=False, top=True)
            return toggles
        group = self.sections()[section_of(key)]
        group.collapsed = False
        pending = self._fill(group)
        if pending is not None:
            await pending
        f = self._fields[key]
        if focus:
            f.input.focus()
        f.scroll_visible(animate=False, top=True)
        return f

    # ---- fields ----------------------------------------------------------------------------
    def fields(self) -> dict[str, ConfigField]:
        """The fields built so far (the groups opened at least once)."""
        return dict(self._fields)

    def field(self, key: str) -> ConfigField:
        return self._fields[key]

    def errors(self) -> dict[str, str]:
        return {k: f.error for k, f in self._fields.items() if f.error}

    def modified_keys(self) -> list[str]:
        keys = set(self.values) | set(self.loaded)
        return sorted(k for k in keys if self.values.get(k, None) != self.loaded.get(k, None)
                      or (k in self._fields and self._fields[k].error))

    def config(self) -> config_mod.RunConfig:
        """The edited config, validated as a whole (raises ConfigError)."""
        errs = self.errors()
        if errs:
            raise config_mod.ConfigError(next(iter(errs.values())))
        where = str(self.preset_path) if self.preset_path else "<setup>"
        return config_mod.from_dict(unflatten(self.values), where,
                                    self.preset_path.parent if self.preset_path else None)

    def set_status(self, text: str, style: str = "") -> None:
        self.status_text = text
        self.query_one("#setup-status", Static).update(Text(text, style=style))

    def on_config_field_changed(self, event: ConfigField.Changed) -> None:
        f = event.field
        same = f.error is None and f.key not in self._bad and self.values.get(f.key) == f.value
        if f.error is None:
            self.values[f.key] = f.value
            self._bad.discard(f.key)
        else:
            self._bad.add(f.key)
        if f.focused_here:
            self._show_help(f)
        if not same:  # (a field built late reports its value: that changes nothing, and
            # must not replace what the status says, e.g. why a start was refused)
            self._refresh_status()

    def on_config_field_focused(self, event: ConfigField.Focused) -> None:
        self._show_help(event.field)

    def _show_help(self, f: ConfigField) -> None:
        self._help_key = f.key
        text = Text(f"{f.key}: ", style="bold")
        if f.error:  # (the message names the key first, as the CLI's does)
            text.append(f.error.removeprefix(f"{f.key}: "), style="bold red")
        else:
            text.append(f.help or "")
            if f.modified:
                text.append(f"  (preset: {json.dumps(f.loaded)})", style="dim")
        self.query_one("#setup-help", Static).update(text)

    def _source(self) -> str:
        src = str(self.preset_path) if self.preset_path else "defaults"
        n = len(self.modified_keys())
        return f"{src} (modified: {n} field{'s' if n != 1 else ''})" if n else src

    def _refresh_status(self) -> None:
        errs = self.errors()
        self.query_one("#start-btn", ActionLink).disabled = bool(errs)
        if errs:
            self.set_status(f"{len(errs)} invalid field(s); first: {next(iter(errs.values()))}",
                            "bold red")
            return
        try:
            cfg = self.config()
        except config_mod.ConfigError as e:
            self.set_status(str(e), "bold red")
            self.query_one("#start-btn", ActionLink).disabled = True
            return
        self.set_status(f"{self._source()}: valid", "green")
        self._request_plan(cfg)

    # ---- the plan --------------------------------------------------------------------------
    def _request_plan(self, cfg: config_mod.RunConfig) -> None:
        """Recompute the plan once the config has stopped changing for a moment (not on every
        key; never before the first paint)."""
        self._plan_gen += 1
        # an estimate stays while the config it was made for is the one validated again
        if self._estimate_for is not None and config_mod.dumps(cfg) != self._estimate_for:
            self._estimate_for, self.probed, self.estimate_note = None, None, ""
        if self._plan_timer is not None:
            self._plan_timer.stop()
        gen = self._plan_gen
        self._plan_timer = self.set_timer(PLAN_DELAY, lambda: self._plan(cfg, gen))

    @work(thread=True, exclusive=True, group="setup-plan", exit_on_error=False)
    def _plan(self, cfg: config_mod.RunConfig, gen: int) -> None:
        try:  # a sweep: every point's plan and their sum (tjac sweep --plan's)
            report, error = (control.sweep_plan_report(cfg, self.app.sessions_dir, "sweep")
                             if cfg.sweep is not None else
                             control.plan_report(cfg, self.app.sessions_dir)), None
        except Exception as e:  # noqa: BLE001 - e.g. data.path names nothing yet
            report, error = None, f"plan: {one_line(str(e))}"
        self.app.call_from_thread(self._show_plan, gen, report, error)

    def _show_plan(self, gen: int, report: control.PlanReport | control.SweepPlanReport | None,
                   error: str | None) -> None:
        if gen != self._plan_gen:
            return
        self.report, self.plan_error = report, error
        self._draw_plan()

    def _draw_plan(self) -> None:
        """The plan as ``tjac run --plan`` prints it (the same :class:`PlanReport` lines, the
        probe's too once ctrl+t has timed this config), a row a line (cut at the pane's edge,
        with an ellipsis but under --ascii); why not (no fit, no probe) wraps whole."""
        report = self.probed or self.report
        if self.plan_error or report is None:
            head, probe = [self.plan_error] if self.plan_error else [], []
        elif isinstance(report, control.SweepPlanReport):
            head, probe = report.lines(), (report.time_lines() if report.probed else [])
        else:
            head, probe = [*report.plan_lines, report.fits], report.probe_lines()
        tail = probe + ([self.estimate_note] if self.estimate_note else [])
        self.plan_text, self.estimate_text = "\n".join(head), "\n".join(tail)
        rows = []
        for i, line in enumerate(head + tail):
            if line.startswith(("plan: ", "does not fit", "no time probe", "time: ")):
                rows.append(Text(line, style="yellow"))  # why not: whole
            else:
                rows.append(Text(line, style="cyan" if i >= len(head) else "", no_wrap=True,
                                 overflow="crop" if self.ascii else "ellipsis"))
        self.query_one("#setup-plan", Static).update(Rows(*rows))

    def action_estimate(self) -> None:
        try:
            cfg = self.config()
        except config_mod.ConfigError as e:
            self.set_status(str(e), "bold red")
            return
        if not cfg.jacobian.enabled:  # (the plan says it: no time probe)
            return
        self.probed = None
        self.estimate_note = (f"probing each of the sweep's points, one after another (in a "
                              "separate process)..." if cfg.sweep is not None else
                              f"{control.probing_text(cfg.spectrum.method)} (in a separate "
                              "process)")
        self._estimate_for = config_mod.dumps(cfg)
        self._draw_plan()
        self._estimate(self._estimate_for, sweep=cfg.sweep is not None)

    @work(thread=True, exclusive=True, group="setup-estimate", exit_on_error=False)
    def _estimate(self, toml_text: str, sweep: bool = False) -> None:
        """``tjac run --plan --json`` on the config in a child process (the probe imports
        torch), with a worker's environment and this checkout's code; its PlanReport comes
        back as JSON. A config with a [sweep]: ``tjac sweep --plan --json``, every point
        probed (a SweepPlanReport)."""
        from engine.worker import boot, child_environment

        report, r = None, None
        with tempfile.TemporaryDirectory(prefix="tjac-probe-") as tmp:
            path = Path(tmp) / "probe.toml"
            path.write_text(toml_text, encoding="utf-8")
            try:
                r = subprocess.run([sys.executable, "-c", boot("tjac_tui.cli"),
                                    "sweep" if sweep else "run", str(path), "--plan", "--json",
                                    "--sessions", str(Path(self.app.sessions_dir).absolute())],
                                   capture_output=True, text=True, timeout=1800 if sweep else 600,
                                   cwd=tmp, env=child_environment())
                if r.returncode == 0:
                    d = json.loads(r.stdout.strip().splitlines()[-1])
                    report = (control.SweepPlanReport if sweep else control.PlanReport
                              ).from_json(d)
            except (subprocess.TimeoutExpired, ValueError, IndexError, KeyError, OSError):
                pass
        note = ""
        if report is None:
            err = (r.stderr.strip().splitlines() or ["?"])[-1] if r is not None else "timed out"
            note = f"time: the probe failed: {err}"
        self.app.call_from_thread(self._show_estimate, toml_text, report, note)

    def _show_estimate(self, toml_text: str,
                       report: control.PlanReport | control.SweepPlanReport | None,
                       note: str) -> None:
        if toml_text == self._estimate_for:  # the config has not changed since
            self.probed, self.estimate_note = report, note
            self._draw_plan()

    # ---- loading ---------------------------------------------------------------------------
    def load_preset(self, path: str | Path) -> bool:
        path = Path(path)
        try:
            cfg = config_mod.load(path)
        except config_mod.ConfigError as e:
            self.set_status(str(e), "bold red")
            return False
        self.preset_path = path
        self.values = flatten(config_mod.to_dict(cfg))
        self.loaded = dict(self.values)
        self._stash.clear()
        self._sync_groups()
        for key, f in self._fields.items():
            f.set_value(self.values[key], loaded=self.values[key])
        self._show_preset()
        self._refresh_status()
        return True

    def _show_preset(self) -> None:
        name = self.preset_path.stem if self.preset_path else "defaults"
        arrow = "v" if self.ascii else "▼"
        self.query_one("#preset-picker", PresetPicker).update(
            f"preset: {name} {arrow}  (ctrl+o: another preset or a TOML file)")

    def action_choose_preset(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None:
                self.load_preset(path)

        self.app.push_screen(PresetScreen(self.presets, self.preset_path), chosen)

    def on_action_link_pressed(self, event: ActionLink.Pressed) -> None:
        {"start-btn": self.action_start, "save-btn": self.action_save,
         "estimate-btn": self.action_estimate}[event.link.id]()

    # ---- analyses on and off ---------------------------------------------------------------
    def set_analysis(self, name: str, on: bool) -> None:
        """Switch ``[analysis.NAME]`` on (its last values, or the defaults) or off (the
        section leaves the config: a saved preset no longer has it)."""
        prefix = f"analysis.{name}."
        if on:
            restored = self._stash.pop(name, None) or {
                info.key: info.default for info in config_mod.describe(with_plugins=True)
                if info.key.startswith(prefix)}
            restored[f"{prefix}enabled"] = True
            self.values.update(restored)
        else:
            self._stash[name] = {k: v for k, v in self.values.items() if k.startswith(prefix)}
            for k in list(self.values):
                if k.startswith(prefix):
                    del self.values[k]
        self._sync_groups()
        self._refresh_status()

    def on_selection_list_selection_toggled(self, event) -> None:
        if event.selection_list.id != "analysis-toggles":
            return
        event.stop()
        name = event.selection.value
        self.set_analysis(name, name in event.selection_list.selected)

    # ---- find a field ----------------------------------------------------------------------
    def holds_keys_after(self, key: str) -> bool:
        """The keys after ``/`` (out of a text box), after Enter in the search box and after
        ctrl+o or ctrl+s wait until the focus is where those keys take it: the search box, the
        field found, the dialog's box (see
        :meth:`TjacApp.on_event <tjac_tui.app.TjacApp.on_event>`)."""
        focused = self.app.focused
        if key in ("ctrl+o", "ctrl+s"):  # until the dialog's box has the focus
            return True
        if key == "slash":
            return not isinstance(focused, Input)
        return key == "enter" and getattr(focused, "id", None) == "field-search"

    def action_search(self) -> None:
        box = self.query_one("#setup-search")
        box.display = True
        inp = self.query_one("#field-search", OrderedInput)
        inp.value = ""
        self._matches("")
        self.screen.set_focus(inp)  # now: the keys held since "/" go to it
        self.app.release_keys()

    def matches(self, text: str) -> list[str]:
        """Keys of the current config matching ``text`` (fuzzy), best first."""
        keys = list(self.values)
        if not text.strip():
            return keys
        m = Matcher(text.strip())
        scored = [(m.match(k), k) for k in keys]
        return [k for s, k in sorted(scored, key=lambda sk: -sk[0]) if s > 0]

    def _matches(self, text: str) -> None:
        ol = self.query_one("#field-matches", OptionList)
        ol.clear_options()
        keys = self.matches(text)[:8]
        ol.add_options([Option(k, id=k) for k in keys])
        if keys:
            ol.highlighted = 0

    def on_input_changed(self, event: OrderedInput.Changed) -> None:
        if event.input.id == "field-search":
            event.stop()
            self._matches(event.value)

    @on(OrderedInput.Submitted, "#field-search")
    async def _search_submitted(self, event: OrderedInput.Submitted) -> None:
        event.stop()
        try:
            ol = self.query_one("#field-matches", OptionList)
            if ol.option_count == 0:
                return
            key = ol.get_option_at_index(ol.highlighted or 0).id
            self.query_one("#setup-search").display = False
            await self.reveal(key)
        finally:  # the keys typed after Enter go to the field found (its focus is queued)
            self.app.release_keys()

    @on(OptionList.OptionSelected, "#field-matches")
    async def _match_chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.query_one("#setup-search").display = False
        await self.reveal(event.option.id)

    def on_key(self, event) -> None:
        """Up and down move through the matches while the search box has the focus."""
        if getattr(self.app.focused, "id", None) != "field-search":
            return
        ol = self.query_one("#field-matches", OptionList)
        if event.key in ("down", "up") and ol.option_count:
            event.stop()
            step = 1 if event.key == "down" else -1
            ol.highlighted = ((ol.highlighted or 0) + step) % ol.option_count

    # ---- actions ---------------------------------------------------------------------------
    def action_leave_field(self) -> None:
        """Out of the field (or the search box), into the pane: its keys (/, ctrl+r, ...)
        keep working."""
        if self.query_one("#setup-search").display:
            self.query_one("#setup-search").display = False
        self.query_one("#setup-fields", VerticalScroll).focus()

    def action_save(self) -> None:
        stem = self.preset_path.stem if self.preset_path else "preset"
        self.app.push_screen(SaveAsScreen(self, f"{stem}-edited"))

    def save_as(self, text: str) -> tuple[Path | None, str | None]:
        """Write the edited config to ``text`` (a name or a path; ``.toml`` added). Returns
        (path, None), or (None, the reason it was not written)."""
        text = text.strip()
        if not text:
            return None, "type a file name for the new preset first"
        path = Path(text).expanduser().absolute()
        if path.is_dir():  # a folder: the preset goes into it, under the suggested name
            path = path / f"{self.preset_path.stem if self.preset_path else 'preset'}-edited"
        if path.suffix != ".toml":
            path = path.with_name(path.name + ".toml")
        if path.exists():
            return None, f"{path}: exists; pick another name"
        old_name = self.values.get("name")
        self.values["name"] = path.stem  # the preset's runs are named after it
        try:
            cfg = self.config()
        except config_mod.ConfigError as e:
            self.values["name"] = old_name
            return None, str(e)
        above = path.parent
        while not above.exists():
            above = above.parent
        if not above.is_dir():
            return None, f"{path}: {above} is a file, not a folder"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# saved from the tjac workbench\n{config_mod.dumps(cfg)}",
                            encoding="utf-8")
        except OSError as e:
            return None, f"{path}: cannot write: {e.strerror or e}"
        self.preset_path = path
        self.loaded = dict(self.values)
        for key, f in self._fields.items():
            value = self.values[key] if key == "name" else f.value
            f.set_value(value, loaded=value)
        self.presets.append(path)
        self._show_preset()
        self._refresh_status()
        said = f"saved {path}; run it with: tjac run {run_name(path)}"
        self.set_status(said, "green")
        self.app.notify(said, markup=False)
        return path, None

    def action_start(self) -> Path | None:
        try:
            cfg = self.config()
        except config_mod.ConfigError as e:
            self.set_status(str(e), "bold red")
            return None
        try:
            return self.app.start_run(cfg, self.preset_path)
        except config_mod.ConfigError as e:  # a sweep point that is invalid or does not fit
            self.set_status(str(e), "bold red")
            self.app.notify(str(e), title="not started", severity="error", timeout=15)
            return None
