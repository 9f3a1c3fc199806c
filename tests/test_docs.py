"""The documentation stays true: README.md, docs/*.md and benchmarks/RESULTS.md are read as a
user reads them (nothing is run).

Every relative link names a file of the repository, and every ``#anchor`` a heading of its
target (GitHub's rule: the heading's text lowercased, punctuation dropped, spaces to ``-``, a
repeated heading ``-1``, ``-2``...). Every ``tjac ...`` command in a code block parses with the
command line's own parser (placeholders such as SESSION or PRESET are plain arguments), every
``tjac`` command in running text names a subcommand and flags that exist, every preset named by
``tjac run`` / ``tjac sweep`` / ``--preset`` exists, every ``--set KEY=...`` names a config key,
every ``python benchmarks/X.py`` / ``python -m MODULE`` names a file or module that exists, every
path of the repository named in code exists, and no link or path leaves the repository. The
generated key table of docs/config.md is the one the code generates, the layout of
docs/design.md names every engine module, and the README's test command is the one ``.ci/run``
runs. The checker is itself tried on small broken examples.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest

from engine.config import field_info
from tjac_tui.cli import build_parser, keys_markdown
from tjac_tui.locations import NotFound, find_preset

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
        REPO / "benchmarks" / "RESULTS.md"]
# the repository's own top-level entries: a path in the docs that starts with one of them is a
# file of the repository and must exist
REPO_TOPS = ("engine", "tjac_tui", "benchmarks", "scripts", "presets", "tests", "docs", ".ci")
# absolute paths the docs may name: the system's, never a checkout's surroundings
SYSTEM_PATHS = ("/usr/", "/proc/", "/dev/")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")  # SESSION, PRESET, DIR, FILE, HOST...

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


# ---- reading markdown ----------------------------------------------------------------------------


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of ``text``: (language, body)."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return FENCE.sub("", text)


def spans(text: str) -> list[str]:
    """The inline code spans of the running text, whitespace folded (a span may wrap)."""
    return [" ".join(s.split()) for s in SPAN.findall(prose(text).replace("``", ""))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: links reduced to their text, lowercased, every character
    but letters, digits, ``_``, ``-`` and spaces dropped, spaces to ``-``."""
    text = LINK.sub(r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of ``text`` (a repeated one gets ``-1``, ``-2``, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", prose(text), re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def inside_repo(path: Path) -> bool:
    return path.resolve().is_relative_to(REPO)


# ---- the checks ----------------------------------------------------------------------------------


def check_links(doc: Path, text: str) -> list[str]:
    """Every link of ``text`` (the file ``doc``): its file exists in the repository, its anchor
    is a heading there."""
    out = []
    for _, target in LINK.findall(prose(text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto: not checked here
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file) if file else doc
        if not inside_repo(dest):
            out.append(f"{target}: leaves the repository")
            continue
        if not dest.exists():
            out.append(f"{target}: no such file")
            continue
        here = text if not file else dest.read_text() if dest.suffix == ".md" else ""
        if anchor and anchor not in anchors(here):
            out.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    return out


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in parser._actions
                if isinstance(a, argparse._SubParsersAction))


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def check_preset(name: str) -> list[str]:
    """A preset argument: a bare name must be a shipped preset, a path under presets/ a file;
    any other path (the user's own file, a session's config.toml) and placeholders pass."""
    if PLACEHOLDER.fullmatch(name) or PLACEHOLDER.match(Path(name).name):
        return []
    if "/" not in name and not name.endswith(".toml"):
        try:
            find_preset(name)
        except NotFound as e:
            return [str(e)]
        return []
    if name.startswith("presets/") and not (REPO / name).is_file():
        return [f"{name}: no such preset file"]
    return []


def check_set(argv: list[str]) -> list[str]:
    """Every ``--set KEY=VALUE`` of ``argv`` names a config key."""
    out = []
    for i, tok in enumerate(argv):
        if tok == "--set" and i + 1 < len(argv):
            key = argv[i + 1].split("=", 1)[0]
            try:
                field_info(key)
            except KeyError:
                out.append(f"--set {argv[i + 1]}: no config key {key}")
    return out


def parse(argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    """``argv`` parsed by the command line's own parser: (namespace, "") or (None, its error)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(argv), ""
    except SystemExit as e:
        if not e.code:  # --help
            return None, ""
        return None, err.getvalue().strip().splitlines()[-1]


def check_tjac(argv: list[str], full: bool) -> list[str]:
    """A ``tjac`` command (``argv`` without ``tjac``). ``full``: it must parse as it stands (a
    code block); else (running text, where `tjac report` names a command without its
    arguments) its subcommand and every flag must exist."""
    cmd = " ".join(["tjac", *argv])
    args, error = parse(argv)
    if args is not None:
        names = [args.preset] if getattr(args, "preset", None) else []
        names += [args.target] if args.cmd in ("sweep", "study") else []
        return [f"{cmd}: {p}" for name in names for p in check_preset(name)] + \
            [f"{cmd}: {p}" for p in check_set(argv)]
    if full or not error:
        return [f"{cmd}: {error}"] if error else []
    parser = build_parser()
    takes_value = {s for a in parser._actions if a.nargs != 0 for s in a.option_strings}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # the options before the subcommand
        i += 2 if argv[i] in takes_value else 1
    sub = subcommands(parser).get(argv[i]) if i < len(argv) else None
    if i < len(argv) and sub is None:
        return [f"{cmd}: no subcommand {argv[i]}"]
    known = flags(parser) | (flags(sub) if sub else set())
    out = [f"{cmd}: unknown flag {a.split('=')[0]}" for a in argv
           if a.startswith("-") and a.split("=")[0] not in known]
    rest = argv[i + 1:]
    if sub is not None and argv[i] in ("run", "sweep", "study") and rest \
            and not rest[0].startswith("-"):
        out += [f"{cmd}: {p}" for p in check_preset(rest[0])]
    return out + [f"{cmd}: {p}" for p in check_set(argv)]


def check_python(argv: list[str]) -> list[str]:
    """``python[3] FILE.py ...`` names a file of the repository, ``python -m MODULE`` (and
    ``torchrun ... -m MODULE``) a module that can be imported."""
    for i, tok in enumerate(argv[1:], 1):
        if tok == "-m" and i + 1 < len(argv):
            mod = argv[i + 1]
            return [] if importlib.util.find_spec(mod) else [f"{' '.join(argv)}: no module {mod}"]
        if tok.endswith(".py"):
            return [] if (REPO / tok).is_file() else [f"{' '.join(argv)}: no file {tok}"]
        if argv[0] != "torchrun" and not tok.startswith("-"):
            return []
    return []


def check_command(line: str, full: bool) -> list[str]:
    """One command line (``&&`` chains checked link by link)."""
    out = []
    for part in line.split("&&"):
        try:
            argv = shlex.split(part, comments=True)
        except ValueError as e:
            return [f"{line}: {e}"]
        if not argv:
            continue
        if argv[0] == "tjac":
            out += check_tjac(argv[1:], full)
        elif argv[0] in ("python", "python3", "torchrun"):
            out += check_python(argv) + check_set(argv)
    return out


def command_lines(text: str) -> list[tuple[str, bool]]:
    """(command, whether it is a complete one) of every code block and code span: in a
    ``console`` block the ``$ `` lines, in a bash/sh block every line (continuations joined; a
    block of another language, or none, holds no command); the spans that start with a command
    and hold no usage notation ([optional], {a,b}, ...)."""
    out = []
    for lang, body in blocks(text):
        if lang in ("bash", "sh", "shell"):
            for line in body.replace("\\\n", " ").splitlines():
                out.append((line, True))
        elif lang == "console":
            out += [(ln[2:], True) for ln in body.splitlines() if ln.startswith("$ ")]
    for s in spans(text):
        if re.match(r"(tjac|python3?|torchrun)( |$)", s) and not re.search(r"[\[{|]|\.\.\.", s):
            out.append((s, False))
    return out


def check_paths(doc: Path, text: str) -> list[str]:
    """The repository's paths named in code exist; no path leaves the repository."""
    out = []
    for m in re.finditer(r"(?<![\w.])\.\./[\w./-]*", text):
        if not inside_repo(doc.parent / m.group(0)):
            out.append(f"{m.group(0)}: leaves the repository")
    for m in re.finditer(r"(?:^|(?<=[\s`'\"(=]))(/[A-Za-z][\w.-]*/[\w./-]*)", text, re.M):
        if not m.group(1).startswith(SYSTEM_PATHS):
            out.append(f"{m.group(1)}: a path outside the repository")
    words = [w for s in spans(text) for w in s.split()]
    words += [w for _, body in blocks(text) for w in re.split(r"[\s'\"=]+", body)]
    for w in words:
        w = w.rstrip(".,;:)")
        if w.split("/")[0] in REPO_TOPS and "/" in w and not PLACEHOLDER.search(w):
            if not (REPO / w).exists():
                out.append(f"{w}: no such file in the repository")
    return out


def check_toml(text: str) -> list[str]:
    """Every key of a ``toml`` block is a config key (``[sweep.values]`` names config keys)."""
    out = []

    def keys(table: dict, prefix: str) -> list[str]:
        found = []
        for k, v in table.items():
            key = f"{prefix}{k}"
            if key == "sweep.values":  # its keys are config keys, its values lists of values
                found += keys(v, "")
            elif isinstance(v, dict):
                found += keys(v, f"{key}.")
            else:
                found.append(key)
        return found

    for lang, body in blocks(text):
        if lang != "toml":
            continue
        try:
            table = tomllib.loads(body)
        except tomllib.TOMLDecodeError as e:
            out.append(f"a toml block: {e}")
            continue
        for key in keys(table, ""):
            try:
                field_info(key)
            except KeyError:
                out.append(f"a toml block: no config key {key}")
    return out


def problems(doc: Path, text: str) -> list[str]:
    out = check_links(doc, text) + check_paths(doc, text) + check_toml(text)
    for line, full in command_lines(text):
        out += check_command(line, full)
    return out


# ---- the documentation ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_commands_and_paths_of_the_docs_are_true(doc):
    assert doc.is_file()
    assert problems(doc, doc.read_text()) == []


def test_every_doc_is_reachable_from_the_readme():
    readme = (REPO / "README.md").read_text()
    linked = {(REPO / t.partition("#")[0]).resolve() for _, t in LINK.findall(readme)}
    assert {p.resolve() for p in DOCS[1:]} <= linked


def test_the_readme_stays_short():
    """The README is the first page, the rest lives in docs/: 12 KB at most."""
    assert len((REPO / "README.md").read_bytes()) <= 12 * 1024


def test_config_reference_is_the_generated_one():
    text = (REPO / "docs" / "config.md").read_text()
    block = text.split("<!-- keys: ")[1].split("-->", 1)[1].split("<!-- /keys -->")[0]
    assert block.strip() == keys_markdown(all_sections=True).strip()


def test_manifest_reference_is_the_generated_one():
    from engine.manifest import reference_markdown

    text = (REPO / "docs" / "session-format.md").read_text()
    block = text.split("<!-- manifest: ")[1].split("-->", 1)[1].split("<!-- /manifest -->")[0]
    assert block.strip() == reference_markdown().strip()


def test_events_reference_is_the_generated_one():
    from engine.events import reference_markdown

    text = (REPO / "docs" / "events.md").read_text()
    block = text.split("<!-- events: ")[1].split("-->", 1)[1].split("<!-- /events -->")[0]
    assert block.strip() == reference_markdown().strip()


def test_design_layout_names_every_engine_module():
    text = (REPO / "docs" / "design.md").read_text()
    layout = text.split("## Layers")[1].split("\n## ")[0]
    for p in sorted((REPO / "engine").rglob("*.py")):
        rel = p.relative_to(REPO)
        if p.name == "__init__.py" and p.parent.name != "engine":
            continue
        top = "/".join(rel.parts[:2]) + "/" if len(rel.parts) > 2 else str(rel)
        assert f"`{rel}`" in layout or f"`{top}`" in layout or p.name == "__init__.py", rel


def test_the_two_fresh_machine_commands():
    """The README's first command sets up and runs the quick preset; its second is exactly
    what .ci/run runs (.ci/run keeps pip quiet)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Two commands for a fresh machine")[1].split("\n## ")[0]
    run, test = [body.strip() for lang, body in blocks(section) if lang == "bash"]
    install = "python3 -m pip install torch==2.13.0 && python3 -m pip install -e ."
    assert run == f"{install} && tjac run quick"
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
          if ln.strip().startswith("python3 ")]
    assert [c.replace("pip install -q ", "pip install ") for c in ci] == test.split(" && ")
    assert ci[-1] == 'python3 -m pytest -m "not gpu" -q'


# ---- the checker catches what it is for ----------------------------------------------------------


BAD = [
    ("see [the GPU](docs/nosuch.md)", "docs/nosuch.md: no such file"),
    ("see [speed](docs/speed.md#no-such-heading)", "no heading #no-such-heading"),
    ("see [above](#nowhere)", "#nowhere: no heading"),
    ("see [x](../../outside.md)", "leaves the repository"),
    ("```bash\ntjac run no-such-preset\n```", "no such preset file or shipped preset"),
    ("```bash\ntjac run quick --frobnicate\n```", "unrecognized arguments: --frobnicate"),
    ("```bash\ntjac frobnicate\n```", "invalid choice: 'frobnicate'"),
    ("```bash\ntjac run quick --set train.nosuch=1\n```", "no config key train.nosuch"),
    ("```console\n$ tjac sweep no-such-sweep\n```", "no such preset"),
    ("```bash\ntjac --preset presets/nosuch.toml\n```", "presets/nosuch.toml: no such preset"),
    ("run `tjac run quick --frobnicate` first", "unknown flag --frobnicate"),
    ("run `tjac frobnicate SESSION`", "no subcommand frobnicate"),
    ("run `tjac run quik`", "did you mean quick"),
    ("run `tjac --preset presets/quick.toml run --frobnicate`", "unknown flag --frobnicate"),
    ("`python benchmarks/nosuch.py --fast`", "no file benchmarks/nosuch.py"),
    ("```bash\npython -m engine.nosuch SESSION\n```", "no module engine.nosuch"),
    ("```bash\ntorchrun --nproc-per-node 2 -m engine.nosuch S\n```", "no module engine.nosuch"),
    ("`python benchmarks/bench_distributed.py --set spectrum.kk=3`", "no config key spectrum.kk"),
    ("the reference (`../shared/reference/jax.py`)", "../shared/reference/jax.py: leaves"),
    ("`-m engine.distributed /shared/sessions/lenet`", "/shared/sessions/lenet: a path outside"),
    ("the kernels (`engine/kernels/nosuch.py`)", "engine/kernels/nosuch.py: no such file"),
    ("```toml\n[jacobian]\nsnapshot = [25]\n```", "no config key jacobian.snapshot"),
    ("```toml\n[sweep.values]\nmodel.hiden = [[16]]\n```", "no config key model.hiden"),
]


@pytest.mark.parametrize("text, why", BAD, ids=[w for _, w in BAD])
def test_the_checker_finds_what_is_broken(text, why):
    found = problems(REPO / "README.md", text)
    assert any(why in p for p in found), found


def test_the_checker_passes_what_is_true():
    good = """## A heading, with `code` and (punctuation)

see [it](#a-heading-with-code-and-punctuation),
[speed](docs/speed.md#the-svd-and-the-memory-of-a-run) and [the results](benchmarks/RESULTS.md);
`tjac report` names a command, `tjac report SESSION --figures` runs one, so does
`tjac --preset presets/quick.toml`; `/usr/bin/time -v` is the system's.

```bash
tjac run quick --set train.lr=0.05 --plan   # a comment
tjac --preset presets/quick.toml
tjac sweep DIR
python benchmarks/matfree.py reach && python -m engine.distributed SESSION
```

```console
$ tjac run x.toml
x.toml: train.lr: expected a positive number, got "fast"
```

```toml
[jacobian]
snapshots = [25, 125]
[sweep]
zip = true
[sweep.values]
model.hidden = [[16], [32]]
train.lr = [0.03, 0.1]
```
"""
    assert problems(REPO / "README.md", good) == []


# ---- what the docs rely on -----------------------------------------------------------------------


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


def test_the_lenet_plan_examples_are_what_the_plan_prints(tmp_path):
    """docs/conv.md's two ``tjac run lenet5-digits28 --plan`` examples: every line is one the
    program prints for that command (the sizes as they are; the verdict and the probe's lines
    in their form, their figures being the documenting machine's), none it no longer prints."""
    from dataclasses import replace

    from engine import control

    text = (REPO / "docs" / "conv.md").read_text()
    blocks = re.findall(r"```console\n\$ (tjac run lenet5-digits28 --plan[^\n]*)\n(.*?)```",
                        text, re.S)
    assert len(blocks) == 2
    for command, out in blocks:
        args = build_parser().parse_args(shlex.split(command)[1:])
        cfg = control.prepare(find_preset(args.preset), args.set, device=args.device)
        report = control.plan_report(cfg, tmp_path)
        lines = out.strip().splitlines()
        n = len(report.plan_lines)
        assert lines[:n] == report.plan_lines, command
        verdict, rest = lines[n], lines[n + 1:]
        if verdict.startswith("does not fit: "):
            assert report.fits.split(" and ")[0] == verdict.split(" and ")[0]
            assert rest == replace(report, fit=False).probe_lines()
            continue
        assert re.fullmatch(r"fits in sessions: yes \([0-9.]+ [kMGT]?B free\)", verdict)
        assert rest[0] == control.probing_text(cfg.spectrum.method)
        dev, chunk = re.fullmatch(r"device (\w+): chunks of (\d+) columns", rest[1]).groups()
        rate, _ = re.fullmatch(r"probe: ([0-9.]+) column-steps/s -> J in about (\S+)",
                               rest[2]).groups()
        jacobian_s = report.P * report.steps / float(rate)
        probe = {"device": dev, "chunk": int(chunk), "column_steps_per_s": float(rate),
                 "jacobian_s": jacobian_s}
        shown = replace(report, fit=True, probe=probe).probe_lines()
        assert [re.sub(r"about \S+", "", x) for x in rest[1:]] == \
            [re.sub(r"about \S+", "", x) for x in shown]
