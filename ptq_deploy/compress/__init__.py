"""compress: a Hugging Face causal LM -> a vLLM-loadable compressed-tensors checkpoint.

``compress(CompressConfig) -> CompressResult``. The heavy lifting (llmcompressor ``oneshot``, or
``fakequant`` for the quality-only POT / APOT schemes) runs in the compress environment: in-process when
llmcompressor is importable here, otherwise in a child of that environment's compress server (``_Server``: one
per process, its libraries imported once), whose progress streams to this terminal. The output is written to a
temporary sibling directory and renamed into place only on success.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ptq_deploy import environments
from ptq_deploy.checkpoint import CheckpointMetadata, model_name_of_source
from ptq_deploy.checkpoint.architecture import module_tree
from ptq_deploy.compress import schemes, worker
from ptq_deploy.compress.config import CalibrationSettings as CalibrationSettings  # the package's API
from ptq_deploy.compress.config import CompressConfig, WorkerJob, WorkerResult
from ptq_deploy.engine import memory
from ptq_deploy.errors import PtqError, UsageError
from ptq_deploy.models import DEFAULT_MODEL, ModelSource, hub_unavailable, resolve, shipped_config
from ptq_deploy.results import Identity, ResultEnvelope, check_output_dir, replace_dir, temp_sibling
from ptq_deploy.results.envelope import v1_identity
from ptq_deploy.timeutil import timestamp


class CompressResult(ResultEnvelope):
    """What ``compress`` did: the checkpoint's metadata (also its ``ptq_deploy.json``), time and memory."""

    kind: Literal["compress"] = "compress"
    checkpoint: CheckpointMetadata
    calibration_time_s: float
    peak_rss_bytes: int
    peak_gpu_bytes: int | None
    checkpoint_bytes: int
    config: CompressConfig
    reused_from: str | None = None  # a suite reused this earlier compression's checkpoint (suite.reuse)

    @classmethod
    def _upgrade_v1(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["checkpoint"] = {k: data.get(k) for k in ("scheme", "description", "group_size", "kv_cache", "source",
                                                         "calibration", "recipe", "provenance")}
        cfg = data.get("config") or {}
        cfg["calibration"] = {k: cfg.pop(k) for k in ("dataset", "num_samples", "max_seq_len", "seed") if k in cfg}
        source = data.get("source") or {}
        name = DEFAULT_MODEL if source.get("kind") == "embedded" else Path(source.get("spec") or "?").name
        return v1_identity(data, name, data.get("scheme"), data.get("output"), data.get("kv_cache"))


class CompressPlan(BaseModel):
    config: CompressConfig
    scheme: schemes.Scheme
    resolved: schemes.ResolvedRecipe
    source: ModelSource
    linear_layers: int

    def describe(self) -> str:
        cal = self.config.calibration
        calib = (f"{cal.dataset} x{cal.num_samples} @ {cal.max_seq_len} tokens" if self.resolved.needs_calibration
                 else "none")
        return (f"plan: {self.scheme.name} on {self.source.spec} ({self.source.kind}: {self.source.path}), "
                f"{self.linear_layers} linear layers, calibration: {calib}, kv-cache: {self.config.kv_cache} "
                f"-> {self.config.output}")


def _scheme_for(cfg: CompressConfig) -> schemes.Scheme:
    if cfg.recipe_file is not None:
        return schemes.from_recipe_file(cfg.recipe_file)
    return schemes.get(cfg.scheme)


def linear_input_sizes(source: ModelSource, trust_remote_code: bool = False) -> dict[str, int]:
    """``{module name: in_features}`` of every nn.Linear, from the config alone (``checkpoint.architecture``);
    for a hub model the hub cannot serve, from the copy of its config shipped in ``data/model_configs``."""
    shipped = shipped_config(source.spec) if source.kind == "hub" else None
    offline = source.kind == "hub" and hub_unavailable(source.spec, source.revision or "main")
    if offline and shipped is None:
        raise UsageError(f"cannot read model config of {source.spec}: {offline}")
    config, path = shipped, None
    if not offline:
        try:
            config, path = _config_of(source, trust_remote_code), source.path
        except Exception as e:
            if shipped is None:
                raise UsageError(f"cannot read model config of {source.spec}: {str(e).splitlines()[0]}") from None
    tree = module_tree(config, path, trust_remote_code)
    if tree is None:
        raise UsageError(f"transformers cannot build {config.get('architectures') or config.get('model_type')} "
                         f"of {source.spec} from its config")
    return tree.linear_input_sizes()


def _config_of(source: ModelSource, trust_remote_code: bool) -> dict:
    """config.json of a local model; a hub model's through transformers (its cache, else the hub)."""
    local = Path(source.path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.path, revision=source.revision,
                                      trust_remote_code=trust_remote_code).to_dict()


def plan(cfg: CompressConfig) -> CompressPlan:
    """Validate everything cheap before any minutes are spent: scheme, output, model, group size."""
    scheme = _scheme_for(cfg)
    if not cfg.dry_run:
        check_output_dir(cfg.output, cfg.force)
    source = resolve(cfg.model, revision=cfg.revision)
    sizes = linear_input_sizes(source, cfg.trust_remote_code)
    if cfg.group_size is not None and scheme.group_size is not None:  # the sizes that fit, before resolving
        schemes.check_group_size(sizes, scheme.resolve(kv_cache=cfg.kv_cache).ignore, cfg.group_size)
    resolved = scheme.resolve(group_size=cfg.group_size, kv_cache=cfg.kv_cache,
                              modifier_args=cfg.calibration.modifier_args)
    if resolved.recipe is not None or resolved.fake_quant is not None:
        schemes.check_group_size(sizes, resolved.ignore, resolved.group_size)
    return CompressPlan(config=cfg, scheme=scheme, resolved=resolved, source=source, linear_layers=len(sizes))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def compress(cfg: CompressConfig, the_plan: CompressPlan | None = None) -> CompressResult | CompressPlan:
    """Run a compression. Returns the :class:`CompressPlan` alone for ``dry_run``."""
    p = the_plan or plan(cfg)
    if cfg.dry_run:
        return p
    out = Path(cfg.output)
    started = timestamp()
    work = temp_sibling(out)
    job = WorkerJob(
        source=p.source, scheme=p.scheme.name, recipe=p.resolved.recipe, kv_cache=cfg.kv_cache,
        needs_calibration=p.resolved.needs_calibration, calibration=cfg.calibration,
        trust_remote_code=cfg.trust_remote_code,
        calibration_dtype=cfg.calibration_dtype, device_map=cfg.device_map, pipeline=cfg.pipeline,
        sequential_targets=cfg.sequential_targets, threads=cfg.threads, work_dir=work,
        fake_quant=p.resolved.fake_quant,
    )
    try:
        wres = _run_worker(job, cfg.compress_python)
        if not wres.ok:
            raise PtqError(wres.error or "compression failed", exit_code=wres.exit_code or 1)
        meta = CheckpointMetadata(scheme=p.scheme.name, description=p.scheme.description,
                                  group_size=p.resolved.group_size, kv_cache=cfg.kv_cache, source=p.source,
                                  calibration=wres.calibration, recipe=p.resolved.recipe, provenance=wres.provenance,
                                  fake_quant=wres.fake_quant)
        meta.write(work)
        result = CompressResult(
            identity=Identity(model=model_name_of_source(p.source), scheme=p.scheme.name, kv_cache=cfg.kv_cache,
                              checkpoint=str(out.resolve())),
            started_at=started, wall_time_s=wres.wall_time_s, provenance=wres.provenance, checkpoint=meta,
            calibration_time_s=wres.calibration_time_s, peak_rss_bytes=wres.peak_rss_bytes,
            peak_gpu_bytes=wres.peak_gpu_bytes, checkpoint_bytes=_dir_bytes(work), config=cfg)
        replace_dir(work, out)  # --force: the old checkpoint goes only now that the new one is complete
        return result
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _run_worker(job: WorkerJob, python: str | None) -> WorkerResult:
    if python is None and environments.in_role("compress") and not environments.env_python("compress").exists():
        return worker.run(job)
    try:
        py = environments.resolve_python("compress", python)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="ptq-compress-") as tmp:
        job_file, res_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(job.model_dump_json())
        env = environments.subprocess_env()
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spin-waiting threads on a busy CPU
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env_file = Path(tmp) / "env.json"
        env_file.write_text(json.dumps(env))
        try:
            code = _Server.get(str(py), env).run(job_file, res_file, env_file)
        except KeyboardInterrupt:
            _Server.close()
            raise PtqError("compression interrupted; nothing was written to the output", exit_code=130) from None
        if res_file.exists():
            return WorkerResult.model_validate_json(res_file.read_text())
        return WorkerResult(ok=False, exit_code=code or 1,
                            error=f"compress worker exited with code {code} without a result "
                                  f"(killed? out of memory? try a smaller --num-samples/--max-seq-len)")


