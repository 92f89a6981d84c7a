"""What a target host needs, asked of pip's resolver: ``pip install --dry-run --report`` for another
host's CPython version, ABI and manylinux platforms, and which packages that host already has.

:class:`Target` describes the host; :func:`resolve` returns pip's choice (sdist-only pure-Python
requirements are built into wheels and the resolution retried); :func:`left_out` finds the packages
reachable only through those the host has (torch and its CUDA libraries). Stdlib-only; needs pip >= 22.2
in an interpreter of the target's Python version (pip evaluates markers for the one it runs in).
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ptq_deploy.environments.bundle import version_tuple
from ptq_deploy.errors import BundleError

MAX_SDIST_BUILDS = 10
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EXTRA = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


def norm(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Target:
    """The host a bundle is for: CPython ``python`` on Linux ``arch`` with glibc ``glibc`` or newer.

    ``torch_present`` (a version) means torch is installed there already: it and whatever only torch
    needs are left out, and each venv sees it through ``--system-site-packages``. ``exclude`` names
    more packages the host has, left out the same way. ``drop`` names optional dependencies the host
    lacks and the work does not import (vLLM's FlashInfer, say), left out with what only they need and
    not installed anywhere. The architecture is this machine's: pip evaluates environment markers for
    the machine it runs on.
    """

    accel: str
    python: str
    glibc: str
    torch_present: str | None = None
    exclude: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    arch: str = field(default_factory=platform.machine)

    def platforms(self) -> list[str]:
        major, minor = version_tuple(self.glibc)[:2]
        new = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 4, -1)]
        return new + [f"manylinux{tag}_{self.arch}" for tag in ("2014", "2010", "1")]

    def abis(self) -> set[str]:
        return {"cp" + self.python.replace(".", ""), "abi3", "none"}

    def pip_args(self) -> list[str]:
        args = ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp",
                "--abi", "cp" + self.python.replace(".", "")]
        for tag in self.platforms():
            args += ["--platform", tag]
        return args

    def host_roots(self) -> set[str]:
        return {norm(n) for n in self.exclude} | ({"torch"} if self.torch_present else set())

    def left_out_roots(self) -> set[str]:
        return self.host_roots() | {norm(n) for n in self.drop}

    def describe(self) -> str:
        torch = f", torch {self.torch_present} present" if self.torch_present else ""
        return f"{self.accel}, CPython {self.python}, {self.arch}, glibc >= {self.glibc}{torch}"


def wheel_fits(filename: str, target: Target) -> bool:
    """True when ``filename`` is a wheel pip would install on ``target`` (CPython version, ABI, platform)."""
    if not filename.endswith(".whl"):
        return False
    pys, abis, plats = filename[:-4].split("-")[-3:]
    major, minor = version_tuple(target.python)[:2]

    def fits(py: str, abi: str) -> bool:
        kind, digits = py[:2], py[2:]
        if not digits.startswith(str(major)) or not (digits[1:].isdigit() or digits == str(major)):
            return False
        sub = int(digits[1:] or -1)  # py3 / py37 / cp312 (single-digit major)
        if kind == "py":
            return abi == "none" and sub <= minor
        return kind == "cp" and (sub == minor and abi in target.abis() or abi == "abi3" and 0 <= sub <= minor)

    plat_ok = any(p == "any" or p in target.platforms() for p in plats.split("."))
    return plat_ok and any(fits(py, abi) for py in pys.split(".") for abi in abis.split("."))


@dataclass(frozen=True)
class Dep:
    """One ``Requires-Dist`` entry: the package, the extras it asks of it, and the extras it needs.

    ``needs_extras`` is None when the entry applies whatever extras are active.
    """

    name: str
    extras: frozenset[str] = frozenset()
    needs_extras: frozenset[str] | None = None


@dataclass
class Pkg:
    """One distribution pip's resolver chose."""

    name: str
    version: str
    filename: str
    sha256: str | None
    requires: list[Dep]
    requested: bool
    local: bool
    extras: frozenset[str] = frozenset()


def _top_level(text: str, word: str) -> list[str]:
    """``text`` split at `` word `` outside parentheses; ``[]`` when its parentheses do not balance.

    With ``word=""`` it only checks the balance: ``[text]`` or ``[]``.
    """
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return []
        if word and depth == 0 and text.startswith(f" {word} ", i):
            parts.append(text[start:i])
            start = i + len(word) + 2
    return parts + [text[start:]] if depth == 0 else []


def _unwrap(text: str) -> str:
    """``text`` without parentheses that enclose all of it."""
    text = text.strip()
    while text.startswith("(") and text.endswith(")") and _top_level(text[1:-1], "") == [text[1:-1]]:
        text = text[1:-1].strip()
    return text


def parse_dep(entry: str) -> Dep | None:
    """A ``Requires-Dist`` string as a :class:`Dep`. Only ``extra`` markers are evaluated: a marker that
    ANDs ``extra == X`` (or a disjunction of such tests) makes the entry need those extras; any other
    marker counts as true, which keeps a package more often, never less."""
    spec, _, marker = entry.partition(";")
    m = re.match(r"\s*(" + _NAME.pattern + r")\s*(?:\[([^\]]*)\])?", spec)
    if not m:
        return None
    extras = frozenset(norm(e) for e in (m.group(2) or "").split(",") if e.strip())
    for conj in _top_level(marker.strip(), "and") if marker.strip() else []:
        alts = [_EXTRA.fullmatch(_unwrap(a)) for a in _top_level(_unwrap(conj), "or")]
        if alts and all(alts):
            return Dep(norm(m.group(1)), extras, frozenset(norm(a.group(1)) for a in alts))
    return Dep(norm(m.group(1)), extras)


def run_pip(python: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True)


def check_pip(proc: subprocess.CompletedProcess, what: str) -> None:
    """Raise pip's last error line (and the causes of a resolution conflict) as one line."""
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines or [f"exit {proc.returncode}"]
        cause = next((i for i, line in enumerate(lines) if line.startswith("The conflict is caused by")), None)
        causes = [] if cause is None else [line.strip() for line in lines[cause + 1:] if line.startswith(" ")]
        raise BundleError(f"{what} failed: {errors[-1].strip()}" + (f" ({'; '.join(causes[:6])})" if causes else ""))


def resolver_python(python: str, explicit: str | None = None) -> str:
    """An interpreter of the target's Python version (pip evaluates markers for the one it runs in)."""
    for cand in [explicit] if explicit else [sys.executable, shutil.which(f"python{python}")]:
        if not cand:
            continue
        try:
            out = subprocess.run([cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out == python:
            return cand
    raise BundleError(f"resolving for Python {python} needs a python{python} interpreter with pip here: "
                      f"pass --resolver-python PATH")


def pip_version(python: str) -> str:
    return run_pip(python, ["--version"]).stdout.split()[1]


def resolve(python: str, target: Target, req_files: list[Path], extra: list[str], sdists: Path,
            ) -> dict[str, Pkg]:
    """pip's resolution of ``req_files`` + ``extra`` for ``target``, by normalized name.

    A requirement with no wheel at all (an sdist-only package) is built into ``sdists`` when it
    is pure Python, and the resolution is retried.
    """
    cons = [f"torch=={target.torch_present}"] if target.torch_present else []
    built: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "constraints.txt").write_text("\n".join(cons) + "\n")
        common = ["-c", str(Path(tmp, "constraints.txt"))] + [a for f in req_files for a in ("-c", str(f))]
        for _ in range(MAX_SDIST_BUILDS + 1):
            report = Path(tmp, "report.json")
            proc = run_pip(python, ["install", "--dry-run", "--ignore-installed", "--target", str(Path(tmp, "t")),
                                 "--report", str(report), "--find-links", str(sdists), *target.pip_args(),
                                 *common, *[a for f in req_files for a in ("-r", str(f))], *extra])
            if proc.returncode == 0:
                return _parse_report(json.loads(report.read_text()))
            missing = [n for n in _no_distribution(proc.stderr + proc.stdout) if n not in built]
            if not missing:
                check_pip(proc, f"resolving {', '.join(f.name for f in req_files)} for {target.describe()}")
            for name in missing:
                built.add(name)
                before = set(sdists.glob("*.whl"))
                check_pip(run_pip(python, ["wheel", "--no-deps", "-q", "-w", str(sdists), *common, name]),
                       f"building {name} from its sdist")
                for new in set(sdists.glob("*.whl")) - before:
                    if not new.name.endswith("-none-any.whl"):
                        new.unlink()
                        raise BundleError(f"{name} has no wheel for {target.describe()} and is not pure Python")
    raise BundleError(f"more than {MAX_SDIST_BUILDS} sdist-only requirements: {', '.join(sorted(built))}")


def _no_distribution(text: str) -> list[str]:
    """The requirements pip's error text says have no distribution for the target (normalized).

    pip says so plainly, or lists them after a conflict, or (for a pin) reports a conflict whose
    only causes are the pin itself.
    """
    names = re.findall(r"No matching distribution found for (" + _NAME.pattern + ")", text)
    listed = re.search(r"no matching distributions available for your environment:\s*([^\n]+)", text)
    names += listed.group(1).split(",") if listed else []
    causes = re.search(r"The conflict is caused by:\n((?:[ \t]+\S[^\n]*\n?)+)", text)
    if causes and all(c.strip().startswith("The user requested") for c in causes.group(1).splitlines()):
        names += re.findall(r"The user requested (?:\(constraint\) )?(" + _NAME.pattern + ")", causes.group(1))
    return sorted({norm(n.strip()) for n in names if n.strip()})


def _parse_report(report: dict) -> dict[str, Pkg]:
    out = {}
    for item in report["install"]:
        meta, info = item["metadata"], item["download_info"]
        requires = [d for entry in meta.get("requires_dist") or [] if (d := parse_dep(entry))]
        out[norm(meta["name"])] = Pkg(
            name=meta["name"], version=meta["version"], filename=unquote(info["url"].rsplit("/", 1)[-1]),
            sha256=info.get("archive_info", {}).get("hashes", {}).get("sha256"), requires=requires,
            requested=bool(item.get("requested")), local=info["url"].startswith("file:"),
            extras=frozenset(norm(e) for e in item.get("requested_extras") or []))
    return out


def left_out(pkgs: dict[str, Pkg], roots: set[str]) -> set[str]:
    """``roots`` and every package the requested ones reach only through them.

    Dependencies are followed with the extras each package is asked for (see :func:`parse_dep`).
    """
    if not roots:
        return set()
    active: dict[str, frozenset[str]] = {}
    todo = [(n, p.extras) for n, p in pkgs.items() if p.requested and n not in roots]
    while todo:
        n, extras = todo.pop()
        if n in roots or (n in active and extras <= active[n]):
            continue
        active[n] = active.get(n, frozenset()) | extras
        todo += [(d.name, d.extras) for d in pkgs[n].requires
                 if d.name in pkgs and (d.needs_extras is None or d.needs_extras & active[n])]
    return set(pkgs) - set(active)
