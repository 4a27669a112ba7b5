"""The resume state of :class:`~lightning_regs.datamodules.base.SplitDataModule`: split, position and fingerprints.

:class:`SplitResumeState` is the base's ``state_dict``/``load_state_dict``: the seed and the split arguments, every
split's indices, the training position of a checkpoint written inside an epoch (applied to the
:class:`~lightning_regs.datamodules.samplers.EpochShuffleSampler` on restore) and each split's data fingerprint,
checked against the data on restore (:class:`DataChangedError`, :class:`ResumePositionError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler
from typing_extensions import override

from lightning_regs._compat import batches_processed_in_epoch
from lightning_regs.datamodules.fingerprint import data_fingerprint, fingerprint_difference
from lightning_regs.datamodules.samplers import EpochShuffleSampler

__all__ = ["DataChangedError", "ResumableDataLoader", "ResumePositionError", "SplitResumeState"]

# State entry with the training position (epoch, batches trained in it) of a checkpoint written mid-epoch.
_POSITION_KEY = "training_position"
# State entry with each split's data fingerprint (size, labels and file digests), checked on restore.
_FINGERPRINT_KEY = "data_fingerprint"


class DataChangedError(ValueError):
    """The data a checkpoint is resumed on is not the data it was made on (size, labels, file list or content)."""


class ResumePositionError(ValueError):
    """A checkpoint written inside an epoch cannot continue that epoch with this module's settings."""


