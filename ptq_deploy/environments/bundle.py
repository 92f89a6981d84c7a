"""Offline bundles: the format, and the host side that installs one with no index.

A bundle is a directory: ``wheels/`` (every wheel both environments need on one target host, and
this project's own) and ``manifest.json`` (target, roles with their wheels and locks, each file's
size and sha256). ``split`` cuts the wheels into ``parts/part-NNN`` under a size limit, each part's
sha256 in the manifest, so a bundle can be carried in pieces; ``join`` rebuilds and verifies them.
``prepare`` + ``install_role`` install a role's wheels into a fresh venv with ``pip --no-index
--no-deps``. ``bundle_build`` makes bundles.

Stdlib-only: this runs on the target host's bare interpreter. Errors are one-line :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import site
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ptq_deploy.errors import BundleError

FORMAT = 1
MANIFEST = "manifest.json"
WHEELS = "wheels"
PARTS = "parts"
MIB = 1 << 20
CHUNK = 4 * MIB


def sha256(path: Path) -> str:
    """The file's SHA-256, hex (every file hash in the project)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".") if x.isdigit())


def offline_env() -> dict[str, str]:
    """This environment without pip's configuration and with no index: pip sees only what it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def write_manifest(directory: Path, manifest: dict) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, directory / MANIFEST)


def load_manifest(directory: Path) -> dict:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST} in {directory}: not a ptq-deploy bundle") from None
    except ValueError as e:
        raise BundleError(f"{directory / MANIFEST} is not valid JSON ({e})") from None
    if manifest.get("kind") != "ptq-deploy-bundle" or manifest.get("format") != FORMAT:
        raise BundleError(f"{directory / MANIFEST}: not a format-{FORMAT} ptq-deploy bundle manifest")
    return manifest


def _mismatch(path: Path, entry: dict) -> str | None:
    if not path.exists():
        return f"{path}: missing"
    if path.stat().st_size != entry["size"]:
        return f"{path}: {path.stat().st_size} bytes, the manifest says {entry['size']}"
    digest = sha256(path)
    if digest != entry["sha256"]:
        return f"{path}: sha256 {digest[:16]}... differs from the manifest's {entry['sha256'][:16]}..."
    return None


def verify(directory: Path, manifest: dict) -> None:
    """Every wheel present with the manifest's size and sha256, else one-line :class:`BundleError`."""
    for entry in manifest["files"]:
        problem = _mismatch(directory / WHEELS / entry["name"], entry)
        if problem:
            raise BundleError(problem + " (bundle altered or incompletely copied)")


def split(directory: Path, part_mib: float) -> list[dict]:
    """Cut the wheels, in manifest order, into ``parts/part-NNN`` of at most ``part_mib`` MiB each."""
    manifest = load_manifest(directory)
    verify(directory, manifest)
    limit = int(part_mib * MIB)
    if limit < 1:
        raise BundleError(f"part size must be positive, not {part_mib} MiB")
    parts_dir = directory / PARTS
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir()
    parts: list[dict] = []
    out, h, size = None, None, 0

    def close() -> None:
        out.close()
        parts.append({"name": Path(out.name).name, "size": size, "sha256": h.hexdigest()})

    for entry in manifest["files"]:
        with (directory / WHEELS / entry["name"]).open("rb") as src:
            while True:
                if out is None or size == limit:
                    if out is not None:
                        close()
                    out, h, size = (parts_dir / f"part-{len(parts):03d}").open("wb"), hashlib.sha256(), 0
                chunk = src.read(min(CHUNK, limit - size))
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
    if out is not None and size:
        close()
    elif out is not None:
        out.close()
        Path(out.name).unlink()
    manifest["parts"] = {"limit_bytes": limit, "files": parts}
    write_manifest(directory, manifest)
    return parts


def _part_chunks(parts_dir: Path, parts: list[dict]):
    for entry in parts:
        with (parts_dir / entry["name"]).open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


