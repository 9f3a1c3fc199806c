"""Presentation: what a session, a study or an analysis looks like as plot series, tables and
markdown (no UI imports; the TUI and the report draw the same views)."""