class SplitResumeState:
    """The state half of :class:`~lightning_regs.datamodules.base.SplitDataModule` (mixed in before Lightning's).

    Reads what the DataModule declares: ``split_arguments``, ``task_arguments``, ``split_indices``, ``datasets``,
    :meth:`~lightning_regs.datamodules.base.SplitDataModule.extra_state` and ``train_sampler``.
    """

    def _training_sampler(self, dataset: Dataset) -> Sampler[int]:
        sampler = self.train_sampler(dataset)
        self._last_train_sampler = sampler
        self._apply_position(sampler)
        self._resume_position = None  # once: a later fit of this DataModule starts its epochs from the top
        return sampler

    def _apply_position(self, sampler: Sampler[int] | None) -> None:
        position = getattr(self, "_resume_position", None)
        if position is not None and isinstance(sampler, EpochShuffleSampler):
            # by samples: the draws this rank trained on (a checkpoint of before it saved them: batches of this size)
            skip = position.get("samples", position["batches"] * self.batch_size)
            sampler.resume_at(position["epoch"], skip)

    def _check_position(self, position: Mapping[str, Any] | None) -> None:
        """Refuse a mid-epoch position this module cannot continue exactly (another batch size or process count)."""
        if not position or "batch_size" not in position:  # none, or a checkpoint of before these were saved
            return
        epoch_batches = position.get("epoch_batches")
        if epoch_batches is None or position["batches"] >= epoch_batches or position["batches"] == 0:
            return  # written at an epoch's end or start: the next epoch starts from its top with any settings
        then, now = position["batch_size"], self.batch_size
        world = _world_size(self.trainer)
        where = (
            f"the checkpoint was written inside epoch {position['epoch']}, after {position['batches']} of its "
            f"{epoch_batches} batches of {then} samples"
        )
        if position.get("world_size", world) != world:
            raise ResumePositionError(
                f"{type(self).__name__}: {where} on {position['world_size']} process(es), and this run has {world}: "
                "each process's share of the epoch changes with their number, so the rest of the epoch would skip "
                "or repeat samples. Resume on as many processes, or from a checkpoint written at an epoch's end."
            )
        if then != now:
            raise ResumePositionError(
                f"{type(self).__name__}: {where}, and this module has batch_size={now}. Lightning counts the epoch's "
                f"remaining steps in batches of {then}, so with batches of {now} the rest of the epoch would skip or "
                f"repeat samples and shift the step count. Resume with batch_size={then} (--data.init_args.batch_size="
                f"{then}), or from a checkpoint written at an epoch's end."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {name: self.hparams.get(name) for name in ("seed", *self.split_arguments, *self.task_arguments)}
        state.update({f"{name}_indices": indices for name, indices in self.split_indices.items()})
        state.update(self.extra_state())
        position = self._training_position()
        if position is not None:
            state[_POSITION_KEY] = position
        if self.datasets:
            state[_FINGERPRINT_KEY] = self._fingerprints()
        return state

    def _fingerprints(self) -> dict[str, dict[str, Any]]:
        """Each split's :func:`~lightning_regs.datamodules.fingerprint.data_fingerprint`, computed once per setup."""
        key = tuple(self.datasets.values())  # the objects themselves: an id could be reused by a rebuilt set
        cached = getattr(self, "_fingerprint_cache", None)
        if cached is None or len(cached[0]) != len(key) or any(a is not b for a, b in zip(cached[0], key, strict=True)):
            cached = (key, {split: data_fingerprint(dataset) for split, dataset in self.datasets.items()})
            self._fingerprint_cache = cached
        return cached[1]

    def _check_fingerprints(self, saved: Mapping[str, Mapping[str, Any]] | None) -> None:
        if not saved:  # a checkpoint from before fingerprints were saved
            return
        current = self._fingerprints()
        changes = {
            split: difference
            for split, fingerprint in saved.items()
            if split in current and (difference := fingerprint_difference(fingerprint, current[split]))
        }
        if changes:
            what = "; ".join(f"the {split} split changed: {difference}" for split, difference in changes.items())
            raise DataChangedError(
                f"{type(self).__name__}: the data under {self.hparams.get('root', 'this DataModule')} is not the data "
                f"the checkpoint was made on ({what}). Its split indices and every per-sample state (e.g. PS-KD's "
                "table) would point at other samples. Resume with the original data, or start a new run."
            )

    def _training_position(self) -> dict[str, int] | None:
        """Where training is in its epoch: the epoch and the batches this rank trained on in it (``None``: not fitting).

        Read from Lightning's own progress counters when a checkpoint is written, so batches the loader fetched
        ahead (Lightning prefetches one) are not counted as trained.
        """
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return None
        batches = batches_processed_in_epoch(trainer)
        position: dict[str, Any] = {"epoch": int(trainer.current_epoch), "batches": batches}
        size = self.batch_size  # None where batches are whole bags (bags_per_batch): compared as given
        position.update(batch_size=size, samples=None if size is None else batches * int(size))
        position["world_size"] = _world_size(trainer)
        total = trainer.num_training_batches
        if isinstance(total, int) or (isinstance(total, float) and math.isfinite(total)):
            position["epoch_batches"] = int(total)
        return position

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._check_position(state_dict.get(_POSITION_KEY))  # before anything changes
        self._resume_position = state_dict.pop(_POSITION_KEY, None)
        fingerprints = state_dict.pop(_FINGERPRINT_KEY, None)
        # A loader made before the restore (Lightning builds one early when configure_optimizers asks for
        # estimated_stepping_batches) gets the position too.
        self._apply_position(getattr(self, "_last_train_sampler", None))
        name = type(self).__name__
        for argument in self.task_arguments:
            if argument in state_dict and state_dict[argument] != self.hparams.get(argument):
                raise ValueError(
                    f"{name}: the checkpoint was made with {argument}={state_dict[argument]!r} but this module has "
                    f"{argument}={self.hparams.get(argument)!r}, which changes what the targets mean. Build the "
                    f"DataModule with {argument}={state_dict[argument]!r} to resume from this checkpoint."
                )
        if self.datasets and _same_state(self.state_dict(), state_dict):
            self._check_fingerprints(fingerprints)
            return  # already set up with this state: do not read the data again
        self.load_extra_state(state_dict)
        adopted = {key: state_dict[key] for key in ("seed", *self.split_arguments) if key in state_dict}
        differ = [key for key, value in adopted.items() if value != self.hparams.get(key)]
        if differ:
            theirs = ", ".join(f"{key} {adopted[key]!r}" for key in differ)
            ours = ", ".join(f"{key} {self.hparams.get(key)!r}" for key in differ)
            rank_zero_warn(
                f"{name}: the checkpoint's split was made with {theirs}; this module has {ours}. The checkpoint's "
                "split is used, and its seed orders the training samples, so the run continues as the uninterrupted "
                "one would."
            )
        self.hparams.update(adopted)
        self.split_indices = {
            key.removesuffix("_indices"): torch.as_tensor(value, dtype=torch.long)
            for key, value in state_dict.items()
            if key.endswith("_indices")
        }
        missing = [key for key in self.split_arguments if key not in state_dict]
        if missing and any(key.endswith("_indices") for key in state_dict):
            rank_zero_warn(
                f"{name}: the checkpoint's split indices are used, but it does not record {missing} (it predates "
                f"them); this module's {', '.join(f'{key}={self.hparams.get(key)!r}' for key in missing)} may not "
                "describe that split."
            )
        self.datasets = {}
        try:
            self.setup()
        except IndexError as error:
            raise ValueError(
                f"{name}: the checkpoint's split indices do not fit the data under "
                f"{self.hparams.get('root', 'this DataModule')} ({error}): the checkpoint was made on other data. "
                "Resume with the original data, or start a new run."
            ) from error
        self._check_fingerprints(fingerprints)


class ResumableDataLoader(DataLoader):
    """The training loader of a :class:`SplitDataModule`: its position lives in the DataModule's state.

    The DataModule saves the epoch and the batches trained in it with every checkpoint and hands them to its
    :class:`~lightning_regs.datamodules.EpochShuffleSampler` on restore, so a run resumed from a mid-epoch
    checkpoint continues with the next batch. These methods only tell Lightning that the loader resumes (it
    otherwise warns that a mid-epoch resume is unreliable); the state is the DataModule's.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"position": "in the DataModule's state"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        pass


def _world_size(trainer: Any) -> int:
    if trainer is not None:
        return int(trainer.world_size)
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def _same_state(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    ours = {key: value for key, value in ours.items() if key not in (_POSITION_KEY, _FINGERPRINT_KEY)}
    if ours.keys() != theirs.keys():
        return False
    for key, value in ours.items():
        other = theirs[key]
        if isinstance(value, torch.Tensor) or isinstance(other, torch.Tensor):
            value, other = torch.as_tensor(value), torch.as_tensor(other)
            if value.dtype != other.dtype or value.shape != other.shape or not torch.equal(value, other):
                return False
        elif value != other:
            return False
    return True
