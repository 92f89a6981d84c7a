"""Building offline bundles and the locks they come from, for another host (see ``bundle``).

``make_lock`` turns requirements into a complete lock for a :class:`Target`. ``build`` checks that
each role's lock is exactly what pip resolves for the target (``bundle_resolve``), downloads those
wheels and this project's own wheel into ``DIR/wheels`` and writes the manifest. Packages the host
already has (``--torch-present``: torch and what only torch needs; ``--exclude``) are left out.

Stdlib-only, like ``envs``.
"""

from __future__ import annotations

import shutil
import tempfile
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

from ptq_deploy.environments.bundle import FORMAT, WHEELS, sha256, write_manifest
from ptq_deploy.environments.resolve import (
    Pkg,
    Target,
    check_pip,
    left_out,
    norm,
    pip_version,
    resolve,
    run_pip,
    wheel_fits,
)
from ptq_deploy.errors import BundleError

PROJECT = "ptq-deploy"
PROJECT_FILES = ("pyproject.toml", "README.md", "ptq_deploy")
UNRESOLVED = "unresolved"  # a lock line's comment: install that pin without its dependencies


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
        check_pip(run_pip(python, ["wheel", "--no-deps", "-q", "-w", str(out), tmp]), "building the project wheel")
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
    optional = dropped - left_out(pkgs, target.host_roots())
    for label, names in (("Left out (present on the host already)", dropped - optional),
                         ("Left out (optional, not imported by this work; installed nowhere)", optional)):
        if names:
            lines += textwrap.wrap(f"{label}: " + ", ".join(
                sorted(f"{pkgs[n].name}=={pkgs[n].version}" for n in names)), 100,
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
    # the host's packages these roles resolved to: what the host must have (setup checks them there)
    resolved = {norm(spec.split("==")[0]) for r in roles.values() for spec in r["left_out"]}
    manifest = {"format": FORMAT, "kind": "ptq-deploy-bundle",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "pip_version": pip_version(python),
                "target": {**asdict(target), "exclude": [n for n in target.exclude if norm(n) in resolved],
                           "drop": list(target.drop)},
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
    check_pip(run_pip(python, ["download", "--no-deps", "-q", "-d", str(wheels), "--find-links", str(sdists),
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
            check_pip(run_pip(python, ["download", "--no-deps", "-q", "-d", tmp, *target.pip_args(), spec]),
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

