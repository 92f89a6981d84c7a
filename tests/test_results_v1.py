"""Results written before the envelope (schema version 1, a real tiny-model suite run by the previous
release) read back through the one union and render the same leaderboard numbers."""

import json
import shutil
from pathlib import Path

import pytest

from ptq_deploy.report import build_report
from ptq_deploy.report.kinds import read_result
from ptq_deploy.results import SCHEMA_VERSION

V1 = Path(__file__).parent / "data" / "results-v1"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(V1)) for p in V1.rglob("*.json") if p.name != "report-v1.json"))
def test_every_v1_file_reads_as_its_kind(path):
    res = read_result(V1 / path)
    assert res.schema_version == SCHEMA_VERSION and res.identity.model == "tiny"
    cell = Path(path).parts[2]
    assert res.identity.scheme == cell.split("+")[0]


def test_v1_results_render_the_same_leaderboard_numbers():
    import json

    old = {r["cell"]: r for lb in json.loads((V1 / "report-v1.json").read_text())["leaderboards"] for r in lb["rows"]}
    new = {r.cell: r.model_dump() for r in build_report(V1, min_recovery=0.99).rows()}
    assert set(new) == set(old) == {"BF16", "FP8-W8A8", "INT8-W8A16-RTN"}
    # every measured figure both report versions carry (the ranking rule and its columns changed since)
    numeric = [k for k, v in old["BF16"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k != "rank" and k in new["BF16"]]
    assert {"throughput_tok_s", "ppl", "acc_avg", "weights_gb", "compress_s", "speedup", "load_s"} <= set(numeric)
    for cell, row in old.items():
        for k in numeric:
            assert new[cell].get(k) == row.get(k), (cell, k)
        for task, ts in row["tasks"].items():
            common = [f for f in ("value", "stderr", "delta", "delta_stderr") if f in new[cell]["tasks"][task]]
            assert {f: new[cell]["tasks"][task][f] for f in common} == {f: ts[f] for f in common}, (cell, task)


def test_report_names_a_result_it_cannot_read(cli, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(V1, root)
    bad = root / "results" / "tiny" / "FP8-W8A8" / "eval.json"
    bad.write_text("{ cut short")
    p = cli("report", str(root), "-o", str(tmp_path / "r"), "--format", "md")
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("FP8-W8A8:"))
    assert f"eval: {bad} is not a ptq-deploy result" in line, line


def _renamed(src: Path, dst: Path, model: str) -> Path:
    """A copy of a results dir with its one model renamed (directories and the records' model fields)."""
    shutil.copytree(src, dst)
    for d in sorted(dst.rglob("tiny"), key=lambda p: -len(p.parts)):
        d.rename(d.with_name(model))
    for f in dst.rglob("*.json"):
        f.write_text(f.read_text().replace('"model": "tiny"', f'"model": "{model}"')
                     .replace("results/tiny/", f"results/{model}/"))
    return dst


def test_report_a_b_compares_conclusions_and_matches_cells_across_models(cli, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(V1, a)
    b = _renamed(V1, tmp_path / "b", "tiny-bigger")
    assert {r.model for r in build_report(b).rows()} == {"tiny-bigger"}
    p = cli("report", str(a), str(b), "--format", "md,json")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "compare_a_vs_b"  # beside A, not inside A's report folder
    assert sorted(f.name for f in out.iterdir()) == ["compare.json", "compare.md"] and not (a / "report").exists()
    comp = json.loads((out / "compare.json").read_text())
    cells = [r for r in build_report(a).rows() if not r.baseline]
    assert comp["matched_by"] == "cell" and not any(r["only_in"] for r in comp["rows"])
    assert comp["agreement"] == {"cells": len(cells), "same_verdict": len(cells), "same_quality": len(cells),
                                 "differ": {}}
    assert "the models differ (A: tiny, B: tiny-bigger): cells matched by scheme" in p.stdout
    assert f"conclusions: {len(cells)} of {len(cells)} schemes have the same verdict" in p.stdout
