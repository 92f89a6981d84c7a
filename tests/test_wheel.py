"""The built wheel carries the scheme registry, the bundled experiments and the seed models' configs (package
data, not the source tree): installed outside the checkout, it lists the checkout's schemes, loads the ready
experiment and reads a shipped model config."""

import subprocess
import sys
from pathlib import Path

from ptq_deploy.compress import schemes

REPO = Path(__file__).resolve().parent.parent


def test_installed_wheel_has_the_registry(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(REPO)], check=True, cwd=tmp_path)
    (whl,) = wheels.glob("ptq_deploy-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(whl)],
                   check=True, cwd=tmp_path)
    code = ("import ptq_deploy, ptq_deploy.compress.schemes as s, ptq_deploy.suite.experiment as e; "
            "import ptq_deploy.models as m; print(ptq_deploy.__file__); print(','.join(s.names())); "
            "print(e.load('smollm2-135m').name); print(m.shipped_config('facebook/opt-1.3b')['ffn_dim'])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    where, names, exp, ffn = p.stdout.split()
    assert where.startswith(str(site))  # the wheel's copy, not the checkout
    assert names.split(",") == schemes.names() and len(schemes.names()) == len(list(schemes.SCHEMES_DIR.glob("*.yaml")))
    assert exp == "smollm2-135m" and ffn == "8192"
