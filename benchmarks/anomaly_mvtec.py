"""Anomaly detection on MVTec AD (or the toy): the mean-image floor, INP-Former and MuSc per category over seeds.

    python benchmarks/anomaly_mvtec.py --toy --out runs/anomaly_toy                     # 3 toy categories, seeds 0 1 2
    python benchmarks/anomaly_mvtec.py --root /data/mvtec_ad --out runs/anomaly_mvtec   # all 15 categories
    python benchmarks/anomaly_mvtec.py --root /data/mvtec_ad --out runs/anomaly_mvtec --setting multi-class \\
        --methods inp_former --args "inp_former=--model.init_args.encoder=timm:vit_base_patch14_reg4_dinov2"

Each method runs from its example config (``examples/{mean_image,inp_former,musc}_mvtec_toy.yaml``) through the
project's CLI, so a row is what ``lightning-regs fit``/``test`` gives with those settings: the floor and
INP-Former are fitted on ``train/good`` and then tested, MuSc is only tested (zero-shot). With ``--toy`` each seed
renders its own toy (``toy_seed`` = seed) and seeds the training; on real data the seed sets the training only.
``--setting multi-class`` fits INP-Former once on every category's ``train/good`` (the paper's main setting) and
tests it per category; the floor and MuSc are per-category either way.

Every finished run is appended to ``<out>/runs.jsonl`` at once, and a rerun skips the runs found there, so a crash
or a stop loses at most the run in progress. ``<out>/table.md`` (printed at the end) holds, per category and method,
the test metrics' mean ± standard deviation over the seeds, the mean over the categories, and each method's margin
over the floor: the smallest, over the seeds, of (method - floor) in image and pixel AUROC.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules.mvtec import CATEGORIES
from lightning_regs.datamodules.mvtec_toy import TOY_CATEGORIES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = {
    "floor": EXAMPLES / "mean_image_mvtec_toy.yaml",
    "inp_former": EXAMPLES / "inp_former_mvtec_toy.yaml",
    "musc": EXAMPLES / "musc_mvtec_toy.yaml",
}
LABELS = {"floor": "mean-image floor", "inp_former": "INP-Former", "musc": "MuSc (zero-shot)"}
METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
HEADERS = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO")
MULTI = "all"  # the `category` of a multi-class fit's run key


def data_args(args: argparse.Namespace, categories: Sequence[str], seed: int) -> list[str]:
    """The CLI arguments choosing the data: the toy of this seed, or the real folder."""
    category = categories[0] if len(categories) == 1 else json.dumps(list(categories))
    if args.toy:
        root = Path(args.out) / "data" / f"toy_seed{seed}"
        return [f"--data.init_args.root={root}", f"--data.init_args.category={category}",
                f"--data.init_args.toy_seed={seed}"]  # fmt: skip
    return [
        "--data=lightning_regs.datamodules.mvtec.MVTecADDataModule",
        f"--data.init_args.root={args.root}",
        f"--data.init_args.category={category}",
        f"--data.init_args.image_size={args.image_size}",
        f"--data.init_args.batch_size={args.batch_size}",
    ]


def run(args: argparse.Namespace, method: str, categories: Sequence[str], seed: int) -> dict[str, Any]:
    """One method on one category (or, multi-class, fitted on all and tested per category); the test metrics."""
    root_dir = Path(args.out) / "runs" / f"{method}_{categories[0] if len(categories) == 1 else MULTI}_seed{seed}"
    cli_args = [
        f"--config={CONFIGS[method]}", f"--seed_everything={seed}", f"--trainer.default_root_dir={root_dir}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false",
        *data_args(args, categories, seed), *shlex.split(args.extra.get(method, "")),
    ]  # fmt: skip
    if method != "musc":
        cli_args.append("--trainer.limit_val_batches=0")  # no validation: one test after the fit
    argv, sys.argv = sys.argv, sys.argv[:1]  # the runner's own flags are not the CLI's (LightningCLI warns otherwise)
    try:
        cli = LightningRegsCLI(args=cli_args, run=False)
    finally:
        sys.argv = argv
    start = time.perf_counter()
    if method != "musc":
        cli.trainer.fit(cli.model, cli.datamodule)
    fitted = time.perf_counter()
    cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items() if key.startswith("test/")}
    return {"fit_s": fitted - start, "test_s": time.perf_counter() - fitted, "metrics": metrics}


def category_metrics(record: dict[str, Any], category: str) -> dict[str, float]:
    """The seven metrics of one category from a run's ``test/...`` values (multi-class: ``test/<category>/...``)."""
    metrics = record["metrics"]
    prefix = "test/" if record["category"] != MULTI else f"test/{category}/"
    return {name: metrics.get(prefix + name, math.nan) for name in METRICS}


