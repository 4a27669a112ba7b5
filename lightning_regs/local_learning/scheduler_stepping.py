"""LR schedulers under local learning's manual optimization, stepped as automatic optimization steps them
(:class:`LocalSchedulerStepping`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch.optim.lr_scheduler import ReduceLROnPlateau
from typing_extensions import override

__all__ = ["LocalSchedulerStepping"]

# Scheduler-dict keys that Lightning parses for automatic optimization only (it drops them, with a warning, under
# manual optimization); the mixin keeps them and steps ReduceLROnPlateau as automatic optimization would.
_PLATEAU_KEYS = ("reduce_on_plateau", "monitor", "strict")
# Checkpoint entry with the last values of the metrics ReduceLROnPlateau monitors (Lightning does not save logged
# metrics, and a checkpoint written at validation end resumes with that epoch's scheduler update still to do).
_MONITORED_KEY = "local_learning_monitored_metrics"
# Checkpoint entry with the scheduler updates still due when it was written (a plateau update after the step).
_PENDING_KEY = "local_learning_pending_updates"


def _split_plateau_keys(conf: Any) -> tuple[Any, dict[int, dict[str, Any]]]:
    """``configure_optimizers``' output without :data:`_PLATEAU_KEYS`, and those keys per scheduler (by ``id``)."""
    found: dict[int, dict[str, Any]] = {}

    def scheduler_entry(entry: Any, monitor: Any) -> Any:
        if isinstance(entry, Mapping) and "scheduler" in entry:
            found[id(entry["scheduler"])] = {key: entry[key] for key in _PLATEAU_KEYS if key in entry}
            return {key: value for key, value in entry.items() if key not in _PLATEAU_KEYS}
        if monitor is not None:  # a bare scheduler beside a top-level "monitor"
            found[id(entry)] = {"monitor": monitor}
        return entry

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            if "scheduler" in node:
                return scheduler_entry(node, None)
            if "lr_scheduler" in node:
                return {**node, "lr_scheduler": scheduler_entry(node["lr_scheduler"], node.get("monitor"))}
            return node
        if isinstance(node, (list, tuple)):
            return type(node)(walk(item) for item in node)
        return node

    return walk(conf), found


