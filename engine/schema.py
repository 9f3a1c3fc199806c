"""Field checkers and preset sections: the bottom of the config layer (no engine imports).

A preset section is a dataclass whose fields are declared with

* :func:`option` -- a leaf value: a default, a :class:`Check` and a help text;
* :func:`section` -- a nested table of another section class (``[train]``);
* :func:`optional` -- a nested table that may be absent (``[study]``, default ``None``);
* :func:`plugins` -- a table of registered sub-sections (``[analysis.NAME]``): a mapping of
  names to objects with a ``config_cls`` attribute (see :mod:`engine.sections`).

:func:`build` turns a parsed TOML table into such a dataclass, checking every key. A failure is
a :class:`ConfigError` whose message is one line naming the file and the dotted key::

    presets/x.toml: train.lr: expected a positive number, got "fast"

The same declarations give the preset reference (:func:`describe`), the check of one field as
you type (:func:`check_value`), the TOML table written back (:func:`to_table`) and a JSON Schema
(:func:`json_schema`) that TOML editors (taplo, VS Code "Even Better TOML") validate presets with.
A section class may define ``validate(self, where, prefix)`` for rules that involve several of
its keys (it raises :class:`ConfigError`), and a class attribute ``REMOVED_KEYS`` mapping keys
of older versions to a sentence saying what replaced them.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping

__all__ = ["ConfigError", "DataError", "PlanError", "Invalid", "one_line", "Check", "number", "integer", "choice", "string",
           "boolean", "name", "list_of", "any_of", "option", "section", "optional", "plugins", "build",
           "Checked", "check_instance", "building", "at",
           "to_table", "describe", "lookup", "check_value", "json_schema", "show",
           "suggest", "INT_MAX"]

INT_MAX = 2**63 - 1  # TOML integers are 64-bit


def one_line(text: str) -> str:
    """``text`` with its control characters (newlines, carriage returns, NUL...) written as
    escapes, so a message stays on one line whatever a user's value or file name holds."""
    return "".join(c if c.isprintable() or c == " " else
                   c.encode("unicode_escape").decode("ascii") for c in str(text))


