"""Host-memory allocation for a vLLM engine on CPU.

vLLM's CPU guide asks for a caching allocator (tcmalloc in ``LD_PRELOAD``). Without one, glibc hands
every large tensor (a step's logits over the vocabulary, for one) its own ``mmap`` and unmaps it
when freed, so each engine step faults fresh zeroed pages in: measured on the 2-core AVX2 host,
three quarters of a scoring run's CPU time was the kernel's (``perf_results/cpu_heap_*.json``).
``engine_heap()`` makes glibc keep such memory in its heap instead (``mallopt``: no mmap, no trim)
for as long as an engine is loaded; ``release()`` restores glibc's settings and hands the freed
memory back (``malloc_trim``), so the next engine's measured footprint starts from a clean heap.
``PTQ_DEPLOY_ENGINE_HEAP=glibc`` leaves glibc's defaults alone (to measure the difference).
"""

from __future__ import annotations

import ctypes
import ctypes.util

from ptq_deploy.settings import settings

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_TOP_PAD: 128 * 1024, M_MMAP_MAX: 65536}
ENGINE_SETTINGS = {M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 256 << 20, M_MMAP_MAX: 0}
DESCRIPTION = ("glibc heap kept while the engine is loaded (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB, "
               "M_TOP_PAD=256 MiB)")

_depth = 0


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return None


def engine_heap(gpus: bool) -> str | None:
    """Keep freed memory in the heap while an engine runs on CPU; returns what was set (None: nothing)."""
    global _depth
    libc = None if gpus or settings().engine_heap == "glibc" else _libc()
    if libc is None:
        return None
    if _depth == 0:
        for k, v in ENGINE_SETTINGS.items():
            libc.mallopt(k, v)
    _depth += 1
    return DESCRIPTION


def current() -> str | None:
    """What ``engine_heap`` set, while it is in force."""
    return DESCRIPTION if _depth else None


def release() -> None:
    """The engine is gone: glibc's settings back, freed memory returned to the system."""
    global _depth
    if _depth == 0 or (libc := _libc()) is None:
        return
    _depth -= 1
    if _depth == 0:
        for k, v in GLIBC_DEFAULTS.items():
            libc.mallopt(k, v)
        libc.malloc_trim(0)
