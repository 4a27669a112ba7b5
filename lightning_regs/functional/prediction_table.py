"""Moved: the prediction table is state, not an equation; it lives in :mod:`lightning_regs.callbacks.prediction_table`.

This module keeps the old import path working (``from lightning_regs.functional.prediction_table import ...``).
"""

from lightning_regs.callbacks.prediction_table import PredictionTable, Storage, check_table_state

__all__ = ["PredictionTable", "Storage", "check_table_state"]