# environment variables the compress libraries read when they are imported (the server's), not when a job runs (a
# child's, which gets the caller's whole environment of the moment): a change to one starts a new server
IMPORT_TIME_ENV = ("PYTHON", "LD_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "CUDA_", "OMP_", "MKL_", "KMP_",
                   "TOKENIZERS_")


class _Server:
    """The compress environment's ``python -m ptq_deploy.compress --serve``: it imports llmcompressor and its
    libraries once (~8 s on the 2-core CPU) and runs each job in a forked child, so a run's second compression
    starts at once. One per process, kept while its interpreter and import-time environment stay the same; it
    dies with this process and holds no memory a measurement here counts (``memory.exclude``)."""

    _current: "_Server | None" = None
    _lock = threading.Lock()

    @staticmethod
    def _key(python: str, env: dict[str, str]) -> tuple:
        return python, sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME_ENV))

    def __init__(self, python: str, env: dict[str, str]):
        self.key = self._key(python, env)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen([python, "-m", "ptq_deploy.compress", "--serve", str(theirs.fileno())],
                                         stdin=subprocess.DEVNULL, env=env, pass_fds=(theirs.fileno(),),
                                         preexec_fn=environments.die_with_parent)  # no orphan if we are killed
        finally:
            theirs.close()
        memory.exclude(self.proc.pid)

    @classmethod
    def get(cls, python: str, env: dict[str, str]) -> "_Server":
        with cls._lock:
            cur = cls._current
            if cur is None or cur.key != cls._key(python, env) or cur.proc.poll() is not None:
                cls.close()
                cls._current = cls(python, env)
            return cls._current

    @classmethod
    def close(cls) -> None:
        cur, cls._current = cls._current, None
        if cur is not None:
            with contextlib.suppress(Exception):
                cur.proc.kill()
                cur.proc.wait(timeout=10)
            cur.sock.close()

    def run(self, job_file: Path, res_file: Path, env_file: Path) -> int:
        """The job's exit code (its child's), once it has ended; the child writes to this process's stdout and
        stderr as they are now (a run's step log, when the step redirects them)."""
        with self._lock:
            try:
                socket.send_fds(self.sock, [f"{job_file}\t{res_file}\t{env_file}".encode()], [1, 2])
                reply = self.sock.recv(64)
            except OSError:  # the server itself died
                reply = b""
            if not reply:
                code = self.proc.wait()
                _Server.close()
                return code or 1
            return int(reply)
