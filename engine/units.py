"""Bytes and seconds as people read them: the one formatter of each for the whole project.

Bytes are decimal (SI: 1 GB = 10^9 bytes): the plan's disk and memory figures, the refusals
of runs that do not fit, the Setup pane, the Live pane's GPU memory and the docs all say GB in
the same sense, so the "SVD memory 121.8 GB" a plan promises is compared with the GPU memory
the Live pane shows without a conversion (the Live pane alone said GiB before). Decimal is
what the plan has always printed, and what disks are sold in; ``nvidia-smi``'s MiB figures
are 1.048576 times these MB.
"""

from __future__ import annotations


def fmt_bytes(n: float) -> str:
    """``n`` bytes as ``"512 B"``, ``"5.9 MB"``, ``"121.8 GB"``: decimal units (1 KB = 1000 B),
    one decimal above bytes, TB the largest."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def fmt_seconds(s: float | None) -> str:
    """A duration: ``"42.3 s"`` under a minute, ``"12m05s"`` under an hour, else ``"272h26m"``;
    ``"-"`` for None (not known)."""
    if s is None:
        return "-"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