def _keeping_plateau_keys(configure: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(configure)
    def configure_optimizers(self: LocalSchedulerStepping, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_local_configuring", False):  # a super() call from an overriding configure_optimizers
            return configure(self, *args, **kwargs)
        self._local_configuring = True
        try:
            conf = configure(self, *args, **kwargs)
        finally:
            self._local_configuring = False
        conf, self._local_plateau_keys = _split_plateau_keys(conf)
        return conf

    configure_optimizers._keeps_plateau_keys = True  # type: ignore[attr-defined]
    return configure_optimizers


class LocalSchedulerStepping:
    """Mixin of :class:`~lightning_regs.local_learning.LocalLearningMixin` (before ``LightningModule`` in the bases):
    its LR schedulers.

    ``interval="step"`` schedulers advance after every ``frequency``-th optimizer step (counted by ``global_step``),
    ``interval="epoch"`` ones after every ``frequency``-th full epoch (before that epoch's validation), and
    ``ReduceLROnPlateau`` with the value of its ``monitor`` after the validation that follows its step or epoch; the
    host's ``configure_optimizers`` keeps the scheduler dict's ``monitor``, ``strict`` and ``reduce_on_plateau``
    (Lightning drops them under manual optimization). What a checkpoint needs to resume these updates is written
    and read by :meth:`_save_scheduler_state` and :meth:`_load_scheduler_state`.
    """

    # Set by the host's configure_local_learning (and restored from a checkpoint).
    _local_stepped: bool
    _local_epoch_finished: bool
    _local_batch_idx: int
    _local_monitored: dict[str, float]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Lightning drops a scheduler dict's "monitor"/"strict"/"reduce_on_plateau" under manual optimization;
        # wrapping the host's configure_optimizers keeps them (and spares the user Lightning's warning).
        configure = cls.configure_optimizers
        if configure is not pl.LightningModule.configure_optimizers and not hasattr(configure, "_keeps_plateau_keys"):
            cls.configure_optimizers = _keeping_plateau_keys(configure)  # type: ignore[method-assign]

    def _is_last_training_batch(self) -> bool:
        # The test of Lightning's own epoch-end scheduler update: the data ran out, or the epoch's batch limit
        # (limit_train_batches) is reached.
        trainer = self.trainer
        return bool(trainer.is_last_batch) or self._local_batch_idx + 1 >= trainer.num_training_batches

    def _lr_scheduler_configs(self) -> list[LRSchedulerConfig]:
        """Lightning's parsed scheduler configs, with the ReduceLROnPlateau settings automatic optimization has."""
        configs = self.trainer.lr_scheduler_configs
        if self.__dict__.get("_local_resolved_configs") is configs:  # resolved once per configure_optimizers
            return configs
        kept = getattr(self, "_local_plateau_keys", {})
        for config in configs:
            keys = kept.get(id(config.scheduler), {})
            config.reduce_on_plateau = keys.get("reduce_on_plateau", isinstance(config.scheduler, ReduceLROnPlateau))
            # Lightning's CLI ReduceLROnPlateau carries its monitor as an attribute.
            config.monitor = keys.get("monitor", getattr(config.scheduler, "monitor", None))
            config.strict = keys.get("strict", True)
            if config.reduce_on_plateau and config.monitor is None:
                raise MisconfigurationException(
                    f"{type(config.scheduler).__name__} needs a metric to monitor: return "
                    '{"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}} '
                    "from configure_optimizers."
                )
        self.__dict__["_local_resolved_configs"] = configs
        return configs

    def _step_lr_schedulers(self, interval: str, plateau: bool) -> None:
        """Step the configured schedulers of this ``interval`` and kind through :meth:`lr_scheduler_step`.

        ``interval="step"`` ones advance after every ``frequency``-th optimizer step (counted by
        ``global_step``), ``interval="epoch"`` ones after every ``frequency``-th epoch; ``ReduceLROnPlateau``
        gets the value of its ``monitor`` from ``trainer.callback_metrics``.
        """
        trainer = self.trainer
        for config in self._lr_scheduler_configs():
            if config.interval != interval or config.reduce_on_plateau != plateau:
                continue
            count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
            if count % config.frequency != 0:
                continue
            metric = None
            if config.reduce_on_plateau:
                # After a resume, the values saved with the checkpoint stand in for the logged ones until logged anew.
                metric = trainer.callback_metrics.get(config.monitor, self._local_monitored.get(config.monitor))
                if metric is None:
                    message = (
                        f"{type(config.scheduler).__name__} monitors {config.monitor!r}, which has not been logged "
                        f"before its {interval}-end update (logged metrics: {sorted(trainer.callback_metrics)}). "
                        f"Log {config.monitor!r} (for a validation metric, keep validation running before every "
                        "scheduler update), or set 'monitor' in configure_optimizers to one of the logged metrics."
                    )
                    if config.strict:
                        raise MisconfigurationException(message)
                    rank_zero_warn(f"{message} Skipping this update (strict=False).", category=RuntimeWarning)
                    continue
            self.lr_scheduler_step(config.scheduler, metric)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._local_batch_idx = batch_idx
        self._flush_step_plateau()

    def _flush_step_plateau(self) -> None:
        # Step-interval ReduceLROnPlateau updates once the step's metrics are logged and any validation that
        # followed the step has run (Lightning updates after its in-epoch validation too): at the next batch's
        # start, or at the epoch's end.
        if self._local_stepped:
            self._local_stepped = False
            self._step_lr_schedulers("step", plateau=True)

    @override
    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._flush_step_plateau()
        if self._local_epoch_finished:  # not when max_steps cut the epoch short, as Lightning
            # After validation, whose metrics ReduceLROnPlateau usually monitors.
            self._step_lr_schedulers("epoch", plateau=True)

    def _save_scheduler_state(self, checkpoint: dict[str, Any]) -> None:
        """Write the monitored metrics' last values and the updates still due into ``checkpoint``."""
        metrics = self.trainer.callback_metrics
        monitored = {config.monitor for config in self._lr_scheduler_configs() if config.reduce_on_plateau}
        values = {**self._local_monitored, **{key: float(metrics[key]) for key in monitored if key in metrics}}
        checkpoint[_MONITORED_KEY] = values
        checkpoint[_PENDING_KEY] = {"step_plateau": self._local_stepped, "epoch_finished": self._local_epoch_finished}

    def _load_scheduler_state(self, checkpoint: dict[str, Any]) -> None:
        """Read what :meth:`_save_scheduler_state` wrote (nothing due when the checkpoint has none of it)."""
        self._local_monitored = dict(checkpoint.get(_MONITORED_KEY, {}))
        pending = checkpoint.get(_PENDING_KEY, {})
        self._local_stepped = bool(pending.get("step_plateau", False))
        self._local_epoch_finished = bool(pending.get("epoch_finished", False))