class ConfigError(ValueError):
    """A preset or override is invalid; ``str(err)`` is the one-line message for the user."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


class DataError(ValueError):
    """The data cannot be read; ``str()`` is one line naming the file."""


class PlanError(ValueError):
    """The run cannot fit here; ``str()`` is the one-line reason with the figures."""


class Invalid(Exception):
    """Raised by a check with the description of what was expected."""


@dataclass(frozen=True)
class Check:
    """A field check: ``check(value)`` returns the normalised value or raises :class:`Invalid`.

    ``desc`` is what the message says was expected ("a positive number"), ``schema`` the same
    rule as JSON Schema, ``choices`` the allowed strings of a closed choice (for select
    widgets), else None."""

    fn: Callable[[Any], Any]
    desc: str
    schema: Mapping[str, Any]
    choices: tuple[str, ...] | None = None

    def __call__(self, v: Any) -> Any:
        return self.fn(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _interval(lo, hi, lo_open, hi_open) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Check:
    """A finite number (an integer is accepted and becomes a float) within the bounds."""
    if lo == 0 and lo_open and hi is None:
        desc = "a positive number"
    elif lo == 0 and hi is None:
        desc = "a non-negative number"
    elif lo is not None and hi is not None:
        desc = f"a number in {_interval(lo, hi, lo_open, hi_open)}"
    elif lo is not None:
        desc = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        desc = "a number"
    schema: dict[str, Any] = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_open else "minimum"] = lo
    if hi is not None:
        schema["exclusiveMaximum" if hi_open else "maximum"] = hi

    def check(v: Any) -> float:
        if not _is_number(v) or not math.isfinite(v):
            raise Invalid(desc)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise Invalid(desc)
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise Invalid(desc)
        return float(v)

    return Check(check, desc, schema)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """An integer (not a bool) within the bounds (at most :data:`INT_MAX`)."""
    hi_eff = INT_MAX if hi is None else hi
    if lo == 0 and hi is None:
        desc = "a non-negative integer"
    elif lo == 1 and hi is None:
        desc = "a positive integer"
    elif lo is not None and hi is not None:
        desc = f"an integer in [{lo}, {hi}]"
    else:
        desc = "an integer"
    schema: dict[str, Any] = {"type": "integer", "maximum": hi_eff}
    if lo is not None:
        schema["minimum"] = lo

    def check(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise Invalid(desc)
        if (lo is not None and v < lo) or v > hi_eff:
            raise Invalid(desc)
        return v

    return Check(check, desc, schema)


def choice(*options: str) -> Check:
    desc = "one of " + ", ".join(f'"{o}"' for o in options)

    def check(v: Any) -> str:
        if not isinstance(v, str) or v not in options:
            raise Invalid(desc)
        return v

    return Check(check, desc, {"type": "string", "enum": list(options)}, tuple(options))


def string(max_len: int = 4096) -> Check:
    """Free text without NUL bytes."""
    desc = f"a string of at most {max_len} characters" if max_len < 4096 else "a string"

    def check(v: Any) -> str:
        if not isinstance(v, str) or len(v) > max_len or "\x00" in v:
            raise Invalid(desc)
        return v

    return Check(check, desc, {"type": "string", "maxLength": max_len})


def boolean() -> Check:
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise Invalid("true or false")
        return v

    return Check(check, "true or false", {"type": "boolean"})


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
NAME_DESC = ("a name of 1-100 letters, digits, '_', '.' or '-' that starts with a letter or "
             "digit")


def name() -> Check:
    """A name that is one safe path component (session, study and run names)."""

    def check(v: Any) -> str:
        if not isinstance(v, str) or not NAME_RE.match(v):
            raise Invalid(NAME_DESC)
        return v

    return Check(check, NAME_DESC, {"type": "string", "pattern": NAME_RE.pattern})


def list_of(item: Check, desc: str, *, min_items: int = 0, max_items: int = 10_000) -> Check:
    """A list whose every element passes ``item`` (elements normalised by it)."""

    def check(v: Any) -> list:
        if not isinstance(v, list) or not (min_items <= len(v) <= max_items):
            raise Invalid(desc)
        try:
            return [item(x) for x in v]
        except Invalid:
            raise Invalid(desc) from None

    schema = {"type": "array", "items": dict(item.schema), "minItems": min_items,
              "maxItems": max_items}
    return Check(check, desc, schema, None)


def any_of(*checks: Check, desc: str) -> Check:
    """The first check that accepts the value."""

    def check(v: Any) -> Any:
        for c in checks:
            try:
                return c(v)
            except Invalid:
                continue
        raise Invalid(desc)

    return Check(check, desc, {"anyOf": [dict(c.schema) for c in checks]})


# --------------------------------------------------------------------------------------------
# declaring fields


def option(default: Any, check: Check, help: str) -> Any:
    """A leaf field with its default, check and help text."""
    meta = {"check": check, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str = "") -> Any:
    """A nested table (always present; its defaults when the preset omits it)."""
    return field(default_factory=cls, metadata={"section": cls, "help": help})


def optional(cls: type, help: str = "") -> Any:
    """A nested table that may be absent (then the field is None)."""
    return field(default=None, metadata={"section": cls, "optional": True, "help": help})


def plugins(registry: Mapping[str, Any], kind: str, help: str = "") -> Any:
    """A table of registered sub-sections: ``registry[name].config_cls`` validates
    ``[<field>.<name>]``; ``kind`` names them in messages ("analysis")."""
    return field(default_factory=dict, metadata={"plugins": registry, "kind": kind,
                                                 "help": help})


# --------------------------------------------------------------------------------------------
# building from TOML tables


def show(v: Any) -> str:
    """A value as it appears in a message: TOML-like and short."""
    if isinstance(v, str):
        text = v if len(v) <= 60 else v[:57] + "..."
        return '"' + one_line(text) + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        text = repr(v)
        return text if len(text) <= 60 else "a list of " + str(len(v)) + " items"
    return repr(v)


def suggest(word: str, known) -> str:
    """`` (did you mean "x"?)`` for a close match among ``known``, else ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def at(where: str) -> str:
    """The start of a message about a key: ``"presets/x.toml: "``, or nothing for a config
    made in Python (a constructor, where no file is involved)."""
    return f"{where}: " if where else ""


