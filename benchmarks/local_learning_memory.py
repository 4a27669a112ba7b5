"""Peak saved-activation bytes of one local-learning step against end-to-end training of the same model and batch.

    python benchmarks/local_learning_memory.py                       # ResNet-32, batch 64, 3x32x32, K = 2 and 4
    python benchmarks/local_learning_memory.py --depth 110 --batch 128

Deterministic and device-free: every tensor autograd saves for backward is counted once per storage while
it is alive (:class:`~lightning_regs.local_learning.SavedTensorMeter`; weights and buffers excluded). For
each split (the papers' presets where they exist for this depth and K, and the auto split) and head
(DGL, InfoPro; MAN in front of DGL for the auto split) it prints the peak of one local step, the ratio to
the end-to-end peak, and for the auto split its floor (the largest module plus its head, as the auto split
estimates it at this batch) and measured/floor. ``--auglocal-d`` adds AugLocal rows (every layer its own
module, K = L - d, aux nets of fresh later-layer copies).
"""

from __future__ import annotations

import argparse

import torch

from lightning_regs.functional.classification import classification_loss
from lightning_regs.local_learning import SavedTensorMeter, auto_split
from lightning_regs.local_learning.builder import _CostProbe, layer_output_shapes
from lightning_regs.local_learning.splits import INFOPRO_STAR_SPLITS, PAPER_SPLITS
from lightning_regs.models import CifarResNet
from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier


def end_to_end_peak(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    meter = SavedTensorMeter(exclude=[model])
    with meter:
        classification_loss(model(x), y).backward()
    return meter.peak_bytes


def local_peak(task: LocalLearningClassifier, x: torch.Tensor, y: torch.Tensor) -> int:
    meter = SavedTensorMeter(exclude=[task])
    with meter:
        task.local_backward(x, y, backward=torch.Tensor.backward)
    assert meter.live_bytes == 0
    return meter.peak_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--K", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--auglocal-d", type=int, nargs="*", default=[2], help="AugLocal aux depths (none: skip)")
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = (3, args.image_size, args.image_size)
    x, y = torch.randn(args.batch, *shape), torch.randint(0, 10, (args.batch,))
    backbone = CifarResNet(depth=args.depth)
    e2e = end_to_end_peak(backbone, x, y)
    print(f"ResNet-{args.depth}, batch {args.batch}, {shape}: end-to-end peak {e2e / 2**20:.2f} MiB")
    print(f"{'split':<14}{'K':>3} {'head':<8}{'peak MiB':>10}{'vs E2E':>9}{'floor MiB':>11}{'peak/floor':>12}")
    for K in args.K:
        presets = (("paper", PAPER_SPLITS), ("infopro_star", INFOPRO_STAR_SPLITS))
        splits = [name for name, table in presets if K in table.get(args.depth, {})]
        for split in [*splits, "auto"]:
            for head, man in (("dgl", False), ("infopro", False), ("dgl", True)):
                if man and split != "auto":
                    continue
                task = LocalLearningClassifier(backbone, 10, K=K, split=split, head=head, man=man, input_shape=shape)
                peak = local_peak(task, x, y)
                floor_text = ratio_text = ""
                if split == "auto":
                    shapes = layer_output_shapes(backbone.layers, shape)
                    probe = _CostProbe(task.local_spec, backbone, backbone.layers, shapes, shape, x, 10)
                    _, floor = auto_split(backbone.layers, K, x, probe)
                    floor_text, ratio_text = f"{floor / 2**20:.2f}", f"{peak / floor:.3f}"
                label = f"{head}+man" if man else head
                print(
                    f"{split:<14}{K:>3} {label:<8}{peak / 2**20:>10.2f}{peak / e2e:>8.3f}x{floor_text:>11}"
                    f"{ratio_text:>12}   points={[backbone.layer_names[i] for i in task.split_points]}"
                )
    for d in args.auglocal_d:
        task = LocalLearningClassifier(backbone, 10, head="auglocal", d=d, input_shape=shape)
        peak = local_peak(task, x, y)
        K = task.num_local_modules
        print(f"{'every_layer':<14}{K:>3} {'auglocal':<8}{peak / 2**20:>10.2f}{peak / e2e:>8.3f}x{'':>23}   d={d}")


if __name__ == "__main__":
    main()
