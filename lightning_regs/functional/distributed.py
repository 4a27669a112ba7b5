"""Moved: gathering rows across ranks is plumbing, not an equation; see :mod:`lightning_regs.distributed`.

This module keeps the old import path working (``from lightning_regs.functional.distributed import ...``).
"""

from lightning_regs.distributed import all_gather_variable, gather_unique_by_index, unique_by_index

__all__ = ["all_gather_variable", "gather_unique_by_index", "unique_by_index"]
