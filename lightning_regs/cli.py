"""The LightningCLI entry point: ``lightning-regs fit --config X.yaml`` or ``python -m lightning_regs ...``.

Any LightningModule, LightningDataModule, callback or logger can be named in YAML, by its full
class path or, for classes of this package and of Lightning, by its short name. The configs are
read in OmegaConf mode, so ``${...}`` interpolation works within one file.

Example::

    >>> cli = LightningRegsCLI(args=["--model=ImageClassifier", "--model.backbone=SmallCNN",
    ...                              "--model.num_classes=10", "--data=DigitsDataModule"], run=False)
    >>> type(cli.model).__name__, type(cli.datamodule).__name__
    ('ImageClassifier', 'DigitsDataModule')
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import ArgsType, LightningCLI

import lightning_regs.callbacks
import lightning_regs.datamodules
import lightning_regs.models
import lightning_regs.tasks  # noqa: F401  (imported so their short class names resolve in YAML)

__all__ = ["LightningRegsCLI", "main"]


class LightningRegsCLI(LightningCLI):
    """``LightningCLI`` in subclass mode for model and data, with OmegaConf interpolation.

    Args:
        args: the command line to parse instead of ``sys.argv[1:]`` (a list or a dict).
        **kwargs: forwarded to :class:`~lightning.pytorch.cli.LightningCLI`; ``parser_kwargs`` are
            merged with ``{"parser_mode": "omegaconf"}``.
    """

    def __init__(self, args: ArgsType = None, **kwargs: Any) -> None:
        parser_kwargs = {"parser_mode": "omegaconf", **kwargs.pop("parser_kwargs", {})}
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(args=args, parser_kwargs=parser_kwargs, **kwargs)


def main(args: ArgsType = None) -> None:
    """Run the CLI (the ``lightning-regs`` console script)."""
    LightningRegsCLI(args=args)


if __name__ == "__main__":
    main()
