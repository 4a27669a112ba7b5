"""When a monitor measures and how many points it measures: schedules and the cost-bounded defaults.

Pure functions (no Lightning), so that the schedule a run will follow can be printed before it starts.
"""

from __future__ import annotations

import math

__all__ = ["auto_size", "measurement_epochs", "measurement_steps", "planned_share"]

# A training sample costs about one forward and a backward of twice its cost: three forward-equivalents.
TRAIN_COST_PER_SAMPLE = 3.0
MAX_MEASUREMENTS = 50  # the grokking paper's count over a run
MIN_MEASUREMENTS = 8  # fewer points do not draw a curve: the defaults trade points for measurements to keep 8
MIN_POINTS, MAX_POINTS = 64, 1024
POINTS_FLOOR = 16  # below 64 points only to keep MIN_MEASUREMENTS within the budget


def measurement_steps(total_steps: int, num_measurements: int = 50, every_n_steps: int | None = None) -> list[int]:
    """Optimizer steps to measure at: step 0 and log-spaced steps up to ``total_steps``, or every ``n`` steps.

    The log-spaced schedule rounds ``logspace(0, log10(total_steps), num_measurements - 1)`` and drops
    duplicates (as the paper's code does), so short runs get fewer than ``num_measurements``.

    Example::

        >>> measurement_steps(1000, num_measurements=5)
        [0, 1, 10, 100, 1000]
        >>> measurement_steps(10, every_n_steps=4)
        [0, 4, 8, 10]
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}; give the Trainer max_steps or max_epochs.")
    if every_n_steps is not None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}.")
        return sorted(set(range(0, total_steps + 1, every_n_steps)) | {total_steps})
    if num_measurements < 2:
        raise ValueError(f"num_measurements must be at least 2 (the start and the end), got {num_measurements}.")
    top = math.log10(total_steps)
    count = num_measurements - 1
    steps = {round(10 ** (top * i / (count - 1))) for i in range(count)} if count > 1 else {total_steps}
    return sorted(steps | {0, total_steps})


def measurement_epochs(total_epochs: int, every_n_epochs: int) -> list[int]:
    """Epochs (1-based counts of finished epochs) after which to measure; 0 is before training.

    Example::

        >>> measurement_epochs(7, every_n_epochs=3)
        [0, 3, 6, 7]
    """
    if total_epochs < 1:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}; give the Trainer max_epochs.")
    if every_n_epochs < 1:
        raise ValueError(f"every_n_epochs must be positive, got {every_n_epochs}.")
    return sorted(set(range(0, total_epochs + 1, every_n_epochs)) | {total_epochs})


def auto_size(
    budget: float,
    cost_per_point: float,
    num_points: int | None,
    num_measurements: int | None,
) -> tuple[int, int]:
    """``(points per set, measurements)`` whose cost ``points·measurements·cost_per_point`` fits ``budget``.

    ``budget`` and ``cost_per_point`` are in forward passes of one sample (a training run of ``S``
    steps of global batch ``B`` costs ``3·S·B``). What the user set is kept; what is ``None`` is
    chosen, in this order: at least 8 measurements (a curve), then 64 to 1024 points, then up to 50
    measurements; points go down to 16 before the measurements go below 8. With the points set by the
    user the measurements go down to 2 to stay within the budget. When even the floors exceed the
    budget they are returned (the caller warns). Counted work only: the same run plans the same on any
    machine.

    Example::

        >>> auto_size(budget=1e9, cost_per_point=51.0, num_points=None, num_measurements=None)
        (1024, 50)
        >>> auto_size(budget=3e5, cost_per_point=51.0, num_points=None, num_measurements=None)
        (117, 50)
        >>> auto_size(budget=19200, cost_per_point=51.0, num_points=None, num_measurements=None)
        (47, 8)
        >>> auto_size(budget=3e5, cost_per_point=51.0, num_points=1024, num_measurements=None)
        (1024, 5)
    """
    if cost_per_point <= 0 or budget <= 0:
        raise ValueError(f"budget and cost_per_point must be positive, got {budget} and {cost_per_point}.")
    affordable = budget / cost_per_point  # point-measurements within the budget
    if num_points is not None and num_measurements is not None:
        return num_points, num_measurements
    if num_points is not None:  # the user's points: as many measurements as the budget buys, at least 2
        return num_points, int(min(max(affordable // num_points, 2), MAX_MEASUREMENTS))
    if num_measurements is not None:
        return int(min(max(affordable // num_measurements, POINTS_FLOOR), MAX_POINTS)), num_measurements
    points = int(min(max(affordable / MAX_MEASUREMENTS, MIN_POINTS), MAX_POINTS))
    measurements = int(min(max(affordable // points, MIN_MEASUREMENTS), MAX_MEASUREMENTS))
    if points * measurements > affordable:  # 8 measurements of 64 points are too many: fewer points
        points = int(max(affordable // measurements, POINTS_FLOOR))
    return points, measurements


def planned_share(points: int, measurements: int, cost_per_point: float, training_forwards: float) -> float:
    """The monitor's planned forward passes as a share of the training's (``training_forwards = 3·S·B``).

    Example::

        >>> round(planned_share(47, 8, 51.0, 3 * 1000 * 64), 4)
        0.0999
    """
    return points * measurements * cost_per_point / training_forwards if training_forwards > 0 else 0.0
