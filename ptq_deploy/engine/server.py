"""A ``vllm serve`` process on a loopback port, always stopped (process management only).

The server runs in its own session / process group (``start_new_session``) with
``PR_SET_PDEATHSIG`` so that it dies with us even if we are killed with SIGKILL. ``Server.stop``
(always reached: ``try/finally``, SIGTERM turned into an exception by ``sigterm_as_interrupt``)
terminates the whole group, then kills any descendant it saw that is still alive (vLLM's
EngineCore survives a crashed API server otherwise). A healthy server gets ``grace_s`` to finish what it
serves; one that never became healthy (Ctrl-C or a crash during start-up) has nothing to finish and gets
``STARTING_GRACE_S``: vLLM's processes ignore SIGTERM while they wait for each other's start-up handshake
(measured on the 2-core CPU: the whole 20 s grace before SIGKILL, against 0.4 s to stop a healthy server).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from ptq_deploy.engine import ResolvedEngine, serve_flags, vllm_cli
from ptq_deploy.engine.args import environment
from ptq_deploy.environments import die_with_parent
from ptq_deploy.errors import PtqError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STARTING_GRACE_S = 2.0  # SIGTERM to SIGKILL for a server that never became healthy


class Server:
    """A ``vllm serve`` subprocess; use as a context manager (``stop`` always runs)."""

    def __init__(self, cfg: ResolvedEngine, timeout_s: float = 600, log_path: Path | None = None):
        self.cfg, self.timeout = cfg, timeout_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._tmp = None
        if log_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ptq-serve-")
            log_path = Path(self._tmp.name) / "server.log"
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.seen: dict[int, float] = {}  # pid -> create_time of every descendant observed
        self.startup_s: float | None = None
        self._watch_stop = threading.Event()

    @property
    def command(self) -> list[str]:
        return [*vllm_cli.command(), "serve", self.cfg.model, "--host", "127.0.0.1", "--port", str(self.port),
                *serve_flags(self.cfg)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine core as usual
        env.update(environment(self.cfg, in_process=False))
        env["VLLM_LOGGING_LEVEL"] = "INFO"  # its load figures are read from the log
        # dev endpoints (bound to 127.0.0.1 only) for POST /reset_prefix_cache between warm-up and measurement
        env["VLLM_SERVER_DEV_MODE"] = "1"
        return env

    # ------------------------------------------------------------------ prefix cache
    def reset_prefix_cache(self, attempts: int = 20) -> bool:
        """Empty the server's prefix cache (fails while requests still hold blocks: retried)."""
        for _ in range(attempts):
            req = urllib.request.Request(self.base_url + "/reset_prefix_cache", method="POST", data=b"")
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    if json.loads(r.read() or b"{}").get("success", True):
                        return True
            except (OSError, ValueError):
                return False
            time.sleep(0.25)
        return False

    def prefix_cache_hits(self) -> int | None:
        """vLLM's ``vllm:prefix_cache_hits`` counter (prompt tokens served from cache), from /metrics."""
        try:
            with urllib.request.urlopen(self.base_url + "/metrics", timeout=10) as r:
                text = r.read().decode(errors="replace")
        except OSError:
            return None
        vals = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                if ln.startswith("vllm:prefix_cache_hits_total")]
        return int(sum(vals)) if vals else None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Server":
        self._log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env(), start_new_session=True, preexec_fn=die_with_parent)
        self._remember()
        threading.Thread(target=self._watch, daemon=True).start()
        self._wait_healthy(t0)
        return self

    def _remember(self):
        import psutil

        if self.proc is None:
            return
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self.seen.setdefault(p.pid, p.create_time())
        except psutil.Error:
            pass

    def _watch(self):
        while not self._watch_stop.wait(0.5):
            self._remember()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _error_line(self) -> str:
        lines = [ln for ln in self.log_tail(200).splitlines() if re.search(r"Error|error:|Exception", ln)]
        return (lines[-1].strip() if lines else self.log_tail(1).strip())[:300]

    def _wait_healthy(self, t0: float):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise PtqError(f"vllm serve exited with code {rc} before becoming healthy: {self._error_line()} "
                               f"(log: {self.log_path})")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = time.perf_counter() - t0
                        self._remember()
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise PtqError(f"vllm serve did not become healthy in {self.timeout:.0f} s (log: {self.log_path})")

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise PtqError(f"vllm serve died with code {self.proc.returncode}: {self._error_line()}")

    def descendants_alive(self) -> list[int]:
        """Processes we started (server and its children) that still exist."""
        import psutil

        alive = []
        for pid, ct in self.seen.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - ct) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.Error:
                continue
        return alive

    def stop(self, grace_s: float = 20):
        import psutil

        self._watch_stop.set()
        if self.proc is None:
            return
        if self.startup_s is None:  # never healthy: nothing in flight to finish
            grace_s = min(grace_s, STARTING_GRACE_S)
        self._remember()
        pgid = self.proc.pid  # start_new_session: the server leads its own process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        for pid in self.descendants_alive():  # anything that left the group
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).terminate()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.descendants_alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        for pid in self.descendants_alive():
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        # reap children of ours that were re-parented to us (none expected) and close the log
        with contextlib.suppress(Exception):
            self._log.close()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        return False


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt (so ``finally`` blocks run) while inside; main thread only.

    SIGINT gets its own handler too: with Python's default one, ``asyncio.run`` turns Ctrl-C into a
    cancellation of the benchmark task, and a client that absorbs the cancellation loses the Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