def join(directory: Path) -> dict:
    """Check every part against the manifest, rebuild ``wheels/`` from them and verify it."""
    manifest = load_manifest(directory)
    parts = (manifest.get("parts") or {}).get("files")
    if not parts:
        raise BundleError(f"{directory / MANIFEST} lists no parts: the bundle was not split")
    for entry in parts:
        problem = _mismatch(directory / PARTS / entry["name"], entry)
        if problem:
            raise BundleError(problem + " (copy that part again)")
    wheels = directory / WHEELS
    wheels.mkdir(exist_ok=True)
    stream, buf = _part_chunks(directory / PARTS, parts), b""
    for entry in manifest["files"]:
        need, tmp = entry["size"], wheels / (entry["name"] + ".part")
        with tmp.open("wb") as out:
            while need:
                buf = buf or next(stream, b"")
                if not buf:
                    raise BundleError(f"the parts end before {entry['name']} is complete")
                take = buf[:need]
                out.write(take)
                need -= len(take)
                buf = buf[len(take):]
        os.replace(tmp, wheels / entry["name"])
    verify(directory, manifest)
    return manifest


def check_host(target: dict) -> None:
    """Refuse, in one line, a bundle made for another Python, architecture, glibc or torch."""
    here = "%d.%d" % sys.version_info[:2]
    if here != target["python"]:
        raise BundleError(f"this bundle is for Python {target['python']}; {sys.executable} is {here}")
    if platform.machine() != target["arch"]:
        raise BundleError(f"this bundle is for {target['arch']}; this machine is {platform.machine()}")
    libc, version = platform.libc_ver()
    if libc == "glibc" and version_tuple(version) < version_tuple(target["glibc"]):
        raise BundleError(f"this bundle needs glibc >= {target['glibc']}; this machine has {version}")
    wanted = {name: None for name in target.get("exclude") or ()}
    if target.get("torch_present"):
        wanted["torch"] = target["torch_present"]
    for name, version in wanted.items():  # left out of the bundle: this interpreter must have them
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            found = None
        if found is None or (version and found.split("+")[0] != version):
            raise BundleError(f"this bundle expects {name} {version or ''} installed in {sys.executable} "
                              f"(left out of the bundle), found {found or 'none'}".replace("  ", " "))


def prepare(directory: Path) -> dict:
    """The verified manifest of the bundle in ``directory``, joined from its parts when needed."""
    manifest = load_manifest(directory)
    check_host(manifest["target"])
    wheels = directory / WHEELS
    if manifest.get("parts") and not all((wheels / e["name"]).exists() for e in manifest["files"]):
        return join(directory)
    verify(directory, manifest)
    return manifest


def install_role(directory: Path, manifest: dict, role: str, dest: Path, log: Path) -> Path:
    """Create ``dest`` as a fresh venv and install ``role``'s wheels from the bundle, never an index.

    When the bundle leaves packages out, the venv sees this interpreter's: its system site-packages,
    or, when this interpreter is itself a venv, its site-packages through a ``.pth`` file.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    target = manifest["target"]
    host = bool(target.get("torch_present") or target.get("exclude"))
    py = dest / "bin" / "python"
    _logged([sys.executable, "-m", "venv", *(["--system-site-packages"] if host else []), str(dest)], log,
            f"{role} environment from the bundle: creating the venv")
    if host and sys.prefix != sys.base_prefix:
        site_dir = dest / "lib" / f"python{target['python']}" / "site-packages"
        (site_dir / "_ptq_deploy_host.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _logged([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--find-links", str(directory / WHEELS),
             *(str(directory / WHEELS / n) for n in manifest["roles"][role]["wheels"])], log,
            f"{role} environment from the bundle: installing its wheels")
    return py


def _logged(cmd: list[str], log: Path, what: str) -> None:
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=offline_env()).returncode != 0:
            raise BundleError(f"{what} failed (log: {log})")


def stamp(directory: Path) -> dict:
    """What a bundle-installed environment records about its origin."""
    return {"bundle": str(directory.resolve()), "manifest_sha256": sha256(directory / MANIFEST),
            "python": "%d.%d" % sys.version_info[:2]}

