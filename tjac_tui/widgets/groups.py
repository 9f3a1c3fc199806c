"""Light widgets of the Setup pane: a group of fields that opens and closes, and a clickable
action label.

They are plain Statics and Verticals styled in tjac.tcss (no widget CSS of their own): the pane
they make up is on the first screen, and every extra widget type there costs start-up time.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static


class GroupTitle(Static, can_focus=True):
    """``▶ train  (optimizer, schedule, epochs)``: enter, space or a click opens / closes."""

    BINDINGS = [Binding("enter,space", "toggle", "Open / close", show=False)]

    def __init__(self, group: "Group") -> None:
        super().__init__("", classes="group-title", markup=False)
        self.group = group

    def action_toggle(self) -> None:
        self.group.collapsed = not self.group.collapsed

    def on_click(self) -> None:
        self.action_toggle()


class Group(Vertical):
    """A titled group whose body (``.body``) shows only while it is open. ``Group.Opened`` is
    posted each time it opens (the Setup pane builds a group's fields on the first)."""

    class Opened(Message):
        def __init__(self, group: "Group") -> None:
            super().__init__()
            self.group = group

    def __init__(self, name: str, title: str, *, collapsed: bool = True, ascii: bool = False,
                 id: str | None = None) -> None:
        super().__init__(id=id, classes="group")
        self.name_ = name
        self.title_text = title
        self.symbols = (">", "v") if ascii else ("▶", "▼")
        self._collapsed = collapsed
        self.title = GroupTitle(self)
        self.body = Vertical(classes="group-body")
        self.filled = False

    def compose(self):
        yield self.title
        yield self.body

    def on_mount(self) -> None:
        self._show()

    @property
    def collapsed(self) -> bool:
        return self._collapsed

    @collapsed.setter
    def collapsed(self, value: bool) -> None:
        if value == self._collapsed:
            return
        self._collapsed = value
        self._show()
        if not value:
            self.post_message(self.Opened(self))

    def _show(self) -> None:
        self.title.update(f"{self.symbols[0 if self._collapsed else 1]} {self.title_text}")
        self.body.display = not self._collapsed
        self.set_class(not self._collapsed, "-open")


class ActionLink(Static):
    """A clickable label (``Start run (ctrl+r)``); posts :class:`ActionLink.Pressed`. Disabled
    links are dimmed and ignore clicks."""

    class Pressed(Message):
        def __init__(self, link: "ActionLink") -> None:
            super().__init__()
            self.link = link

    def __init__(self, label: str, *, id: str | None = None) -> None:
        super().__init__(f" {label} ", id=id, classes="action-link", markup=False)

    def on_click(self) -> None:
        if not self.disabled:
            self.post_message(self.Pressed(self))
