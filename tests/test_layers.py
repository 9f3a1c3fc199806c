"""The one-way layering of engine/ and tjac_tui/, read from the source (ast; nothing is run).

Every module has a layer (the table below, bottom first). A module may import only modules of
lower layers -- at module level or inside a function alike -- so the imports form no cycle and
the engine never reaches the UI. No module imports another module's private (``_x``) names. A
new module fails this test until it is given a layer here: decide where it belongs.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAYERS: list[list[str]] = [
    # the kernels' shared workspace (no engine imports)
    ["engine.kernels.workspace"],
    # foundations: no engine imports
    ["engine", "engine.schema", "engine.files", "engine.units", "engine.regions",
     "engine.subspace", "engine.interrupt", "engine.asciiplot", "engine.kernels",
     "engine.kernels.*", "engine.opcheck", "engine.present.markdown", "engine.events"],
    # the registry of optional sections (analyses, sweep): the plug-in contract, torch-free
    ["engine.sections", "engine.device", "engine.manifest"],
    ["engine.config"],
    ["engine.archs"],
    ["engine.data", "engine.models"],
    ["engine.train", "engine.plan"],
    ["engine.build"],
    ["engine.jacobian", "engine.spectrum", "engine.matfree"],
    ["engine.probe", "engine.api"],
    ["engine.session"],
    ["engine.results"],
    # experiment trackers: listeners of a run's events (the CLI's --log)
    ["engine.trackers"],
    # the stage table and its rules (torch-free: the UI lists a session's stages from it)
    ["engine.pipeline"],
    ["engine.worker", "engine.experiments", "engine.experiments.common"],
    ["engine.experiments.*"],
    ["engine.svdjob"],
    # the stage bodies: their context, each stage, the snapshots (which reuse svd's)
    ["engine.stages"],
    ["engine.stages.train", "engine.stages.jacobian", "engine.stages.svd",
     "engine.stages.matfree", "engine.stages.analysis"],
    ["engine.stages.snapshots"],
    ["engine.runner"],
    ["engine.sweep", "engine.distributed"],
    # run control: plan, create, resume, start (the CLI and the workbench)
    ["engine.control"],
    ["engine.present", "engine.present.views"],
    ["engine.present.findings", "engine.present.figures"],
    ["engine.present.report"],
    # the worker process: the runner with the report kept current
    ["engine.present.worker_main"],
    # the UI
    ["tjac_tui", "tjac_tui.locations"],
    ["tjac_tui.state", "tjac_tui.plots", "tjac_tui.progress"],
    ["tjac_tui.widgets.inputs"],
    ["tjac_tui.widgets.*"],
    ["tjac_tui.widgets"],
    ["tjac_tui.screens.confirm"],
    ["tjac_tui.screens.*"],
    ["tjac_tui.screens"],
    ["tjac_tui.app"],
    ["tjac_tui.cli"],
]


def modules() -> dict[str, Path]:
    out = {}
    for top in ("engine", "tjac_tui"):
        for p in (REPO / top).rglob("*.py"):
            name = ".".join(p.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def layer_of(module: str) -> int | None:
    for i, names in enumerate(LAYERS):  # exact names first, then patterns, bottom up
        if module in names:
            return i
    for i, names in enumerate(LAYERS):
        if any("*" in n and fnmatch.fnmatchcase(module, n) for n in names):
            return i
    return None


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import anywhere in the file."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None) if sub in known else (target, a.name))
    resolved = []
    for target, name in out:
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in known and target != module:
            resolved.append((target, name))
    return resolved


MODULES = modules()

# The package itself sits at the bottom (every engine module's import runs it) and re-exports
# the public API from engine.api lazily, in its __getattr__: the one import that points up.
LAZY = {("engine", "engine.api")}


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_no_private_names(module):
    mine = layer_of(module)
    assert mine is not None
    upward, private = [], []
    for target, name in imports(module, MODULES[module], MODULES):
        theirs = layer_of(target)
        if (module, target) in LAZY:
            continue
        if theirs is None or theirs >= mine:
            upward.append(f"{target} (layer {theirs}, this is layer {mine})")
        if name and name.startswith("_") and not name.startswith("__"):
            private.append(f"{name} from {target}")
    assert not upward, f"{module} imports upward or sideways: {upward}"
    assert not private, f"{module} imports private names: {private}"


def test_the_packages_api_is_imported_on_first_use_only():
    """engine/__init__.py imports nothing at module level, and engine.api only inside
    ``__getattr__`` (so ``import engine.config`` stays torch-free)."""
    tree = ast.parse(MODULES["engine"].read_text())
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    lazy = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"]
    assert lazy and [n for n in ast.walk(lazy[0]) if isinstance(n, ast.ImportFrom)]
    for f in tree.body:
        if isinstance(f, ast.FunctionDef) and f.name != "__getattr__":
            assert not [n for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_the_engine_never_imports_the_ui():
    for module, path in MODULES.items():
        if module.startswith("engine"):
            assert not [t for t, _ in imports(module, path, MODULES) if t.startswith("tjac_tui")]


def test_the_checker_sees_a_violation(tmp_path):
    """The walk finds imports inside functions and private names (so the tests above can
    fail)."""
    pkg = tmp_path / "engine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from .high import _x\n")
    (pkg / "high.py").write_text("_x = 1\n")
    known = {"engine": pkg / "__init__.py", "engine.low": pkg / "low.py",
             "engine.high": pkg / "high.py"}
    assert imports("engine.low", pkg / "low.py", known) == [("engine.high", "_x")]
