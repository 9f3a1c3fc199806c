"""The text of a DataTable, row by row: what the panes expose to tests and the smoke script."""

from __future__ import annotations

from textual.widgets import DataTable


def table_text(t: DataTable) -> list[list[str]]:
    """Every row of ``t`` as the strings of its cells, in display order."""
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]
