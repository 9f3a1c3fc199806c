"""OrderedInput: an Input whose editing keys keep their order in a burst of keys.

Textual's Input inserts a printable character as soon as its key event arrives, but runs its
editing keys (backspace, delete, arrows, home/end, enter) as bindings, once the key event has
bubbled back up to the app. When several keys arrive at once (fast typing over ssh, a paste of
keystrokes, tmux send-keys), the characters that follow an editing key overtake it: "12345",
End, five Backspaces, "fast" leaves "1234" instead of "fast". Here the Input's own bindings run
as the key arrives, in order with the characters.
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input


def _own_keys() -> dict[str, str]:
    out = {}
    for b in Input.BINDINGS:
        for key in b.key.split(","):
            out[key.strip()] = b.action
    return out


class OrderedInput(Input):
    _OWN_KEYS = _own_keys()

    async def _on_key(self, event: events.Key) -> None:
        action = self._OWN_KEYS.get(event.key)
        if action is None:
            await super()._on_key(event)
            return
        event.stop()
        event.prevent_default()
        await self.run_action(action)
