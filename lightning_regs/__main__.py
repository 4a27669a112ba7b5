"""``python -m lightning_regs fit --config X.yaml``: the same entry point as ``lightning-regs``."""

from lightning_regs.cli import main

if __name__ == "__main__":
    main()
