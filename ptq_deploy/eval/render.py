"""The console view of an ``EvalResult``: one row per task x metric, with recovery when there is a baseline."""

from __future__ import annotations

from rich.table import Table

from ptq_deploy.eval.result import EvalResult

COLOUR = {"regressed": "red", "improved": "green", "not distinguishable": "yellow", "unknown": "dim"}


def result_table(res: EvalResult) -> Table:
    rec = {(r.task, r.metric): r for r in res.recovery or []}
    t = Table(title=f"{res.identity.label} via lm-eval/{res.backend} "
                    f"({res.settings.dtype}, limit {res.settings.limit or 'none'})")
    cols = ("task", "metric", "value ± stderr", "n") + (("baseline", "delta (95% CI)", "recovery", "verdict") if rec else ())
    for c in cols:
        t.add_column(c, no_wrap=c in ("task", "metric"))
    for task, tr in res.tasks.items():
        for name, mv in tr.metrics.items():
            r = rec.get((task, name))
            val = f"{mv.value:.4g}" + (f" ± {mv.stderr:.2g}" if mv.stderr is not None else "")
            row = [task, name, val, str(tr.n_samples.get("effective", ""))]
            if rec:
                ci = (f"{r.delta:+.4g} ({r.ci95[0]:+.3g}, {r.ci95[1]:+.3g})" if r and r.ci95
                      else f"{r.delta:+.4g}" if r else "")
                colour = COLOUR.get(r.verdict, "") if r else ""
                row += [f"{r.baseline:.4g}" if r else "", ci,
                        f"{r.recovery:.1%}" if r and r.recovery is not None else "",
                        f"[{colour}]{r.verdict}[/{colour}]" if r else ""]
            t.add_row(*row)
    return t
