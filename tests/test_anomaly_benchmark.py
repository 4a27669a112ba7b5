"""``benchmarks/anomaly_mvtec.py``: the per-category table over seeds, on real-layout data and on the toy, resumable."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.helpers.fake_datasets_medical import make_mvtec

RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "anomaly_mvtec.py"


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("anomaly_mvtec", RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["anomaly_mvtec"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("anomaly_mvtec", None)


def test_real_layout_table_over_two_seeds_and_a_resume_that_skips_done_runs(tmp_path, runner):
    root = make_mvtec(tmp_path / "mvtec")
    args = ["--root", str(root), "--out", str(tmp_path / "out"), "--categories", "bottle", "--methods", "floor",
            "--seeds", "0", "1", "--image-size", "16", "--batch-size", "4"]  # fmt: skip
    text = runner.main(args)
    records = [json.loads(line) for line in (tmp_path / "out" / "runs.jsonl").read_text().splitlines()]
    assert [(r["method"], r["category"], r["seed"]) for r in records] == [
        ("floor", "bottle", 0),
        ("floor", "bottle", 1),
    ]
    row = next(line for line in text.splitlines() if line.startswith("| bottle | mean-image floor | 2 |"))
    auroc = float(row.split("|")[4].split("±")[0])
    assert auroc == pytest.approx(sum(r["metrics"]["test/image_auroc"] for r in records) / 2, abs=5e-4)
    assert (tmp_path / "out" / "table.md").read_text() == text
    assert runner.main(args) == text  # both runs found in runs.jsonl: nothing rerun
    assert len((tmp_path / "out" / "runs.jsonl").read_text().splitlines()) == 2


def test_toy_margins_compare_each_seed_with_its_own_floor(runner):
    records = [
        {"method": m, "category": "stripes", "seed": s, "metrics": {"test/image_auroc": v, "test/pixel_auroc": v}}
        for m, s, v in [("floor", 0, 0.7), ("floor", 1, 0.8), ("musc", 0, 0.9), ("musc", 1, 0.85)]
    ]
    text = runner.table(records, ["stripes"], ["floor", "musc"])
    assert "| stripes | MuSc (zero-shot) | +0.050 (seeds +0.200, +0.050) |" in text


def test_multi_class_records_fill_every_category_row(runner):
    metrics = {f"test/{c}/{name}": 0.5 + i / 10 for i, c in enumerate(["stripes", "digit"]) for name in runner.METRICS}
    records = [{"method": "inp_former", "category": runner.MULTI, "seed": 0, "metrics": metrics}]
    text = runner.table(records, ["stripes", "digit"], ["inp_former"])
    assert "| stripes | INP-Former | 1 | 0.500 ± 0.000" in text and "| digit | INP-Former | 1 | 0.600 ± 0.000" in text
    assert "| **mean** | INP-Former | 1 | 0.550 ± 0.000" in text


def test_bad_arguments_are_named(runner, capsys):
    with pytest.raises(SystemExit):
        runner.parse(["--toy", "--out", "x", "--categories", "bottle"])
    assert "unknown categories ['bottle']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.parse(["--toy", "--out", "x", "--args", "nope=--x"])
    assert "METHOD=CLI_ARGS" in capsys.readouterr().err


def test_multi_class_setting_fits_once_and_reports_every_category(tmp_path, runner):
    tiny = " ".join([
        "inp_former=--trainer.max_steps=1", "--model.init_args.encoder_weights=null",
        "--model.init_args.num_decoder_blocks=2", "--data.init_args.num_train=2", "--data.init_args.num_test_good=2",
        "--data.init_args.num_test_defect=1",
    ])  # fmt: skip
    args = ["--toy", "--out", str(tmp_path), "--categories", "stripes", "digit", "--methods", "inp_former",
            "--seeds", "0", "--setting", "multi-class", "--args", tiny]  # fmt: skip
    text = runner.main(args)
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [(r["method"], r["category"]) for r in records] == [("inp_former", runner.MULTI)]
    assert {"test/stripes/image_auroc", "test/digit/image_auroc", "test/image_auroc"} <= set(records[0]["metrics"])
    assert "| stripes | INP-Former | 1 |" in text and "| digit | INP-Former | 1 |" in text
