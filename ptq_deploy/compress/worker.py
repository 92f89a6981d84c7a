"""The compress-environment side of ``compress``: llmcompressor ``oneshot`` (or ``fakequant`` for POT /
APOT) on a resolved job.

Run by the CLI as ``python -m ptq_deploy.compress --serve FD`` (:func:`serve`: the compress libraries imported
once, then one forked child per job), as ``python -m ptq_deploy.compress JOB.json RESULT.json`` (one job), or
in-process via :func:`run` when llmcompressor is importable. Writes the checkpoint into ``job.work_dir``; the
caller renames it into place.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from ptq_deploy.compress.config import WorkerJob, WorkerResult
from ptq_deploy.engine.memory import PeakSampler
from ptq_deploy.environments import die_with_parent
from ptq_deploy.errors import PtqError


def _cpu_settings(job: WorkerJob) -> None:
    """Thread settings for CPU calibration.

    Measured on a 2-core box with other work running: GPTQ on SmolLM2-135M took 86 s with one
    torch thread and did not finish in 10 min with two (OpenMP threads spin-waiting for a busy
    core). Default: half the cores; ``--threads`` or OMP_NUM_THREADS override.
    """
    import torch

    if torch.cuda.is_available():
        return
    if job.threads:
        torch.set_num_threads(job.threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))


def _guard_awq_without_accelerator() -> None:
    """llmcompressor's AWQ pins cached activations, which needs an accelerator; skip it on CPU."""
    import torch

    if torch.accelerator.is_available():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *a, **k: None


def uses_autoround(recipe) -> bool:
    """Does the recipe (any stage) run llmcompressor's AutoRoundModifier?"""
    if isinstance(recipe, dict):
        return "AutoRoundModifier" in recipe or any(uses_autoround(v) for v in recipe.values())
    if isinstance(recipe, list):
        return any(uses_autoround(v) for v in recipe)
    return False


def pack_equal_length(ids: list[list[int]], seq_len: int, eos: int | None) -> list[list[int]]:
    """The calibration token streams, EOS between texts, cut into chunks of one length (no padding).

    llmcompressor 0.14's AutoRoundModifier right-pads samples of different lengths with zero hidden states and
    hands auto-round validity masks that auto-round 0.15 never reads: the tuning loss then scores the pad
    positions, where the block's quantized-input chain and the zero-padded reference disagree by orders of
    magnitude more than the quantization error, and the tuned rounding ruins the model (SmolLM2-135M: word
    perplexity 1543 against GPTQ's 219; docs/results.md). Samples of one length are never padded. The chunk
    length is ``seq_len``, or the whole stream's when that is shorter; the tail short of a chunk is dropped.
    """
    stream = [t for x in ids for t in (x + [eos] if eos is not None else x)]
    n = min(seq_len, len(stream))
    return [stream[i:i + n] for i in range(0, len(stream) - n + 1, n)] if n else []


def _dtype(job: WorkerJob):
    import torch

    if job.calibration_dtype != "auto":
        return getattr(torch, job.calibration_dtype)
    # bf16 GEMMs fall back to ~1 GFLOP/s torch kernels on CPUs without AVX-512: calibrate in fp32.
    return "auto" if torch.cuda.is_available() else torch.float32


