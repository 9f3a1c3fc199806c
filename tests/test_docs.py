"""The documentation stays true: the generated key table of docs/config.md is the one the code
generates (every default shown), the layout of docs/design.md names every engine module, and
the benchmark the docs describe asks for the JAX reference, which is not part of the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tjac_tui.cli import keys_markdown

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_is_the_generated_one():
    text = (REPO / "docs" / "config.md").read_text()
    block = text.split("<!-- keys: ")[1].split("-->", 1)[1].split("<!-- /keys -->")[0]
    assert block.strip() == keys_markdown(all_sections=True).strip()


def test_design_layout_names_every_engine_module():
    text = (REPO / "docs" / "design.md").read_text()
    layout = text.split("## Layers")[1].split("\n## ")[0]
    for p in sorted((REPO / "engine").rglob("*.py")):
        rel = p.relative_to(REPO)
        if p.name == "__init__.py" and p.parent.name != "engine":
            continue
        top = "/".join(rel.parts[:2]) + "/" if len(rel.parts) > 2 else str(rel)
        assert f"`{rel}`" in layout or f"`{top}`" in layout or p.name == "__init__.py", rel


def test_every_default_of_the_key_table_is_shown():
    """A table's default is written as one (sweep.values' {} was an empty code span)."""
    rows = [ln for ln in keys_markdown(all_sections=True).splitlines() if ln.startswith("| `")]
    assert all(ln.split(" | ")[1] not in ("``", "") for ln in rows)
    assert "| `sweep.values` | `{}` |" in keys_markdown(all_sections=True)


def test_the_jax_comparison_is_told_where_the_reference_is():
    """The JAX reference is not part of the repository: --against-jax asks for its path in one
    line (it looked for it beside the checkout)."""
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_jacobian.py"),
                        "--against-jax"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stdout.strip() == ("--against-jax needs --reference PATH, the JAX reference script "
                                "(not part of this repository)")
