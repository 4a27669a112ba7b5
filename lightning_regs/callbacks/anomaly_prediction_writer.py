"""``AnomalyPredictionWriter``: the anomaly maps and scores of ``lightning-regs predict``, written to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_regs.batch import INDEX

__all__ = ["AnomalyPredictionWriter"]

_KEYS = (INDEX, "score", "anomaly_map")


class AnomalyPredictionWriter(pl.Callback):
    """After ``predict``, save each rank's ``{"index", "score", "anomaly_map"}`` to ``predictions_rank<r>.pt``.

    Works with every anomaly task: those that score per batch (``INPFormer``, ``MeanImageAnomalyBaseline``: the
    ``predict_step`` outputs, concatenated) and ``MuScZeroShot``, which scores at the epoch's end (its
    ``predictions``). ``index`` ``(N,)`` is each image's position in the predict set (the DataModule's test set),
    ``score`` ``(N,)`` the image score and ``anomaly_map`` ``(N, 1, H, W)`` the map at the image's size, all on CPU.
    Under DDP each rank writes its own images (with ``DistributedSampler``'s padded repeats: keep one row per
    ``index``). Load a file with ``torch.load(path)``.

    Args:
        output_dir: where the files go; None: the Trainer's ``default_root_dir``.

    Example::

        >>> import tempfile
        >>> from lightning.pytorch import Trainer
        >>> from lightning_regs.datamodules import MVTecToyDataModule
        >>> from lightning_regs.tasks import MeanImageAnomalyBaseline
        >>> root = tempfile.mkdtemp()
        >>> data = MVTecToyDataModule(root, "stripes", num_train=2, num_test_good=2, num_test_defect=1)
        >>> task, writer = MeanImageAnomalyBaseline(), AnomalyPredictionWriter(root)
        >>> trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        ...                   callbacks=[writer])
        >>> trainer.fit(task, data)
        >>> trainer.predict(task, data, return_predictions=False)
        >>> rows = torch.load(f"{root}/predictions_rank0.pt")
        >>> rows["index"].tolist(), tuple(rows["anomaly_map"].shape)
        ([0, 1, 2, 3, 4], (5, 1, 64, 64))
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = None if output_dir is None else Path(output_dir)
        self._batches: list[dict[str, torch.Tensor]] = []

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches = []

    @override
    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if isinstance(outputs, dict) and all(key in outputs for key in _KEYS):
            self._batches.append({key: outputs[key].detach().cpu() for key in _KEYS})

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = getattr(pl_module, "predictions", None)  # MuSc: computed at the epoch's end, after the batches
        if isinstance(rows, dict) and all(key in rows for key in _KEYS):
            rows = {key: rows[key].detach().cpu() for key in _KEYS}
        elif self._batches:
            rows = {key: torch.cat([batch[key] for batch in self._batches]) for key in _KEYS}
        else:
            raise RuntimeError(
                f"AnomalyPredictionWriter: {type(pl_module).__name__} left no anomaly predictions: its predict_step "
                "must return a dict with 'index', 'score' and 'anomaly_map' (the anomaly tasks of lightning_regs do)."
            )
        if rows["anomaly_map"].dim() == 3:
            rows["anomaly_map"] = rows["anomaly_map"][:, None]
        folder = self.output_dir or Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"predictions_rank{trainer.global_rank}.pt"
        torch.save(rows, path)
        self._batches = []
        rank_zero_info(f"AnomalyPredictionWriter: wrote {len(rows[INDEX])} maps and scores per rank to {path.parent}")
