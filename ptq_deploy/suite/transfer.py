"""A cell's files between a worker's scratch results dir and the driver's (no shared filesystem assumed).

Files travel as ``{path relative to a results dir: bytes}``. ``Snapshot`` tells which files a step
created or changed (a checkpoint directory always whole); ``write_files`` puts them under a results
dir atomically: each checkpoint directory replaced as a whole, each other file by itself, step
records last (a record is what marks a step done). Text files (JSON results, logs) name paths under
the results dir they were written in; ``write_files`` rewrites those to its own.
"""

from __future__ import annotations

from pathlib import Path

from ptq_deploy.results import atomic_dir, atomic_write_bytes
from ptq_deploy.suite import layout

Files = dict[str, bytes]
TEXT_SUFFIXES = (".json", ".log", ".yaml")


def _unit(rel: str) -> str | None:
    """The checkpoint directory a file belongs to (``checkpoints/<model>/<cell>``), or None."""
    parts = rel.split("/")
    return "/".join(parts[:3]) if parts[0] == "checkpoints" and len(parts) > 3 else None


def read_dir(root: Path, rel_dir: str) -> Files:
    """Every file under ``root / rel_dir``, named relative to ``root``."""
    base = root / rel_dir
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def cell_inputs(root: Path, model: str, cell: str) -> Files:
    """What a worker needs of a cell whose compress step is done: its checkpoint."""
    ckpt = layout.checkpoint_dir(root, model, cell)
    return read_dir(root, ckpt.relative_to(root).as_posix()) if ckpt.is_dir() else {}


class Snapshot:
    """The files of a results dir as last seen; ``changed`` returns what is new or modified since."""

    def __init__(self, root: Path):
        self.root = root
        self.seen = self._scan()

    def _scan(self) -> dict[str, tuple[int, int]]:
        out = {}
        for p in self.root.rglob("*"):
            if p.is_file() and not any(part.startswith(".ptq-tmp-") for part in p.parts):
                st = p.stat()
                out[p.relative_to(self.root).as_posix()] = (st.st_size, st.st_mtime_ns)
        return out

    def changed(self) -> Files:
        now = self._scan()
        new = [rel for rel, sig in now.items() if self.seen.get(rel) != sig]
        self.seen = now
        files: Files = {}
        for unit in sorted({u for u in map(_unit, new) if u}):
            files.update(read_dir(self.root, unit))
        for rel in new:
            if _unit(rel) is None:
                files[rel] = (self.root / rel).read_bytes()
        return files


def write_files(root: Path, files: Files, written_in: Path | str) -> None:
    """Write ``files`` (made under the results dir ``written_in``) into the results dir ``root``."""
    old, new = str(written_in).encode(), str(root).encode()

    def body(rel: str) -> bytes:
        data = files[rel]
        return data.replace(old, new) if rel.endswith(TEXT_SUFFIXES) and old != new else data

    units = sorted({u for u in map(_unit, files) if u})
    for unit in units:
        with atomic_dir(root / unit, force=True) as tmp:
            for rel in (r for r in files if _unit(r) == unit):
                dest = tmp / rel[len(unit) + 1:]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(body(rel))
    rest = sorted((r for r in files if _unit(r) is None), key=lambda r: r.startswith("steps/"))
    for rel in rest:
        atomic_write_bytes(root / rel, body(rel), force=True)
