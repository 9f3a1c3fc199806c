"""The records of a session (``manifest.json``) and of a sweep (``sweep.json``), typed.

A :class:`Manifest` is what ``manifest.json`` holds: the session's status, one
:class:`StageRecord` per stage, one :class:`FileRecord` per file a stage wrote (and per input
file the config names), and what the run recorded about itself (P, the layout, the device,
versions, final metrics...). :meth:`Manifest.from_json` reads every manifest written so far
(format 1 had no ``format_version``; keys it does not know are kept, so that a manifest of a
newer tjac round-trips); :meth:`Manifest.to_json` writes what is on disk, keys whose value is
None left out. A value of the wrong type is :class:`ManifestError` (one line naming the key).

The claims a run records once and readers show as facts (P, the preset, the data, the final
metrics...) carry a digest each (``claims``), written with them: a claim edited by hand no
longer matches its digest, and :meth:`Manifest.edited_claims` names it. :func:`check_file`
compares a file with its record (size, time stamp, sha256 or the digest of every block); the
session and the sweep both use it.

``python -m engine.manifest`` prints the reference of the fields (docs/session-format.md
holds it; a test checks that it is the generated one). Torch- and numpy-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import block_digests, sha256

FORMAT_VERSION = 2  # 1: the manifests written before format_version was recorded
# a file whose modification time changed (a copy that did not keep it: ``cp -r``) but not its
# size is checked by its contents in a quick check when it is at most this large
RECHECK_MAX = 64 << 20


class ManifestError(ValueError):
    """A manifest (or a record in it) that is not one: ``str()`` says what is wrong."""


def doc(text: str, default: Any = None) -> Any:
    """A field of a record with its meaning (the generated reference shows it)."""
    return field(default=default, metadata={"doc": text})


def digest(value: Any) -> str:
    """The digest of a JSON value (its canonical text): 16 hex digits of sha256."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# JSON types a field's annotation allows, for the check on reading
_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
          "dict": (dict,), "list": (list,)}


def _check_type(where: str, f: dataclasses.Field, value: Any) -> None:
    if value is None:
        return
    allowed = []
    for part in str(f.type).replace(" ", "").split("|"):
        allowed += _TYPES.get(part.split("[")[0], ())
    if not allowed:
        return
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, tuple(allowed))
    if not ok:
        raise ManifestError(f"{where}{f.name}: expected {f.type}, got {json.dumps(value)[:40]}")


class Record:
    """A JSON object with typed fields; unknown keys go to ``extra`` and come back out."""

    extra: dict

    @classmethod
    def from_json(cls, d: Any, where: str = ""):
        if not isinstance(d, dict):
            raise ManifestError(f"{where.rstrip('.') or 'the manifest'}: expected an object, "
                                f"got {json.dumps(d)[:40]}")
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        kw = {}
        for k, v in d.items():
            if k in known:
                _check_type(where, known[k], v)
                kw[k] = cls.convert(k, v, where)
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def convert(cls, key: str, value: Any, where: str) -> Any:
        return value

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is not None or f.name in self.ALWAYS:
                out[f.name] = v.to_json() if isinstance(v, Record) else (
                    {k: r.to_json() for k, r in v.items()} if isinstance(v, dict) and v
                    and all(isinstance(r, Record) for r in v.values()) else v)
        out.update(self.extra)
        return out

    ALWAYS: tuple[str, ...] = ()


@dataclass
class FileRecord(Record):
    """A file as it was written: ``manifest.json``'s ``files[rel]`` (and ``inputs[path]``,
    ``sweep.json``'s ``files[rel]``)."""

    stage: str | None = doc("the stage that wrote it (for an input: the config key that "
                            "names it, e.g. data.path)")
    bytes: int | None = doc("its size in bytes")
    mtime_ns: int | None = doc("its modification time (ns since the epoch), for quick checks")
    sha256: str | None = doc("sha256 of its contents (a file written whole)")
    blocks: dict | None = doc("a file written in blocks (jacobian.npy): {offset, block, "
                              "digests}, blake2b-128 of each block")
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, path: str | Path, stage: str | None, blocks: dict | None = None
           ) -> "FileRecord":
        """The record of the file at ``path`` as it is now (its sha256 unless ``blocks``)."""
        st = Path(path).stat()
        return cls(stage=stage, bytes=st.st_size, mtime_ns=st.st_mtime_ns,
                   sha256=None if blocks is not None else sha256(path), blocks=blocks)


