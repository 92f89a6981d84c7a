"""What a suite run reports: ``SuiteListener`` events while it runs (a view renders them) and the
``SuiteSummary`` it returns. Shared by both executors (``execute``: serial; ``distributed``: Ray)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from ptq_deploy.suite.plan import PlannedStep


class SuiteSummary(BaseModel):
    schema_version: int = 1
    kind: Literal["suite"] = "suite"
    experiment: str
    results_dir: str
    steps: list[PlannedStep]
    wall_time_s: float

    @property
    def failed(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.state == "failed"]


class SuiteListener:
    """The runner's events; a view overrides what it shows (this base shows nothing)."""

    def on_start(self, title: str, steps: list[PlannedStep]) -> None:
        """Before the first step: the whole plan."""

    def on_step_start(self, step: PlannedStep, elapsed_s: float) -> None:
        """A step starts (its state is ``running``)."""

    def on_step_end(self, step: PlannedStep, elapsed_s: float) -> None:
        """A step ended: ``ok`` or ``failed``, with its duration and reason."""

    def on_finish(self, elapsed_s: float) -> None:
        """After the last step, also after an interruption."""
