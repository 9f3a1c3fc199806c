"""CheckList: a SelectionList whose boxes read ``[x]`` / ``[ ]``.

Textual's SelectionList draws the same ``X`` for a selected and an unselected row and tells
them apart by colour alone; without colour (``NO_COLOR``) or block characters (``--ascii``)
they look the same. Here the state is in the text itself."""

from __future__ import annotations

from rich.segment import Segment
from textual.strip import Strip
from textual.widgets import SelectionList
from textual.widgets.option_list import OptionDoesNotExist

CHECKED, UNCHECKED = "[x]", "[ ]"


class CheckList(SelectionList):
    def render_line(self, y: int) -> Strip:
        line = super().render_line(y)
        try:
            option = self.get_option_at_index(self.scroll_offset.y + y)
        except OptionDoesNotExist:
            return line
        segments = list(line)
        if len(segments) < 3:
            return line
        box = CHECKED if option.value in self.selected else UNCHECKED
        marks = [Segment(ch, seg.style) for ch, seg in zip(box, segments[:3])]
        return Strip(marks + segments[3:])

    def row_texts(self) -> list[str]:
        """The rows as shown, box included (tests)."""
        return [f"{CHECKED if o.value in self.selected else UNCHECKED} {o.prompt}"
                for o in self.options]
