"""``ptq-deploy quicklook``: the embedded model prepared, compressed and generated from in vLLM, in minutes."""

from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from ptq_deploy import engine
from ptq_deploy.checkpoint import METADATA_FILE
from ptq_deploy.compress import CalibrationSettings, CompressConfig, compress, schemes
from ptq_deploy.models import DEFAULT_MODEL, resolve
from ptq_deploy.ui import console, out

EMBEDDED_GROUP = 64  # the embedded model's hidden size, 576, is not a multiple of 128
PROMPTS = ["The capital of France is", "Elizabeth Bennet walked into the drawing room and"]


def run_quicklook(workdir: Path, scheme_names: list[str], num_samples: int, max_seq_len: int,
                  compress_python: str | None = None) -> list[dict]:
    src = resolve(DEFAULT_MODEL)
    console.rule(f"[bold]embedded model[/bold]: {src.origin} -> {src.path}")
    variants = [("BF16 (source)", Path(src.path))]
    for name in scheme_names:
        target = workdir / DEFAULT_MODEL / name
        if (target / METADATA_FILE).is_file():
            console.print(f"[dim]{name}: reusing {target} (delete it to recompress)[/dim]")
        else:
            console.rule(f"compress {name}")
            compress(CompressConfig(model=DEFAULT_MODEL, scheme=name, output=target, group_size=EMBEDDED_GROUP
                                    if schemes.get(name).group_adjustable else None,
                                    calibration=CalibrationSettings(num_samples=num_samples, max_seq_len=max_seq_len),
                                    compress_python=compress_python))
        variants.append((name, target))
    rows, base_ids = [], None
    for name, path in variants:
        console.rule(f"vLLM: {name}")
        t0 = time.perf_counter()
        llm, info = engine.load(path, engine.EngineConfig(max_model_len=1024))
        gens = engine.generate(llm, PROMPTS, max_tokens=24)
        engine.shutdown(llm)
        ids = [g.token_ids for g in gens]
        if base_ids is None:
            base_ids = ids
        agree = sum(a == b for x, y in zip(ids, base_ids) for a, b in zip(x, y)) / max(1, sum(map(len, base_ids)))
        rows.append({"variant": name, "quantization": info.quantization or "none", "dtype": info.dtype,
                     "load_s": info.load_time_s, "total_s": time.perf_counter() - t0,
                     "agreement": agree, "text": gens[0].prompt + gens[0].text})
    t = Table(title=f"{DEFAULT_MODEL}: greedy generation in vLLM ({PROMPTS[0]!r})")
    for c in ("variant", "vLLM quantization", "compute dtype", "load s", "token agreement vs BF16", "output"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["variant"], r["quantization"], r["dtype"], f"{r['load_s']:.1f}", f"{r['agreement']:.0%}",
                  r["text"].replace("\n", " "))
    out.print(t)
    return rows
