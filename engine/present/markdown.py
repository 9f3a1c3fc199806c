"""Markdown building blocks shared by every report (no engine imports)."""

from __future__ import annotations

from typing import Iterable


RULES = {"l": "---", "r": "---:", "c": ":---:"}


def md_table(columns: list[str], rows: Iterable[list], align: str | None = None) -> str:
    """A pipe table; ``align`` has one of l, r, c per column (default: the first column left,
    the others right, for tables of numbers); ``|`` and newlines inside cells are escaped."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    align = align or "l" + "r" * (len(columns) - 1)
    out = ["| " + " | ".join(cell(c) for c in columns) + " |",
           "| " + " | ".join(RULES[a] for a in align) + " |"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def code_block(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.rstrip()}\n```"
