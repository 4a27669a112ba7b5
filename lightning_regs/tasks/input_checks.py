"""The checks every task runs on every batch: finite inputs and losses, labels in range, targets that are distributions.

The rule (``docs/design.md``, "Errors"):

- **Training.** A non-finite value (NaN, ±inf) in a training step's inputs or loss is a named error naming the step,
  the batch index and the tensor (``nonfinite="raise"``, the default). With ``nonfinite="skip"`` the step is skipped
  instead (automatic optimization: ``training_step`` returns ``None``; manual: no parameter changes), counted in
  ``train/skipped_nonfinite`` (summed over the epoch) and warned about. Inputs are checked before the forward, so a
  skipped step leaves the weights, the optimizer state and BatchNorm's running statistics as they were.
- **Evaluation.** Rows whose input is not finite are left out of every metric of the step (their logits would be NaN);
  ``<stage>/nonfinite_inputs`` logs how many rows were left out (summed over the epoch, on every step) and one warning
  per stage and run says so. Nothing numeric is ever computed from a NaN input.
- **Labels, every batch of every stage.** Class ids must lie in ``[0, num_classes)``; ``ignore_index`` (``None``: no
  label is ignored) names one more allowed value whose rows are left out of the loss and the metrics. Soft targets
  ``(B, C)`` must be finite, non-negative and sum to one per row (within ``1e-3``; ``1e-2`` in half precision).
  Anything else is a named error naming the stage, the batch index, the bad value and the allowed range.

Cost: one host read per check of a small fused bool tensor (``torch.isfinite(x).all()`` per tensor, stacked): a
training step reads twice (inputs and labels before the forward, so that a bad label never reaches a CUDA kernel as
a device-side assert; the loss after it), an evaluation step once.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from lightning_regs._compat import attached_trainer
from lightning_regs.batch import MIX_PARTNER, StepBatch

__all__ = [
    "SKIPPED_OUTPUT",
    "drop_skipped_gradients",
    "skipped_step_output",
    "NonFinite",
    "check_ignore_index",
    "check_nonfinite_option",
    "describe_nonfinite",
    "label_problem",
    "row_count",
    "select_rows",
    "target_flags",
]

NonFinite = Literal["raise", "skip"]

#: The fix every non-finite error ends with.
NONFINITE_FIX = (
    "check the data (a normalization dividing by a zero std, a corrupt file, a transform that overflows); or pass "
    "nonfinite='skip' to skip such steps (counted as train/skipped_nonfinite)"
)


def check_nonfinite_option(owner: str, value: Any) -> NonFinite:
    """``value`` if it is ``"raise"`` or ``"skip"``, else a named ``ValueError``."""
    if value not in ("raise", "skip"):
        raise ValueError(
            f"{owner}: nonfinite must be 'raise' (a named error at a non-finite input or loss) or 'skip' (skip such "
            f"training steps, counted and warned about), got {value!r}."
        )
    return value


def check_ignore_index(owner: str, value: Any, num_classes: int | None) -> int | None:
    """``value`` if it is ``None`` or an int outside ``[0, num_classes)``, else a named error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: ignore_index must be an int label (such as -100) or None, got {value!r}.")
    if num_classes is not None and 0 <= value < num_classes:
        raise ValueError(
            f"{owner}: ignore_index={value} is one of the {num_classes} classes, so a real class would be left out "
            f"of the loss and the metrics. Use a value outside [0, {num_classes}) (such as -100), or None."
        )
    return value


def row_count(image: Any) -> int | None:
    """The number of rows (samples, or bags) of a batch's inputs."""
    return int(image.shape[0]) if isinstance(image, torch.Tensor) and image.dim() else None