def _unknown(where: str, key: str, known) -> ConfigError:
    hint = suggest(key.rsplit(".", 1)[-1], known)
    return ConfigError(f"{at(where)}{key}: unknown key{hint} (known keys: "
                       f"{', '.join(sorted(known))})")


def _leaf(check: Check, value: Any, where: str, key: str) -> Any:
    """One key's value checked and normalised, or the one-line ConfigError naming it: the
    message of a preset's key and of a constructor's argument alike."""
    try:
        return check(value)
    except Invalid as e:
        raise ConfigError(f"{at(where)}{key}: expected {e}, got {show(value)}") from None


# set while build() constructs a section it has checked already (its __post_init__ skips)
_BUILDING: contextvars.ContextVar[bool] = contextvars.ContextVar("schema_building",
                                                                 default=False)


def building() -> bool:
    """Whether :func:`build` is constructing a section it has checked (a ``__post_init__``
    that checks its instance skips then)."""
    return _BUILDING.get()


class Checked:
    """A section whose constructor checks its fields as :func:`build` checks a preset's
    table, with the same one-line messages less the file: ``TrainConfig(lr=-1.0)`` raises
    ``ConfigError("train.lr: expected a positive number, got -1.0")``. ``PREFIX``: the
    section's dotted place in a preset ("train.")."""

    PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not building():
            check_instance(self, self.PREFIX)


def check_instance(obj: Any, prefix: str = "", where: str = "") -> None:
    """Check (and normalise, in place) every field of a constructed section as :func:`build`
    does a table: leaves by their checks, nested sections given as tables (dicts) built,
    registered sub-sections likewise, then the class's ``validate``."""
    for f in fields(obj):
        meta, v, key = f.metadata, getattr(obj, f.name), f"{prefix}{f.name}"
        if "section" in meta:
            if v is None and meta.get("optional"):
                continue
            if isinstance(v, dict):
                v = build(meta["section"], v, where, f"{key}.")
            elif not isinstance(v, meta["section"]):
                raise ConfigError(f"{at(where)}{key}: expected a table, got {show(v)}")
        elif "plugins" in meta:
            v = _build_plugins(meta, v, where, key)
        elif "check" in meta:
            v = _leaf(meta["check"], v, where, key)
        else:
            continue
        setattr(obj, f.name, v)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where, prefix)


def build(cls: type, table: Any, where: str, prefix: str = "") -> Any:
    """Validate ``table`` (a parsed TOML table) into an instance of the section class ``cls``;
    ``prefix`` is the dotted path of the section ("train.")."""
    if not isinstance(table, dict):
        raise ConfigError(f"{at(where)}{prefix.rstrip('.') or 'preset'}: expected a table, "
                          f"got {show(table)}")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in table.items():
        f = known.get(key)
        if f is None:
            removed = getattr(cls, "REMOVED_KEYS", {}).get(key)
            if removed:
                raise ConfigError(f"{at(where)}{prefix}{key}: no longer a key: {removed}")
            raise _unknown(where, f"{prefix}{key}", known)
        meta = f.metadata
        if "section" in meta:
            values[key] = build(meta["section"], value, where, f"{prefix}{key}.")
        elif "plugins" in meta:
            values[key] = _build_plugins(meta, value, where, f"{prefix}{key}")
        else:
            values[key] = _leaf(meta["check"], value, where, f"{prefix}{key}")
    token = _BUILDING.set(True)
    try:
        obj = cls(**values)
    finally:
        _BUILDING.reset(token)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where, prefix)
    return obj