def mean_sd(values: Sequence[float]) -> str:
    if not values or any(math.isnan(v) for v in values):
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def table(records: list[dict[str, Any]], categories: Sequence[str], methods: Sequence[str]) -> str:
    """The markdown table: per category and method, mean ± sd over seeds; the category mean; margins over the floor."""
    rows = ["| Category | Method | Seeds | " + " | ".join(HEADERS) + " |", "|---" * (3 + len(HEADERS)) + "|"]
    per_seed: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for record in records:
        for category in categories:
            if record["category"] in (category, MULTI):
                per_seed.setdefault((record["method"], category), {})[record["seed"]] = category_metrics(
                    record, category
                )
    for category in [*categories, "mean"]:
        for method in methods:
            if category == "mean":
                seeds = set.intersection(*(set(per_seed.get((method, c), {})) for c in categories))
                values = {
                    seed: {name: statistics.fmean(per_seed[(method, c)][seed][name] for c in categories)
                           for name in METRICS}
                    for seed in seeds
                }  # fmt: skip
            else:
                values = per_seed.get((method, category), {})
            if not values:
                continue
            cells = [mean_sd([v[name] for v in values.values()]) for name in METRICS]
            name = f"**{category}**" if category == "mean" else category
            rows.append(f"| {name} | {LABELS[method]} | {len(values)} | " + " | ".join(cells) + " |")
    margins = ["", "Margin over the floor: the smallest over the seeds of (method - floor), image and pixel AUROC.", ""]
    margins += ["| Category | Method | Image AUROC margin | Pixel AUROC margin |", "|---|---|---|---|"]
    for category in categories:
        floor = per_seed.get(("floor", category), {})
        for method in methods:
            if method == "floor":
                continue
            mine = per_seed.get((method, category), {})
            seeds = sorted(set(floor) & set(mine))
            if not seeds:
                continue
            cells = []
            for name in ("image_auroc", "pixel_auroc"):
                diffs = [mine[s][name] - floor[s][name] for s in seeds]
                cells.append(f"{min(diffs):+.3f} (seeds {', '.join(f'{d:+.3f}' for d in diffs)})")
            margins.append(f"| {category} | {LABELS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(rows + margins) + "\n"


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--toy", action="store_true", help="the synthetic MVTec-format toy, written under --out")
    where.add_argument("--root", help="a real MVTec AD folder (holding bottle/, cable/, ...)")
    parser.add_argument("--out", required=True, help="folder for runs.jsonl, table.md, the toy and the runs' files")
    parser.add_argument("--categories", nargs="+", help="default: the toy's 3 or MVTec AD's 15")
    parser.add_argument("--methods", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--setting", choices=("per-category", "multi-class"), default="per-category",
                        help="INP-Former fitted per category or once on all of them")  # fmt: skip
    parser.add_argument("--image-size", type=int, default=256, help="real data only: the side images are resized to")
    parser.add_argument("--batch-size", type=int, default=8, help="real data only")
    example = "--args 'musc=--model.init_args.layers=[2,3]'"
    parser.add_argument("--args", action="append", metavar="METHOD=CLI_ARGS", default=[],
                        help=f"extra CLI arguments of one method, e.g. {example}")  # fmt: skip
    args = parser.parse_args(argv)
    pairs = [text.partition("=") for text in args.args]
    if any(method not in CONFIGS or not sep for method, sep, _ in pairs):
        parser.error(f"--args takes METHOD=CLI_ARGS with METHOD one of {', '.join(CONFIGS)}; got {args.args}")
    args.extra = {method: " ".join(a for m, _, a in pairs if m == method) for method in CONFIGS}
    known = TOY_CATEGORIES if args.toy else CATEGORIES
    args.categories = list(args.categories or known)
    unknown = sorted(set(args.categories) - set(known))
    if unknown:
        parser.error(f"unknown categories {unknown}; choose from {', '.join(known)}")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    done = {(r["method"], r["category"], r["seed"]) for r in records}
    for seed in args.seeds:
        for method in args.methods:
            multi = method == "inp_former" and args.setting == "multi-class"
            for categories in [args.categories] if multi else [[c] for c in args.categories]:
                key = (method, MULTI if multi else categories[0], seed)
                if key in done:
                    continue
                result = run(args, method, categories, seed)
                record = {"method": key[0], "category": key[1], "seed": seed, **result}
                records.append(record)
                with log.open("a") as file:
                    file.write(json.dumps(record) + "\n")
                image, pixel = (result["metrics"].get(f"test/{m}", math.nan) for m in ("image_auroc", "pixel_auroc"))
                print(f"{key}: image AUROC {image:.4f}, pixel AUROC {pixel:.4f}, fit {result['fit_s']:.0f} s, "
                      f"test {result['test_s']:.0f} s", flush=True)  # fmt: skip
    text = table(records, args.categories, args.methods)
    (out / "table.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":  # quiet Lightning here only: main() called from a test leaves logging as it was
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    main()
