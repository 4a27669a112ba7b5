"""Gradient-isolated (local) training: splits, auxiliary heads and the LightningModule mixin (to come)."""

__all__: list[str] = []
