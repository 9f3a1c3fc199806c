"""The documentation stays true: the generated key table of docs/config.md is the one the code
generates, and the layout of docs/design.md names every engine module."""

from __future__ import annotations

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
