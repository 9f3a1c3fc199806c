"""Markdown building blocks shared by every report (no engine imports)."""

from __future__ import annotations

from typing import Iterable


def md_table(columns: list[str], rows: Iterable[list]) -> str:
    """A pipe table; the first column left-aligned, the others right-aligned; ``|`` and
    newlines inside cells are escaped."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(c) for c in columns) + " |",
           "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(columns))) + " |"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def code_block(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.rstrip()}\n```"
