import pytest
import torch
import torch.nn.functional as F

from lightning_regs.functional import PredictionTable, pskd_alpha, pskd_targets


def test_alpha_schedule_is_the_official_formula():
    assert [pskd_alpha(e, 0.8, 300) for e in (0, 149, 299)] == pytest.approx([0.8 / 300, 0.4, 0.8])
    assert pskd_alpha(400, 0.8, 300) == 0.8  # clipped past T


def test_targets_match_equation_six_and_unseen_rows_are_one_hot():
    labels = torch.tensor([2, 0, 1])
    previous = torch.rand(3, 4).softmax(-1)
    seen = torch.tensor([True, False, True])
    targets = pskd_targets(labels, previous, 0.3, seen)
    for row in (0, 2):
        expected = 0.7 * F.one_hot(labels[row], 4).float() + 0.3 * previous[row]
        torch.testing.assert_close(targets[row], expected)
    torch.testing.assert_close(targets[1], F.one_hot(labels[1], 4).float())
    torch.testing.assert_close(targets.sum(-1), torch.ones(3))


def test_targets_reject_soft_labels():
    with pytest.raises(ValueError, match="class ids"):
        pskd_targets(torch.rand(3), torch.rand(3, 4), 0.5)


def test_dense_table_round_trips_and_keeps_the_first_of_repeated_indices():
    table = PredictionTable(6, 3)
    probabilities = torch.rand(4, 3).softmax(-1)
    table.write(torch.tensor([5, 1, 5, 0]), probabilities)
    torch.testing.assert_close(table.read(torch.tensor([5, 1, 0])), probabilities[[0, 1, 3]])
    assert table.seen.tolist() == [True, True, False, False, False, True]


def test_float16_error_is_within_half_precision_rounding():
    probabilities = torch.rand(500, 10).pow(4).softmax(-1)
    table = PredictionTable(500, 10, storage="float16")
    table.write(torch.arange(500), probabilities)
    error = (table.read(torch.arange(500)) - probabilities).abs()
    assert (error <= probabilities * 2**-11 + 2**-24).all()
    assert error.max() > 0  # the storage really is half precision


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_loses_exactly_twice_the_dropped_mass_in_l1(k):
    probabilities = (torch.randn(200, 10) * 2).softmax(-1)
    table = PredictionTable(200, 10, top_k=k)
    table.write(torch.arange(200), probabilities)
    read = table.read(torch.arange(200))
    dropped = 1 - probabilities.topk(k, dim=1).values.sum(1)
    torch.testing.assert_close((read - probabilities).abs().sum(1), 2 * dropped, atol=1e-5, rtol=0)
    torch.testing.assert_close(read.sum(1), torch.ones(200))
    assert torch.equal(read.argmax(1), probabilities.argmax(1))


def test_bytes_per_sample_for_each_storage():
    assert PredictionTable(2, 1000).bytes_per_sample == 4001
    assert PredictionTable(2, 1000, storage="float16").bytes_per_sample == 2001
    assert PredictionTable(2, 1000, storage="float16", top_k=10).bytes_per_sample == 41


def test_state_round_trip_is_weights_only_loadable(tmp_path):
    table = PredictionTable(5, 4, storage="float16", top_k=2)
    table.write(torch.tensor([3, 1]), torch.rand(2, 4).softmax(-1))
    torch.save(table.state_dict(), tmp_path / "t.pt")
    restored = PredictionTable.from_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    torch.testing.assert_close(restored.read(torch.arange(5)), table.read(torch.arange(5)))
    assert torch.equal(restored.seen, table.seen)


def test_bad_table_arguments():
    with pytest.raises(ValueError, match="top_k"):
        PredictionTable(5, 4, top_k=5)
    with pytest.raises(ValueError, match="storage"):
        PredictionTable(5, 4, storage="bfloat16")


def test_repeated_indices_keep_what_a_row_by_row_loop_leaves_with_keep_last():
    """The official DDP path writes gathered rows one by one (the last copy wins); ``keep="last"`` is that loop."""
    index = torch.tensor([5, 1, 5, 0, 1, 5])
    probabilities = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)).softmax(-1)
    loop = torch.zeros(6, 3)
    for row, sample in enumerate(index.tolist()):
        loop[sample] = probabilities[row]
    last, first = PredictionTable(6, 3), PredictionTable(6, 3)
    last.write(index, probabilities, keep="last")
    first.write(index, probabilities)
    rows = torch.tensor([0, 1, 5])
    torch.testing.assert_close(last.read(rows), loop[rows])
    torch.testing.assert_close(first.read(rows), probabilities[[3, 1, 0]])
    assert not torch.allclose(first.read(rows), last.read(rows))
    with pytest.raises(ValueError, match="keep must be 'first' or 'last'"):
        first.write(index, probabilities, keep="middle")  # type: ignore[arg-type]
