"""Building offline bundles: resolve each environment's lock for another host, fetch its wheels.

``lock`` turns requirements into a complete lock for a :class:`Target` with pip's resolver
(``pip install --dry-run --report`` for the target's Python, ABI and manylinux platforms).
``build`` checks that each role's lock is exactly what pip resolves for the target, downloads those
wheels and this project's own wheel into ``DIR/wheels`` and writes the manifest (see ``bundle``).
Packages the host already has (``--torch-present``: torch and what only torch needs) are left out.

Stdlib-only, like ``envs``; needs pip >= 22.2 and an interpreter of the target's Python version.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ptq_deploy.bundle import FORMAT, WHEELS, sha256, version_tuple, write_manifest
from ptq_deploy.errors import BundleError

PROJECT = "ptq-deploy"
PROJECT_FILES = ("pyproject.toml", "README.md", "ptq_deploy")
MAX_SDIST_BUILDS = 10
UNRESOLVED = "unresolved"  # a lock line's comment: install that pin without its dependencies
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
    more packages to leave out the same way. The architecture is this machine's: pip evaluates
    environment markers for the machine it runs on.
    """

    accel: str
    python: str
    glibc: str
    torch_present: str | None = None
    exclude: tuple[str, ...] = ()
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

    def left_out_roots(self) -> set[str]:
        return {norm(n) for n in self.exclude} | ({"torch"} if self.torch_present else set())

    def describe(self) -> str:
        torch = f", torch {self.torch_present} present" if self.torch_present else ""
        return f"{self.accel}, CPython {self.python}, {self.arch}, glibc >= {self.glibc}{torch}"


def wheel_fits(filename: str, target: Target) -> bool:
    """True when ``filename`` is a wheel installable on ``target`` (CPython version, ABI, platform)."""
    if not filename.endswith(".whl"):
        return False
    pys, abis, plats = filename[:-4].split("-")[-3:]
    major, minor = version_tuple(target.python)[:2]
    py_ok = any(p in (f"py{major}", f"cp{major}{minor}") or (abis == "abi3" and p.startswith("cp3")
                and int(p[3:]) <= minor) for p in pys.split("."))
    plat_ok = any(p == "any" or p in target.platforms() for p in plats.split("."))
    return py_ok and plat_ok and any(a in target.abis() for a in abis.split("."))


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