def _compress(job: WorkerJob) -> WorkerResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptq_deploy.data import calibration_texts
    from ptq_deploy.provenance import collect
    from ptq_deploy.ui import console, status

    t0 = time.perf_counter()
    log = _log_path()
    # llmcompressor's per-module INFO lines go to a log file; the console keeps warnings + progress bars
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    os.environ.setdefault("LLM_COMPRESSOR_LOG_FILE", str(log))
    os.environ.setdefault("LLM_COMPRESSOR_LOG_FILE_LEVEL", "INFO")
    cal = job.calibration
    torch.manual_seed(cal.seed)
    _cpu_settings(job)
    src = job.source
    with status(f"loading {src.spec}"):
        tokenizer = AutoTokenizer.from_pretrained(src.path, revision=src.revision,
                                                  trust_remote_code=job.trust_remote_code)
        load_dtype = torch.bfloat16 if job.recipe is None and job.fake_quant is None else _dtype(job)
        model = AutoModelForCausalLM.from_pretrained(
            src.path, revision=src.revision, dtype=load_dtype, device_map=job.device_map,
            trust_remote_code=job.trust_remote_code)
    console.print(f"[green]loaded[/green] {src.spec} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
                  f"params, {model.dtype}) in {time.perf_counter() - t0:.1f} s")
    calib_info, t_cal, fake = None, 0.0, None
    if job.fake_quant is not None:
        from ptq_deploy.compress.fakequant import quantize_model

        t1 = time.perf_counter()
        with status(f"{job.scheme}: snapping weights to the {job.fake_quant.method.upper()} grid"):
            fake = quantize_model(model, job.fake_quant)
        t_cal = time.perf_counter() - t1
        console.print(f"[bold]{job.scheme}[/bold]: {fake.describe()}: {fake.layers} Linear layers, "
                      f"{fake.params / 1e6:.1f}M weights, relative weight error {fake.weight_rel_error:.4f}, "
                      f"{fake.bits_per_weight:.3f} bits/weight, in {t_cal:.1f} s")
        model.to(torch.bfloat16)  # scales are bfloat16-exact: the checker recovers them from the stored values
    if job.recipe is not None:
        import yaml
        from datasets import Dataset
        from llmcompressor import oneshot

        _guard_awq_without_accelerator()
        dataset = None
        if job.needs_calibration:
            texts, calib_info = calibration_texts(cal.dataset, cal.num_samples, cal.max_seq_len, cal.seed,
                                                  tokenizer)
            ids = tokenizer(texts, max_length=cal.max_seq_len, truncation=True, add_special_tokens=False)["input_ids"]
            packed = ""
            if uses_autoround(job.recipe):
                ids = pack_equal_length(ids, cal.max_seq_len, tokenizer.eos_token_id)
                shape = (len(ids), len(ids[0]) if ids else 0)
                calib_info = calib_info.model_copy(update={"packed": shape})
                packed = f", packed into {shape[0]} x {shape[1]} tokens for AutoRound"
            dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
            console.print(f"calibration: {calib_info.num_samples} samples from {cal.dataset}, "
                          f"{sum(map(len, ids))} tokens (max {cal.max_seq_len}/sample){packed}")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(job.recipe, f, sort_keys=False)
            recipe_path = f.name
        kwargs = {}
        if job.pipeline:
            kwargs["pipeline"] = job.pipeline
        if job.sequential_targets:
            kwargs["sequential_targets"] = job.sequential_targets
        t1 = time.perf_counter()
        console.print(f"[bold]{job.scheme}[/bold]: running llmcompressor oneshot "
                      f"({'with' if dataset is not None else 'without'} calibration; log: {log})")
        try:
            oneshot(model=model, recipe=recipe_path, dataset=dataset, tokenizer=tokenizer,
                    num_calibration_samples=cal.num_samples, max_seq_length=cal.max_seq_len,
                    shuffle_calibration_samples=False, **kwargs)
        finally:
            os.unlink(recipe_path)
        t_cal = time.perf_counter() - t1
        if model.dtype != torch.bfloat16 and load_dtype == torch.float32 and job.calibration_dtype == "auto":
            model.to(torch.bfloat16)  # calibrated in fp32 for CPU speed; ship the usual bf16 checkpoint
    with status(f"saving to {job.work_dir}"), warnings.catch_warnings():
        # llmcompressor's dispatch maps the whole model to "cpu", which transformers reads as offloaded and
        # warns about a 50 GB shard on every save; the model is in this process's memory, nothing is offloaded
        warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
        job.work_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(job.work_dir, save_compressed=True)
        tokenizer.save_pretrained(job.work_dir)
    console.print(f"[green]saved[/green] in {time.perf_counter() - t0:.1f} s total")
    gpu_peak = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return WorkerResult(ok=True, calibration=calib_info, wall_time_s=time.perf_counter() - t0,
                        calibration_time_s=t_cal, peak_gpu_bytes=gpu_peak, provenance=collect(), fake_quant=fake)