def target_flags(
    owner: str,
    where: str,
    target: Any,
    labels: Any,
    num_classes: int,
    ignore_index: int | None,
    rows: int | None,
) -> list[torch.Tensor]:
    """0-d bool tensors (no host read) that are True when ``target`` and ``labels`` are valid.

    Shape and dtype faults are raised at once (they need no read of the values): float class ids, a target whose
    length is not the batch's, soft targets of another width. ``where`` names the batch in the message.
    """
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{owner}: {where} has a target of type {type(target).__name__}; expected a tensor.")
    if target.is_floating_point() and target.dim() == 2:
        if target.shape[1] != num_classes or (rows is not None and target.shape[0] != rows):
            raise ValueError(
                f"{owner}: {where} holds soft targets of shape {tuple(target.shape)}; (B, C) class probabilities "
                f"need shape ({rows if rows is not None else 'B'}, {num_classes}) (num_classes={num_classes}). Give "
                "one probability per class and row, or int64 class ids (B,)."
            )
        tol = 1e-2 if target.element_size() < 4 else 1e-3
        values = target.float()
        flags = [torch.isfinite(values).all() & (values >= 0).all() & ((values.sum(1) - 1).abs() <= tol).all()]
        if labels is not target and isinstance(labels, torch.Tensor) and not labels.is_floating_point():
            flags.append(_in_range(labels, num_classes, ignore_index))
        return flags
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"{owner}: {where} holds float class ids (dtype {target.dtype}, shape {tuple(target.shape)}): class ids "
            "must be int64 (cast them with .long() in the data set), and class probabilities (B, C)."
        )
    if target.dtype == torch.bool or target.dim() != 1 or (rows is not None and target.shape[0] != rows):
        raise ValueError(
            f"{owner}: {where} holds a target of dtype {target.dtype} and shape {tuple(target.shape)}; expected int64 "
            f"class ids of shape ({rows if rows is not None else 'B'},), one per row of batch['image'] (or (B, C) "
            "float probabilities). Yield one integer label per sample."
        )
    return [_in_range(target, num_classes, ignore_index)]


