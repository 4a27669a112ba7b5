"""Small ScheduledMonitor subclasses the tests share."""

from __future__ import annotations

from lightning_regs.callbacks import ScheduledMonitor

__all__ = ["StepCounter"]


class StepCounter(ScheduledMonitor):
    """Measures the optimizer step itself: the history is the schedule that ran."""

    def prepare(self, trainer, pl_module):
        pass

    def cost_per_point(self):
        return 1.0

    def measure(self, trainer, pl_module):
        return {f"{self.prefix}/step": float(trainer.global_step)}

    def figure_spec(self):
        return "steps", self.history, "step", ""