def _log_path() -> Path:
    from ptq_deploy.environments import home

    d = home() / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"compress-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def run(job: WorkerJob) -> WorkerResult:
    """Never raises: every failure becomes a one-line error in the result (traceback in a log)."""
    import torch

    try:
        if torch.cuda.is_available():  # the peak of this run, not of what ran before it in this process
            torch.cuda.reset_peak_memory_stats()
        with PeakSampler(interval_s=0.2, high_water_mark=True) as peak:
            res = _compress(job)
        res.peak_rss_bytes = peak.peak_rss
        return res
    except PtqError as e:
        return WorkerResult(ok=False, error=str(e), exit_code=e.exit_code)
    except (torch.OutOfMemoryError, MemoryError):
        return WorkerResult(ok=False, exit_code=5, error=(
            "out of memory during compression; lower --num-samples / --max-seq-len, or pass "
            "--device-map auto to offload"))
    except KeyboardInterrupt:
        return WorkerResult(ok=False, exit_code=130, error="compression interrupted")
    except Exception as e:
        log = _log_path()
        log.write_text(traceback.format_exc())
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "trac" in msg.lower() or "torch.fx" in traceback.format_exc():
            msg = f"llmcompressor could not trace this model architecture ({msg}); try --pipeline basic"
        return WorkerResult(ok=False, exit_code=1, error=f"{type(e).__name__}: {msg} (traceback: {log})")


# what a job imports, imported once by the serving process (~8 s here) so that its forked children start warm; not
# ptq_deploy.ui, whose consoles take their width and colours from the terminal of the moment (a child's)
PRELOAD = ("torch", "transformers", "datasets", "compressed_tensors", "llmcompressor", "rich.console",
           "rich.progress", "ptq_deploy.data", "ptq_deploy.provenance")


CUDA_ERROR_NOT_INITIALIZED = 3


def cuda_driver_initialized() -> bool:
    """Whether this process has initialized the CUDA driver (``cuInit``), after which a forked child cannot use
    CUDA. Asked of the driver without initializing it: ``cuDeviceGetCount`` answers CUDA_ERROR_NOT_INITIALIZED
    before ``cuInit``. False where there is no driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return cuda.cuDeviceGetCount(ctypes.byref(ctypes.c_int())) != CUDA_ERROR_NOT_INITIALIZED


def _fresh_child() -> None:  # a job's own interpreter: Ctrl-C reaches it (this loop ignores it), dies with us
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()


def serve(sock_fd: int) -> int:
    """Take jobs on the socket ``sock_fd`` (``JOB.json<TAB>RESULT.json<TAB>ENV.json``, with the caller's stdout and
    stderr attached); run each in a child forked from this process (which has imported ``PRELOAD``), one at a
    time, writing to those two and with the caller's environment of the moment (``ENV.json``); answer each with
    the child's exit code. Ends when the caller closes its end.

    A child is a fresh process for all a job measures (its own peak RSS, CUDA state, OpenMP threads: none ran
    here) but skips the imports. Ctrl-C reaches the child (the job ends "interrupted"), not this loop; the
    child dies with this process, this process with the one that started it (``PR_SET_PDEATHSIG``).

    CUDA does not survive a fork: torch is asked about GPUs through NVML while the libraries load, and if the CUDA
    driver was initialized all the same (:func:`cuda_driver_initialized`), each job runs in a fresh interpreter."""
    import importlib
    import socket

    sock = socket.socket(fileno=sock_fd)
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # torch.cuda.is_available() without cuInit
    for name in PRELOAD:
        importlib.import_module(name)
    fork = not cuda_driver_initialized()
    if not fork:
        print("[ptq-deploy] the compress libraries initialized CUDA on import: each compression starts a fresh "
              "interpreter", file=sys.stderr, flush=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 65536, 2)
        if not msg:
            return 0
        job_file, res_file, env_file = msg.decode().split("\t")
        if not fork:
            code = subprocess.run([sys.executable, "-m", "ptq_deploy.compress", job_file, res_file],
                                  stdin=subprocess.DEVNULL, stdout=fds[0], stderr=fds[1],
                                  env=json.loads(Path(env_file).read_text()), preexec_fn=_fresh_child).returncode
            for fd in fds:
                os.close(fd)
            sock.send(str(code).encode())
            continue
        pid = os.fork()
        if pid == 0:  # the job's process
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                die_with_parent()
                sock.close()
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                os.environ.clear()
                os.environ.update(json.loads(Path(env_file).read_text()))
                code = main([job_file, res_file])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        sock.send(str(os.waitstatus_to_exitcode(status)).encode())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve":
        return serve(int(argv[1]))
    if len(argv) != 2:
        print("usage: python -m ptq_deploy.compress JOB.json RESULT.json | --serve FD", file=sys.stderr)
        return 2
    job = WorkerJob.model_validate_json(Path(argv[0]).read_text())
    res = run(job)
    Path(argv[1]).write_text(res.model_dump_json())
    return 0 if res.ok else res.exit_code