@dataclass
class StageRecord(Record):
    """One stage: ``manifest.json``'s ``stages[name]``."""

    status: str | None = doc("pending (also when absent), running, done, failed, interrupted")
    started: str | None = doc("when it last started (ISO 8601, UTC)")
    finished: str | None = doc("when it last finished")
    seconds: float | None = doc("seconds it has computed, over every attempt")
    error: str | None = doc("why it failed (one line)")
    chunk: int | None = doc("jacobian: columns a chunk (kept when the stage resumes)")
    chunk_fallbacks: list | None = doc("jacobian: [{from, to}] each halving of the chunk after "
                                       "running out of memory")
    primal_dev: float | None = doc("jacobian: the largest absolute deviation of a chunk's "
                                   "theta_T from thetaT.npz")
    primal_bound: float | None = doc("jacobian: the deviation allowed (a few float32 or float64 "
                                     "ulps of max(1, the largest theta_T))")
    columns_done: int | None = doc("jacobian: columns computed so far")
    extra: dict = field(default_factory=dict)


# the claims: what a run records about itself once and readers show as facts, each with its
# digest in ``claims`` (P is what `tjac ls` lists, preset what the report names...)
CLAIMS = ("preset", "created", "config_digest", "inputs", "P", "layout", "device", "dtype",
          "environment", "data", "steps", "numerics", "device_info", "final_metrics")


@dataclass
class Manifest(Record):
    """A session's ``manifest.json``."""

    format_version: int | None = doc(f"the format ({FORMAT_VERSION}); absent: 1, written "
                                     "before it was recorded")
    status: str | None = doc("created, running, done, failed or interrupted (tjac ls shows "
                             "running without a live worker as stale)")
    created: str | None = doc("when the session was created (ISO 8601, UTC)")
    preset: str | None = doc("the preset it was created from, as named")
    config_digest: str | None = doc("sha256 of config.toml as created, without [analysis.*] "
                                    "(an analysis added later runs as one more stage)")
    inputs: dict | None = doc("{path: file record} of every input file the config names "
                              "(data.path, model.init, model.build's file) at creation; a "
                              "resume refuses a changed one")
    stages: dict = doc("{name: stage record}: train, jacobian, svd, spectrum, snapshots, "
                       "matfree, analysis.<name>")
    files: dict = doc("{relative path: file record} of every file a stage wrote")
    claims: dict | None = doc("{key: digest} of each claim as written (P, preset, data, "
                              "final_metrics...): an edited claim no longer matches")
    P: int | None = doc("the number of parameters (J is P x P)")
    layout: list | None = doc("the flat parameter vector: [{name, shape, offset, size}] in order")
    device: str | None = doc("the device the session started on (cpu, cuda:0)")
    dtype: str | None = doc("float32 or float64: J's and the training's")
    environment: dict | None = doc("versions (tjac, python, torch, numpy, scipy), host, "
                                   "platform, the CPU threads the run started with (a resume "
                                   "computes with as many), on CUDA the GPU and CUDA version")
    data: dict | None = doc("{name, n_train, n_test, n_features, n_classes}")
    steps: int | None = doc("optimizer steps of the training")
    numerics: dict | None = doc("the numerics settings in effect (matmul precision, TF32, "
                                "deterministic algorithms, environment variables)")
    device_info: dict | None = doc("the device: type, index; on CUDA name, UUID, PCI bus id, "
                                   "memory")
    final_metrics: dict | None = doc("the last evaluated step: step, lr, train/test loss and "
                                     "accuracy")
    error: str | None = doc("why the run failed (one line)")
    traceback: str | None = doc("the failure's Python traceback")
    pid: int | None = doc("the worker's process id while it runs")
    started: str | None = doc("when the run first started")
    finished: str | None = doc("when the run last ended")
    repaired: str | None = doc("a damaged manifest set aside (manifest.json.damaged): why")
    extra: dict = field(default_factory=dict)

    ALWAYS = ("status", "created", "preset", "stages", "files")

    def __post_init__(self):
        self.stages = {} if self.stages is None else self.stages
        self.files = {} if self.files is None else self.files

    @classmethod
    def convert(cls, key: str, value: Any, where: str) -> Any:
        if key == "stages":
            return {k: StageRecord.from_json(v, f"stages.{k}.") for k, v in value.items()}
        if key in ("files", "inputs"):
            return {k: FileRecord.from_json(v, f"{key}.{k}.") for k, v in value.items()}
        return value

    @property
    def version(self) -> int:
        """The format version (1 for a manifest that does not say)."""
        return self.format_version or 1

    def stage_status(self, name: str) -> str:
        st = self.stages.get(name)
        return (st.status if st is not None else None) or "pending"

    def edited_claims(self) -> list[str]:
        """The claims whose value no longer matches the digest written with it."""
        return edited_claims(self.to_json())


