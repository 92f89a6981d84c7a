"""PerfResult: one versioned JSON per ``perf`` run (every figure with its n and spread)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ptq_deploy.engine import EngineInfo
from ptq_deploy.engine.config import nest_v1_fields
from ptq_deploy.perf.config import PerfConfig
from ptq_deploy.perf.memory import MemoryStats
from ptq_deploy.perf.offline import LatencyStats, ThroughputStats
from ptq_deploy.perf.roofline import Roofline
from ptq_deploy.perf.serving import ServingStats
from ptq_deploy.perf.workload import WorkloadInfo
from ptq_deploy.results import ResultEnvelope
from ptq_deploy.results.envelope import v1_identity
from ptq_deploy.stats import Summary


class LoadStats(BaseModel):
    engine_init_s: Summary | None  # in-process LLM(...) construction (also when another step loaded the engine)
    weights_load_s: float | None = None  # vLLM's "Loading weights took", in-process engine
    model_load_s: float | None = None  # vLLM's "Model loading took", in-process engine
    compile_time_s: float | None = None  # vLLM's torch.compile time during load (0/None in eager mode)
    compile_cache: str  # not used (eager mode) | warm (graphs loaded from cache) | cold (compiled) | unknown
    server: str = "see serving.server.startup_s / weights_load_s"


class PerfResult(ResultEnvelope):
    kind: Literal["perf"] = "perf"
    vllm_quantization: str | None  # the quantization method vLLM chose
    engine: EngineInfo | None  # resolved in-process engine settings (None when offline was skipped)
    config: PerfConfig
    workload: WorkloadInfo
    load: LoadStats | None
    memory: MemoryStats | None
    latency: LatencyStats | None
    throughput: ThroughputStats | None
    roofline: Roofline | None
    serving: ServingStats | None
    threads: dict[str, str | int | None] = {}  # torch threads / OMP_NUM_THREADS of the in-process engine

    @classmethod
    def _upgrade_v1(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["config"] = nest_v1_fields(data.get("config") or {})
        eng = data.get("engine")
        if eng and isinstance(eng.get("settings"), dict):
            eng["settings"]["gpus"] = eng.get("device") == "cuda"
        data.pop("output_path", None)
        return v1_identity(data, data.get("model"), data.get("scheme"), data.get("checkpoint"))