def _pip(python: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
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
    return _pip(python, ["--version"]).stdout.split()[1]


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
            proc = _pip(python, ["install", "--dry-run", "--ignore-installed", "--target", str(Path(tmp, "t")),
                                 "--report", str(report), "--find-links", str(sdists), *target.pip_args(),
                                 *common, *[a for f in req_files for a in ("-r", str(f))], *extra])
            if proc.returncode == 0:
                return _parse_report(json.loads(report.read_text()))
            missing = [n for n in _no_distribution(proc.stderr + proc.stdout) if n not in built]
            if not missing:
                _check(proc, f"resolving {', '.join(f.name for f in req_files)} for {target.describe()}")
            for name in missing:
                built.add(name)
                before = set(sdists.glob("*.whl"))
                _check(_pip(python, ["wheel", "--no-deps", "-q", "-w", str(sdists), *common, name]),
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


def read_lock(lock: Path) -> tuple[dict[str, str], list[str]]:
    """A lock's pins ``{normalized name: version}`` and its ``# unresolved`` specs (added without deps)."""
    pins, unresolved = {}, []
    for raw in lock.read_text().splitlines():
        line, _, comment = (part.strip() for part in raw.partition("#"))
        if not line or line.startswith("-"):
            continue
        if "==" not in line:
            raise BundleError(f"{lock}: {line!r} is not pinned (name==version): not a complete lock")
        if comment.startswith(UNRESOLVED):
            unresolved.append(line)
        else:
            name, version = line.split("==", 1)
            pins[norm(name.split("[")[0])] = version.split(";")[0].strip()
    return pins, unresolved


def project_wheel(python: str, out: Path, root: Path) -> Path:
    """Build this project's wheel from a clean copy of its sources (no stale ``build/`` reused)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROJECT_FILES:
            src, dst = root / name, Path(tmp, name)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, dst)
        before = set(out.glob("*.whl"))
        _check(_pip(python, ["wheel", "--no-deps", "-q", "-w", str(out), tmp]), "building the project wheel")
    new = [p for p in set(out.glob("*.whl")) - before if norm(p.name.split("-")[0]) == norm(PROJECT)]
    return new[0] if new else next(out.glob(PROJECT.replace("-", "_") + "-*.whl"))


def resolve_role(python: str, target: Target, lock: Path, wheel: Path | None, sdists: Path,
                 ) -> tuple[dict[str, Pkg], set[str]]:
    """The role's resolved packages (project wheel included) and the names left out for the target."""
    pkgs = resolve(python, target, [lock], [str(wheel)] if wheel else [], sdists)
    return pkgs, left_out(pkgs, target.left_out_roots())


def make_lock(out: Path, role: str, target: Target, requirements: list[str], python: str, root: Path,
              sdists: Path, command: str, project: bool = True, unresolved: tuple[str, ...] = ()) -> Path:
    """Resolve ``requirements`` (plus, with ``project``, this project's dependencies) into a complete lock.

    ``unresolved`` pins are written as they are, to be installed without their dependencies.
    """
    for spec in unresolved:
        if "==" not in spec:
            raise BundleError(f"{spec!r}: an unresolved requirement must be pinned (name==version)")
    sdists.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp, "requirements.in")
        req.write_text("\n".join(requirements) + "\n")
        wheel = project_wheel(python, Path(tmp), root) if project else None
        pkgs, dropped = resolve_role(python, target, req, wheel, sdists)
    write_lock(out, role, target, pkgs, dropped, command, unresolved)
    return out


def write_lock(path: Path, role: str, target: Target, pkgs: dict[str, Pkg], dropped: set[str],
               command: str, unresolved: tuple[str, ...] = ()) -> None:
    """Write the resolved set as a complete lock (the project itself and left-out packages excluded)."""
    lines = [f"# Complete lock for environment '{role}' on {target.describe()}: install with pip --no-deps.",
             f"# Resolved by pip for that target: {command}"]
    if dropped:
        lines += textwrap.wrap("Left out (present on the host already): " + ", ".join(
            sorted(f"{pkgs[n].name}=={pkgs[n].version}" for n in dropped)), 100,
            initial_indent="# ", subsequent_indent="#   ", break_on_hyphens=False)
    lines += sorted([f"{p.name}=={p.version}" for n, p in pkgs.items() if n not in dropped and n != norm(PROJECT)]
                    + [f"{spec}  # {UNRESOLVED}: installed without its dependencies" for spec in unresolved],
                    key=str.lower)
    path.write_text("\n".join(lines) + "\n")


def build(out: Path, target: Target, locks: dict[str, Path], python: str, root: Path, sdists: Path,
          project: bool = True) -> dict:
    """Build the bundle in ``out`` for ``target`` from one lock per role; returns the manifest.

    ``sdists`` keeps wheels built from sdist-only requirements between runs. ``project``: include this
    project's wheel in every role (and resolve its dependencies with them).
    """
    wheels = out / WHEELS
    wheels.mkdir(parents=True, exist_ok=True)
    sdists.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proj = project_wheel(python, Path(tmp), root) if project else None
        if proj:
            shutil.copy2(proj, wheels / proj.name)
            files[proj.name] = {"origin": "project"}
        roles = {role: _bundle_role(python, target, lock, proj, Path(tmp, f"{role}.txt"), sdists, wheels, files)
                 for role, lock in locks.items()}
    for role, lock in locks.items():
        roles[role]["lock"] = _display(lock, root)
    entries = []
    for name, meta in sorted(files.items(), key=lambda kv: kv[0].lower()):
        digest = sha256(wheels / name)
        if meta.get("expect") and meta["expect"] != digest:
            raise BundleError(f"{name}: sha256 differs from the index's ({digest[:12]} vs {meta['expect'][:12]})")
        entries.append({"name": name, "size": (wheels / name).stat().st_size, "sha256": digest,
                        "origin": meta["origin"]})
    for stray in set(p.name for p in wheels.iterdir()) - set(files):
        (wheels / stray).unlink()
    manifest = {"format": FORMAT, "kind": "ptq-deploy-bundle",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "pip_version": pip_version(python), "target": {**asdict(target), "exclude": list(target.exclude)},
                "roles": roles, "files": entries, "total_bytes": sum(e["size"] for e in entries)}
    write_manifest(out, manifest)
    return manifest


def _bundle_role(python: str, target: Target, lock: Path, proj: Path | None, pins_file: Path, sdists: Path,
                 wheels: Path, files: dict[str, dict]) -> dict:
    """Check ``lock`` against pip's resolution, download its wheels, add them to ``files``; the role's entry."""
    pins, unresolved = read_lock(lock)
    pins_file.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    pkgs, dropped = resolve_role(python, target, pins_file, proj, sdists)
    kept = {n: p for n, p in pkgs.items() if n not in dropped and n != norm(PROJECT)}
    want = {n: p.version for n, p in kept.items()}
    if want != pins:
        diff = sorted({f"+{kept[n].name}=={v}" for n, v in want.items() if pins.get(n) != v}
                      | {f"-{n}=={v}" for n, v in pins.items() if want.get(n) != v})
        raise BundleError(f"{lock} is not the complete lock pip resolves for {target.describe()} "
                          f"({', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}): regenerate it with `lock`")
    pins_file.write_text("".join(f"{p.name}=={p.version}\n" for p in kept.values()))
    _check(_pip(python, ["download", "--no-deps", "-q", "-d", str(wheels), "--find-links", str(sdists),
                         *target.pip_args(), "-r", str(pins_file)]), f"downloading the wheels of {lock.name}")
    for p in kept.values():
        if not (wheels / p.filename).exists() or not wheel_fits(p.filename, target):
            raise BundleError(f"{p.filename}: {'not a wheel' if (wheels / p.filename).exists() else 'missing'} "
                              f"for {target.describe()}")
        files[p.filename] = {"origin": "built-from-sdist" if p.local else "index", "expect": p.sha256}
    extra = _download_unresolved(python, target, unresolved, wheels)
    files.update({name: {"origin": "index, without its dependencies"} for name in extra})
    return {"lock_sha256": sha256(lock),
            "wheels": sorted([p.filename for p in kept.values()] + extra + ([proj.name] if proj else []),
                             key=str.lower),
            "left_out": sorted(f"{pkgs[n].name}=={pkgs[n].version}" for n in dropped)}


def _download_unresolved(python: str, target: Target, specs: list[str], wheels: Path) -> list[str]:
    """Download ``specs`` for ``target`` without their dependencies; the wheels' file names."""
    names = []
    for spec in specs:
        with tempfile.TemporaryDirectory() as tmp:
            _check(_pip(python, ["download", "--no-deps", "-q", "-d", tmp, *target.pip_args(), spec]),
                   f"downloading {spec}")
            got = [p for p in Path(tmp).iterdir() if wheel_fits(p.name, target)]
            if len(got) != 1:
                raise BundleError(f"{spec}: expected one wheel for {target.describe()}, got {len(got)}")
            shutil.move(str(got[0]), wheels / got[0].name)
            names.append(got[0].name)
    return names


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)
