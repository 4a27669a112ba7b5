"""Moved: running a module in eval mode or eagerly is plumbing, not an equation; see :mod:`lightning_regs.modes`.

This module keeps the old import path working (``from lightning_regs.functional.modes import eval_mode``).
"""

from lightning_regs.modes import eval_mode, side_effect_free, uncompiled, unwrap_compiled

__all__ = ["eval_mode", "side_effect_free", "uncompiled", "unwrap_compiled"]