def _build_plugins(meta: Mapping, table: Any, where: str, key: str) -> dict:
    registry = meta["plugins"]
    if not isinstance(table, dict):
        raise ConfigError(f"{at(where)}{key}: expected a table, got {show(table)}")
    out = {}
    for name_, sub in table.items():
        spec = registry.get(name_)
        if spec is None:
            raise ConfigError(f"{at(where)}{key}.{name_}: unknown {meta['kind']}"
                              f"{suggest(name_, registry)} (known: "
                              f"{', '.join(registry) or 'none'})")
        # (a section made in Python is kept as it is)
        out[name_] = sub if isinstance(sub, spec.config_cls) else build(
            spec.config_cls, sub, where, f"{key}.{name_}.")
    return out


def to_table(obj: Any) -> dict:
    """A section instance as a TOML-ready table (every key; absent optional sections left out)."""
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        if "section" in f.metadata:
            out[f.name] = to_table(v)
        elif "plugins" in f.metadata:
            out[f.name] = {k: to_table(c) for k, c in v.items()}
        else:
            out[f.name] = list(v) if isinstance(v, list) else v
    return out


# --------------------------------------------------------------------------------------------
# the reference: every key, one field, the JSON Schema


@dataclass(frozen=True)
class FieldInfo:
    key: str  # dotted
    default: Any
    help: str
    check: Check


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def describe(cls: type, prefix: str = "", with_plugins: bool = True) -> list[FieldInfo]:
    """Every leaf key of ``cls`` (nested sections, optional ones and every registered plug-in
    section included) with its default, help text and check."""
    rows = []
    for f in fields(cls):
        meta = f.metadata
        if "section" in meta:
            rows += describe(meta["section"], f"{prefix}{f.name}.", with_plugins)
        elif "plugins" in meta:
            if with_plugins:
                for name_, spec in meta["plugins"].items():
                    rows += describe(spec.config_cls, f"{prefix}{f.name}.{name_}.", with_plugins)
        elif "check" in meta:
            rows.append(FieldInfo(f"{prefix}{f.name}", _default(f), meta["help"], meta["check"]))
    return rows


def lookup(cls: type, key: str) -> FieldInfo:
    """The leaf field of a dotted key (raises KeyError when there is none)."""
    parts = key.split(".")
    node = cls
    for i, part in enumerate(parts):
        f = {g.name: g for g in fields(node)}.get(part)
        if f is None:
            raise KeyError(key)
        meta = f.metadata
        last = i == len(parts) - 1
        if "section" in meta and not last:
            node = meta["section"]
        elif "plugins" in meta and i + 1 < len(parts) - 1:
            spec = meta["plugins"].get(parts[i + 1])
            if spec is None:
                raise KeyError(key)
            return dataclasses.replace(lookup(spec.config_cls, ".".join(parts[i + 2:])), key=key)
        elif "check" in meta and last:
            return FieldInfo(key, _default(f), meta["help"], meta["check"])
        else:
            raise KeyError(key)
    raise KeyError(key)


def check_value(cls: type, key: str, value: Any) -> Any:
    """Check one dotted key's value as :func:`build` would (the TUI's check as you type)."""
    try:
        info = lookup(cls, key)
    except KeyError:
        raise ConfigError(f"{key}: unknown key") from None
    return _leaf(info.check, value, "", key)


def json_schema(cls: type, title: str | None = None) -> dict:
    """The JSON Schema (draft 2020-12) of a section class: types, bounds, choices, defaults and
    descriptions of every key; unknown keys are refused like :func:`build` refuses them."""
    props: dict[str, Any] = {}
    for f in fields(cls):
        meta = f.metadata
        if "section" in meta:
            sub = json_schema(meta["section"])
            if meta.get("help"):
                sub["description"] = meta["help"]
            props[f.name] = sub
        elif "plugins" in meta:
            props[f.name] = {
                "type": "object", "additionalProperties": False,
                "description": meta.get("help", ""),
                "properties": {n: {**json_schema(s.config_cls),
                                   "description": getattr(s, "title", n)}
                               for n, s in meta["plugins"].items()}}
        elif "check" in meta:
            default = _default(f)
            props[f.name] = {**meta["check"].schema, "default": default,
                             "description": meta["help"]}
    out: dict[str, Any] = {"type": "object", "additionalProperties": False,
                           "properties": props}
    if title is not None:
        out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **out}
    return out
