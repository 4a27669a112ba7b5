"""Test helpers: DDP on CPU, a recording logger, a fake W&B module, skip markers."""
