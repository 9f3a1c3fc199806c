"""The Jacobian progress line: a bar, columns done / total, rate and ETA."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..state import fmt_seconds


def progress_text(jac: dict, width: int = 30, ascii: bool = False,
                  state: str | None = None) -> Text:
    """Two lines: ``[#####-----] 512 / 1210 cols  42.3%`` and ``95.3 columns/s  ETA 7.3 s
    chunks of 64, 19 in all`` (Rich text). ``state`` is the Jacobian stage's status: once it is
    no longer running, an unfinished Jacobian shows that it stopped, not an ETA."""
    total = jac.get("total")
    done = jac.get("done") or 0
    if not total:
        return Text("jacobian: not started", style="dim")
    frac = min(1.0, done / total)
    full, empty = ("#", "-") if ascii else ("█", "░")
    n = int(round(frac * width))
    t = Text("[" if ascii else "")
    t.append(full * n, style="green" if frac >= 1 else "cyan")
    t.append(empty * (width - n), style="dim")
    t.append("] " if ascii else " ")
    t.append(f"{done} / {total} cols", style="bold")
    t.append(f"  {100 * frac:.1f}%\n")
    rate = jac.get("rate")
    t.append(f"{rate:.1f} columns/s" if rate else "- columns/s")
    eta = jac.get("eta")
    if done >= total:
        t.append("  complete")
    elif state not in (None, "running"):
        t.append(f"  stopped ({state}; r resumes)", style="yellow")
    else:
        t.append(f"  ETA {fmt_seconds(eta)}" if eta is not None else "  ETA -")
    if jac.get("chunks"):
        t.append(f"  chunks of {jac.get('chunk')}, {jac.get('chunks')} in all", style="dim")
    return t


class JacobianBar(Static):
    def __init__(self, *, ascii: bool = False, id: str | None = None) -> None:
        super().__init__(progress_text({}), id=id)
        self.ascii = ascii
        self.jac: dict = {}
        self.state: str | None = None

    def set_progress(self, jac: dict, state: str | None = None) -> None:
        self.jac = dict(jac)
        self.state = state
        self.refresh_text()

    def refresh_text(self) -> None:
        width = max(10, min(40, self.content_size.width - 30))
        self.update(progress_text(self.jac, width, self.ascii, self.state))

    def on_resize(self) -> None:
        self.refresh_text()
