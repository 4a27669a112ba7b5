"""A monitor's checkpointed state: its key in the checkpoint and what it saves and restores (:class:`MonitorState`)."""

from __future__ import annotations

import inspect
from typing import Any

from typing_extensions import override

__all__ = ["MonitorState"]


class MonitorState:
    """Mixin of :class:`~lightning_regs.callbacks.ScheduledMonitor`: ``state_key``, ``state_dict`` and its restore.

    The state holds the plan (steps or epochs, points per set, run length, planned share), the measured and skipped
    steps, the history and the points, in tensors and builtins only, so a resumed run measures the same points at
    the same steps.
    """

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self.state_key_fields())

    def state_key_fields(self) -> dict[str, Any]:
        """What tells two monitors of one class apart in a checkpoint; extend it in subclasses.

        ``prefix`` and ``heldout_split`` count only when not at their defaults: a monitor at its defaults keeps
        the shortest key.
        """
        fields: dict[str, Any] = {}
        if self.prefix != type(self)._default("prefix"):
            fields["prefix"] = self.prefix
        if self.heldout_split != "val":
            fields["heldout_split"] = self.heldout_split
        return fields

    @classmethod
    def _default(cls, name: str) -> Any:
        return inspect.signature(cls.__init__).parameters[name].default

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "epochs": list(self.epochs),
            "points_per_set": self.points_per_set,
            "total_steps": self.total_steps,
            "planned_overhead": self.planned_overhead,
            "measured_steps": list(self.measured_steps),
            "skipped_steps": list(self.skipped_steps),
            "history": {name: list(values) for name, values in self.history.items()},
            "points": dict(self.points),
            "seed": self.seed,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state_dict.get("steps", [])]
        self.epochs = [int(e) for e in state_dict.get("epochs", [])]
        self.points_per_set = state_dict.get("points_per_set")
        self.total_steps = state_dict.get("total_steps")
        self.planned_overhead = state_dict.get("planned_overhead")
        self.measured_steps = [int(s) for s in state_dict.get("measured_steps", [])]
        self.skipped_steps = [int(s) for s in state_dict.get("skipped_steps", [])]
        self.history = {name: [float(v) for v in values] for name, values in state_dict.get("history", {}).items()}
        self.points = dict(state_dict.get("points", {}))