def _in_range(labels: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid |= labels == ignore_index
    return valid.all()


def label_problem(
    owner: str,
    where: str,
    target: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int | None,
) -> str:
    """The message of a batch whose :func:`target_flags` read False (reads the values: the failure path only)."""
    allowed = f"[0, {num_classes - 1}] (num_classes={num_classes})"
    allowed += f" or ignore_index={ignore_index}" if ignore_index is not None else "; no ignore_index is set"
    if target.is_floating_point() and target.dim() == 2:
        values = target.detach().float()
        sums = values.sum(1)
        tol = 1e-2 if target.element_size() < 4 else 1e-3
        bad = ~torch.isfinite(values).all(1) | (values < 0).any(1) | ((sums - 1).abs() > tol)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            return (
                f"{owner}: {where} holds soft targets that are not class probabilities: row {row} is "
                f"{_short(values[row])} (sum {float(sums[row]):.6g}); each row must be finite, non-negative and sum "
                f"to 1 (within {tol:g}). Normalize the targets (target / target.sum(1, keepdim=True)) or find the "
                "callback or data that wrote them."
            )
        target = labels
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    row = int(bad.nonzero()[0, 0])
    value = int(target[row])
    hint = (
        f"pass ignore_index={value} to leave such rows out of the loss and the metrics, or drop them from the data"
        if value < 0
        else f"the data has more classes than the model: set num_classes (and the backbone's) to at least {value + 1}"
    )
    return (
        f"{owner}: {where} holds the label {value} (row {row}; labels span [{int(target.min())}, {int(target.max())}]) "
        f"but labels must lie in {allowed}. Labels must be 0-based class ids; {hint}."
    )


def _short(row: torch.Tensor) -> str:
    values = [round(v, 4) for v in row[:6].tolist()]
    return str(values)[:-1] + (", ...]" if len(row) > 6 else "]")


def describe_nonfinite(tensor: torch.Tensor) -> str:
    """``"3 NaN, 1 +inf"``: what is not finite in ``tensor`` (the failure path only: it reads the values)."""
    parts = [
        (int(torch.isnan(tensor).sum()), "NaN"),
        (int(torch.isposinf(tensor).sum()), "+inf"),
        (int(torch.isneginf(tensor).sum()), "-inf"),
    ]
    return ", ".join(f"{n} {kind}" for n, kind in parts if n)


def select_rows(step: StepBatch, keep: torch.Tensor) -> StepBatch:
    """``step`` with only the rows ``keep`` (a bool ``(B,)`` mask): each tensor of the batch whose first dimension is B.

    Raises:
        ValueError: when an input-rewriting callback mixed the batch's rows (its partner indices would point at rows
            that are gone).
    """
    rows = int(keep.shape[0])

    def take(value: Any) -> Any:
        return value[keep] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows else value

    batch = step.batch
    if isinstance(batch, Mapping):
        if MIX_PARTNER in batch:
            raise ValueError(
                "Rows of this batch are to be left out (ignore_index labels), but a mixing callback (MixUp, CutMix) "
                "mixed its rows with each other: the mixed-in rows cannot be left out. Drop the ignored rows from the "
                "data, or train without the mixing callback."
            )
        batch = {key: take(value) for key, value in batch.items()}
    elif isinstance(batch, Sequence) and not isinstance(batch, str):
        batch = type(batch)(take(value) for value in batch)
    index = take(step.index) if step.index is not None else None
    return StepBatch(take(step.image), take(step.target), take(step.labels), index, batch)


def report_nonfinite_inputs(
    module: Any, warned: set[str], stage: str, dropped: int, rows: int, where: str, left_out: str
) -> None:
    """Log ``<stage>/nonfinite_inputs`` and warn once per stage about rows left out for non-finite inputs.

    Logged on every step, summed over the epoch and over the ranks (a NaN on a rank other than 0 must show: loggers
    write rank 0's values); the warning comes from whichever rank saw the rows. ``warned`` holds the stages warned.
    """
    module.log(
        f"{stage}/nonfinite_inputs", float(dropped), on_step=False, on_epoch=True, reduce_fx="sum", batch_size=1,
        sync_dist=True,
    )  # fmt: skip
    if not dropped or stage in warned:
        return
    warned.add(stage)
    warnings.warn(
        f"{type(module).__name__}: {where} has {dropped} of {rows} rows with non-finite inputs (NaN or inf); they are "
        f"left out of {left_out}, and {stage}/nonfinite_inputs counts such rows (this warning is given once per "
        "stage). Check the data: a normalization dividing by a zero std, a corrupt file, a transform that overflows.",
        stacklevel=3,
    )


#: The key of a skipped step's ``training_step`` output under DDP (callbacks reading the output skip it too).
SKIPPED_OUTPUT = "skipped_nonfinite"


def skipped_step_output(module: Any) -> dict[str, Any] | None:
    """What a task's ``training_step`` returns for a step skipped under ``nonfinite="skip"``.

    ``None`` on one process. Under DDP Lightning refuses ``None``, and every rank must join the gradient all-reduce:
    a zero loss over the trainable parameters, marked ``{SKIPPED_OUTPUT: True}``, whose gradients
    :func:`drop_skipped_gradients` (called from the task's ``on_before_optimizer_step``) drops, so
    ``optimizer.step()`` changes no parameter and no optimizer state.

    Example::

        >>> skipped_step_output(torch.nn.Linear(2, 2)) is None  # not attached to a Trainer
        True
    """
    trainer = attached_trainer(module)
    if trainer is None or trainer.world_size == 1 or not module.automatic_optimization:
        return None
    module._drop_step_gradients = True
    trainable = [p for p in module.parameters() if p.requires_grad]
    zero = sum((p.sum() * 0.0 for p in trainable), torch.zeros((), device=module.device))
    return {"loss": zero, SKIPPED_OUTPUT: True}


def drop_skipped_gradients(module: Any, optimizer: torch.optim.Optimizer) -> None:
    """After a skipped step's backward: set every gradient to ``None``, so the optimizer leaves every parameter alone.

    Example::

        >>> layer = torch.nn.Linear(2, 2)
        >>> layer._drop_step_gradients = True
        >>> layer(torch.ones(1, 2)).sum().backward()
        >>> optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> drop_skipped_gradients(layer, optimizer)
        >>> layer.weight.grad is None
        True
    """
    if getattr(module, "_drop_step_gradients", False):
        optimizer.zero_grad(set_to_none=True)
        module._drop_step_gradients = False
