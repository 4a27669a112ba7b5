"""A Lightning logger that records every ``log_metrics`` call, so tests can assert what was logged."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["RecordingLogger"]


class RecordingLogger(Logger):
    """Keeps ``(step, {name: value})`` for every call; nothing is written anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict[str, float]]] = []
        self.hyperparams: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hyperparams.update(dict(params) if not isinstance(params, dict) else params)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, {name: float(value) for name, value in metrics.items()}))

    def names(self) -> set[str]:
        """Every metric name logged so far."""
        return {name for _, metrics in self.logged for name in metrics}

    def series(self, name: str) -> list[float]:
        """The values logged under ``name``, in order."""
        return [metrics[name] for _, metrics in self.logged if name in metrics]