def sign(m: dict, keys=CLAIMS) -> dict:
    """``m`` (a manifest as JSON) with the digest of each claim of ``keys`` recorded as it is
    now (in ``claims``); returns ``m``."""
    claims = m["claims"] = dict(m.get("claims") or {})
    for k in keys:
        if k in CLAIMS:
            claims[k] = digest(m.get(k))
    return m


def edited_claims(m: dict) -> list[str]:
    """The claims of ``m`` (a manifest as JSON) whose value no longer matches the digest
    written with it (none for a manifest that records no digests: format 1)."""
    claims = m.get("claims")
    if not isinstance(claims, dict):
        return []
    return [k for k, d in claims.items() if k in CLAIMS and digest(m.get(k)) != d]


def check_file(path: Path, rec: FileRecord, deep: bool | int = True) -> str | None:
    """Why the file at ``path`` does not match its record, or None. Always: missing, size.
    ``deep``: contents (sha256, or every block's digest); an int is the largest file checked by
    contents, larger ones by size and modification time only (a changed time sends a file of
    at most :data:`RECHECK_MAX` bytes to its contents)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if st.st_size != rec.bytes:
        return f"{st.st_size} bytes, {rec.bytes} were written"
    thorough = deep is True or (deep and st.st_size <= deep)
    if not thorough and st.st_mtime_ns != rec.mtime_ns:
        if st.st_size > RECHECK_MAX:
            return ("modified since it was written (its time stamp; `tjac resume` checks "
                    "its contents)")
        thorough = True  # small: its contents decide
    if not thorough:
        return None
    if rec.blocks is not None:
        b = rec.blocks
        got = block_digests(path, b["offset"], b["block"], len(b["digests"]))
        bad = [i for i, (g, d) in enumerate(zip(got, b["digests"])) if g != d]
        return f"{len(bad)} damaged block(s) (first: {bad[0]})" if bad else None
    if sha256(path) != rec.sha256:
        return "contents differ from what was written (checksum)"
    return None


# --------------------------------------------------------------------------------------------
# the generated reference (docs/session-format.md)


def reference_markdown() -> str:
    """The fields of manifest.json, its stage records and its file records as markdown
    tables (docs/session-format.md holds this text)."""
    from .present.markdown import md_table

    out = []
    for cls, title in ((Manifest, "`manifest.json`"), (StageRecord, "A stage record"),
                       (FileRecord, "A file record")):
        rows = [[f"`{f.name}`", f"`{str(f.type).replace(' | None', '')}`",
                 f.metadata["doc"].replace("<", "&lt;")]
                for f in dataclasses.fields(cls) if f.name != "extra"]
        out += [f"{title}:", "", md_table(["key", "type", "meaning"], rows, align="lll"), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
