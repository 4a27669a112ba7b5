"""Each private Lightning/torch name the library reads holds on the installed versions; no other module reads one.

A failure here names the accessor of ``lightning_regs._compat`` whose assumption moved: fix it there (with the
release that moved it), not at its callers.
"""

from __future__ import annotations

import re
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs import _compat
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.trainers import QUIET

PACKAGE = Path(_compat.__file__).parent
CHECKED = f"checked on lightning {_compat.CHECKED_ON['lightning']}, torch {_compat.CHECKED_ON['torch']}"
# Private names of Lightning or torch (attribute reads, imports of private modules); lightning_regs' own are fine.
PRIVATE = re.compile(
    r"torch\._[a-z]|(?<![\w.])(lightning|torch)(\.[a-zA-Z]\w*)*\._\w|"
    r"\._(modules|trainer|base|data_source|compiler_ctx|lazy_init|orig_mod)\b|_NormBase|batch_progress|"
    r"val_loop\.setup_data|callback_metrics\[|\"_orig_mod\""
)


def _assumption(accessor: str) -> str:
    return (
        f"lightning_regs._compat.{accessor}: the internal it reads moved (lightning {lightning.__version__}, torch "
        f"{torch.__version__}; {CHECKED}). Update the accessor."
    )


def test_no_module_outside_compat_reads_a_private_name():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE.search(code):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not found, "move these reads into lightning_regs/_compat.py:\n" + "\n".join(found)


def test_the_pattern_catches_what_it_must():
    for line in ("x._trainer", "trainer.fit_loop._data_source", "from torch.utils.data._utils import x",
                 "torch._dynamo.OptimizedModule", "parent._modules[name]", "t._base"):  # fmt: skip
        assert PRIVATE.search(line), line
    for line in ("from lightning_regs._compat import x", "self.trainer", "module.modules()", "lightning_regs.x._y"):
        assert not PRIVATE.search(line), line


class _Probe(ImageClassifier):
    """Reads every trainer-side internal from inside a real fit."""

    def __init__(self) -> None:
        super().__init__(MLP(in_features=4, num_classes=2, width=8, depth=2), 2, lr=0.1, scheduler="constant")
        self.seen: dict[str, object] = {}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.seen["trainer"] = _compat.attached_trainer(self)
        self.seen["loaders"] = _compat.fit_train_loaders(self.trainer)
        _compat.set_up_val_loaders(self.trainer)
        self.seen["val"] = self.trainer.val_dataloaders

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.seen.setdefault("processed", []).append(_compat.batches_processed_in_epoch(self.trainer))

    def on_train_epoch_end(self) -> None:
        _compat.set_callback_metric(self.trainer, "probe/value", 2.5)


def _loader() -> DataLoader:
    data = TensorDataset(torch.randn(12, 4), torch.arange(12) % 2)
    return DataLoader(data, batch_size=4)


def test_the_trainer_accessors_read_what_they_say_in_a_real_fit():
    task = _Probe()
    assert _compat.attached_trainer(task) is None, _assumption("attached_trainer")
    train, val = _loader(), _loader()
    trainer = Trainer(max_epochs=1, **QUIET)
    trainer.fit(task, train, val)
    assert task.seen["trainer"] is trainer, _assumption("attached_trainer")
    assert task.seen["loaders"] is train, _assumption("fit_train_loaders")
    assert task.seen["val"] is val, _assumption("set_up_val_loaders")
    # a batch counts as processed once its step ran, before on_train_batch_end: 1, 2, 3 of 3
    assert task.seen["processed"] == [1, 2, 3], _assumption("batches_processed_in_epoch")
    assert float(trainer.callback_metrics["probe/value"]) == 2.5, _assumption("set_callback_metric")


def test_the_compile_accessors_see_through_torch_compile():
    net = nn.Linear(2, 2)
    compiled = torch.compile(net)
    assert _compat.is_compiled(compiled) and not _compat.is_compiled(net), _assumption("is_compiled")
    assert _compat.compiled_original(compiled) is net, _assumption("compiled_original")
    assert getattr(compiled, _compat.COMPILED_WRAPPER_ATTRIBUTE) is net, _assumption("COMPILED_WRAPPER_ATTRIBUTE")
    assert _compat.lightning_original_forward(net) is None


def test_lightning_from_compiled_keeps_the_original_forward():
    from lightning.pytorch.utilities.compile import from_compiled

    task = ImageClassifier(MLP(in_features=4, num_classes=2, width=8, depth=2), 2)
    eager_forward = task.forward
    restored = from_compiled(torch.compile(task))
    assert _compat.lightning_original_forward(restored) == eager_forward, _assumption("lightning_original_forward")


def test_storage_base_and_norm_base():
    tensor = torch.randn(4, 4)
    assert _compat.storage_base(tensor[1:]) is tensor and _compat.storage_base(tensor) is tensor, _assumption(
        "storage_base"
    )
    norms = (nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.SyncBatchNorm(2), nn.InstanceNorm2d(2))
    assert all(isinstance(norm, _compat.NormBase) for norm in norms), _assumption("NormBase")
    assert not isinstance(nn.LayerNorm(2), _compat.NormBase)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_fsdp_lazy_init_makes_the_root_the_root():
    from tests.helpers.ddp import run_in_ddp

    assert run_in_ddp(_lazy_init_in_a_process_group, world_size=1) == [True], _assumption("fsdp_lazy_init")


def _lazy_init_in_a_process_group(rank: int, world_size: int) -> bool:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    root = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    mesh = init_device_mesh("cpu", (1,))
    fully_shard(root[0], mesh=mesh)
    fully_shard(root, mesh=mesh)
    _compat.fsdp_lazy_init(root)
    return bool(fully_shard.state(root)._is_root)
