"""estimate_llc against the SGLD stationary closed form of a quadratic, a degenerate loss, and its side effects."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.functional.llc import LLCEstimate, default_n_beta, estimate_llc

# The quadratic tests use the exact stationary law of the SGLD chain: for L(w) = ½·Σ h_i w_i² every coordinate is
# an AR(1), w ← ρ_i·w + √ε·ξ with ρ_i = 1 − ε·a_i/2 and a_i = nβ·h_i + γ, whose stationary variance is
# 1 / (a_i·(1 − ε·a_i/4)): the continuous-time 1/a_i (which gives the closed form ½·Σ nβh_i/(nβh_i + γ)) times a
# discretisation factor 1/(1 − ε·a_i/4). The tests take ε·a_i ≤ 0.1, so that factor is at most 2.6 % above 1.
# The Monte-Carlo error of the time average of x_t = ½·nβ·h_i·w_t² (variance 2·E[x]², autocorrelation ρ_i^(2k)) over
# N draws and C independent chains is at most sqrt(Σ_i 2·E[x_i]²·τ_i / (N·C)) with τ_i = (1 + ρ_i²) / (1 − ρ_i²).


def quadratic(h: torch.Tensor, centre: torch.Tensor | float = 0.0):
    def loss_fn(params: dict[str, torch.Tensor], batch: object) -> torch.Tensor:
        return 0.5 * (h * (params["w"] - centre) ** 2).sum()

    return loss_fn


def at_zero(d: int) -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(d, dtype=torch.float64, requires_grad=True)}


def stationary(h: torch.Tensor, n_beta: float, gamma: float, eps: float, draws: int, chains: int):
    """(continuous closed form, exact discrete-time stationary value, Monte-Carlo standard error)."""
    a = n_beta * h + gamma
    continuous = 0.5 * n_beta * h / a
    discrete = continuous / (1 - eps * a / 4)
    r = (1 - eps * a / 2) ** 2
    tau = (1 + r) / (1 - r)
    se = math.sqrt(float((2 * discrete**2 * tau).sum()) / (draws * chains))
    return float(continuous.sum()), float(discrete.sum()), se


def check_quadratic(
    d: int, n_beta: float, gamma: float, eps: float, draws: int, chains: int, burnin: int, off_zero: bool = False
) -> float:
    h = torch.linspace(1.0, 2.0, d, dtype=torch.float64)
    # off zero, w* = c and L = ½·Σ h_i (w − c)_i²: the localisation must pull to w*, not to the origin
    centre = torch.linspace(-1.0, 1.5, d, dtype=torch.float64) if off_zero else torch.zeros(d, dtype=torch.float64)
    assert eps * float((n_beta * h + gamma).max()) <= 0.1 + 1e-12  # the discretisation bias stays below 2.6 %
    # burn-in: the chains start at w* = 0 and the variance relaxes as ρ^(2t); leave < 1e-6 of it
    assert (1 - eps * float((n_beta * h + gamma).min()) / 2) ** (2 * burnin) < 1e-6
    estimate = estimate_llc(
        quadratic(h, centre),
        {"w": centre.clone().requires_grad_(True)},
        [None],
        num_chains=chains,
        num_draws=draws,
        num_burnin=burnin,
        step_size=eps,
        n_beta=n_beta,
        localization=gamma,
        generator=torch.Generator().manual_seed(0),
    )
    continuous, discrete, se = stationary(h, n_beta, gamma, eps, draws, chains)
    # 4 standard errors: a correct sampler fails with probability 6e-5 (the seed is fixed, so the test is stable).
    assert abs(estimate.llc - discrete) < 4 * se, (estimate.llc, discrete, se)
    # Against the closed form: the known discretisation bias (discrete - continuous, < 2.6 %) plus the same 4 se.
    assert abs(estimate.llc - continuous) < (discrete - continuous) + 4 * se, (estimate.llc, continuous, se)
    assert 4 * se < 0.08 * continuous  # the tolerance is tight enough to catch a factor in the step or the noise
    assert estimate.init_loss == 0.0 and not estimate.diverged.any(), estimate.reasons
    assert estimate.per_chain.shape == (chains,) and estimate.loss_trace.shape == (chains, draws)
    return continuous


def test_quadratic_without_localization_gives_half_the_dimension():
    continuous = check_quadratic(d=10, n_beta=50.0, gamma=0.0, eps=1e-3, draws=5000, chains=4, burnin=300)
    assert continuous == pytest.approx(10 / 2)


def test_quadratic_with_localization_gives_the_shrunk_sum():
    continuous = check_quadratic(
        d=10, n_beta=30.0, gamma=40.0, eps=1e-3, draws=5000, chains=4, burnin=300, off_zero=True
    )
    assert continuous < 0.6 * 10 / 2  # the shrinkage (to 2.62) is far larger than the tolerance (6 %)


def test_degenerate_loss_is_below_the_regular_value():
    # L = w1²·w2² at 0 in d = 2: its learning coefficient is 1/2, a regular model's d/2 = 1. At finite nβ/γ the
    # stationary E[nβ·L] under exp(−nβ·L − γ/2·|w|²) is smaller still; it is computed here by quadrature.
    n_beta, gamma = 100.0, 10.0
    grid = torch.linspace(-4.0, 4.0, 1601, dtype=torch.float64)
    w1, w2 = torch.meshgrid(grid, grid, indexing="ij")
    loss = (w1 * w2) ** 2
    log_density = -n_beta * loss - gamma / 2 * (w1**2 + w2**2)
    density = torch.exp(log_density - log_density.max())
    expected = float((n_beta * loss * density).sum() / density.sum())
    regular = 0.5 * 2 * (n_beta * 2) / (n_beta * 2 + gamma)  # ½·Σ nβh/(nβh+γ) of the regular w1² + w2², h = 2

    def degenerate(params: dict[str, torch.Tensor], batch: object) -> torch.Tensor:
        w = params["w"]
        return (w[0] * w[1]) ** 2

    estimate = estimate_llc(
        degenerate,
        at_zero(2),
        [None],
        num_chains=4,
        num_draws=4000,
        num_burnin=300,
        step_size=2e-3,
        n_beta=n_beta,
        localization=gamma,
    )
    assert not estimate.diverged.any(), estimate.reasons
    assert estimate.llc < 0.5 * regular  # clearly below d/2 (≈ 0.95 here)
    # 30 %: 4 standard errors. The chains mix slowly along the flat axes (γ alone pulls there), so one chain's
    # estimate has std 0.026 at 4000 draws, and the step's bias is +2.4 % (both from 2000 chains of the same recursion).
    assert estimate.llc == pytest.approx(expected, rel=0.3), (estimate.llc, expected)


def test_very_strong_localization_drives_the_estimate_to_zero():
    h = torch.linspace(1.0, 2.0, 4, dtype=torch.float64)
    estimates = []
    for gamma in (1e2, 1e5):
        eps = 0.1 / (50.0 * 2.0 + gamma)
        estimate = estimate_llc(
            quadratic(h), at_zero(4), [None], num_chains=2, num_draws=400, num_burnin=100, step_size=eps,
            n_beta=50.0, localization=gamma,
        )  # fmt: skip
        estimates.append(estimate.llc)
    assert estimates[1] < estimates[0] / 20
    assert 0 < estimates[1] < 0.01  # the closed form is 0.0015


def test_frozen_parameter_stays_at_the_optimum_and_adds_nothing():
    h = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    frozen = torch.tensor([0.5, -1.0], dtype=torch.float64)  # requires_grad False
    steps = torch.tensor(7)  # an integer buffer passes through
    seen: list[torch.Tensor] = []

    def with_frozen(params: dict[str, torch.Tensor], batch: object) -> torch.Tensor:
        seen.append(params["frozen"])
        assert params["steps"] is steps
        return quadratic(h)(params, batch) + (params["frozen"] ** 2).sum() * (1 + params["w"].sum() ** 2)

    def without(params: dict[str, torch.Tensor], batch: object) -> torch.Tensor:
        return quadratic(h)(params, batch) + (frozen**2).sum() * (1 + params["w"].sum() ** 2)

    kwargs = {"num_chains": 2, "num_draws": 50, "step_size": 1e-3, "n_beta": 10.0, "localization": 1.0}
    params = {**at_zero(3), "frozen": frozen, "steps": steps}
    result = estimate_llc(with_frozen, params, [None], **kwargs)
    reference = estimate_llc(without, at_zero(3), [None], **kwargs)
    assert seen and all(tensor is frozen for tensor in seen)
    torch.testing.assert_close(frozen, torch.tensor([0.5, -1.0], dtype=torch.float64), rtol=0, atol=0)
    # the same noise moves only w, so both estimates agree: the frozen part is a constant offset of L, paired away
    torch.testing.assert_close(result.per_chain, reference.per_chain)
    assert result.init_loss == pytest.approx(1.25)


def test_params_are_not_modified_and_the_global_rng_is_untouched():
    h = torch.linspace(1.0, 2.0, 4, dtype=torch.float64)
    params = {"w": torch.full((4,), 0.25, dtype=torch.float64, requires_grad=True)}
    kwargs = {"num_chains": 2, "num_draws": 30, "step_size": 1e-3, "n_beta": 10.0}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = estimate_llc(quadratic(h), params, [None], generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    again = estimate_llc(quadratic(h), params, [None], generator=torch.Generator().manual_seed(5), **kwargs)
    other = estimate_llc(quadratic(h), params, [None], generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.equal(first.loss_trace, again.loss_trace) and first.llc == again.llc
    assert not torch.equal(first.loss_trace, other.loss_trace) and first.llc != other.llc
    assert torch.equal(params["w"], torch.full((4,), 0.25, dtype=torch.float64)) and params["w"].grad is None
    default = estimate_llc(quadratic(h), params, [None], **kwargs)  # no generator: a fresh one seeded 0
    assert torch.equal(default.loss_trace, estimate_llc(quadratic(h), params, [None], **kwargs).loss_trace)
    assert torch.equal(torch.get_rng_state(), state)


def test_minibatches_are_cycled_per_chain_and_paired_with_the_loss_at_the_optimum():
    h = torch.tensor([1.0, 2.0], dtype=torch.float64)
    offsets = [torch.tensor(float(k), dtype=torch.float64) for k in range(3)]
    stepped_on: list[float] = []

    def shifted(params: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            stepped_on.append(float(batch))
        return quadratic(h)(params, None) + batch  # L_m(w) = L(w) + c_m: the minibatch noise the pairing cancels

    kwargs = {"num_chains": 2, "num_draws": 4, "num_burnin": 1, "step_size": 1e-2, "n_beta": 5.0}
    result = estimate_llc(shifted, at_zero(2), offsets, **kwargs)
    assert stepped_on == [0.0, 1.0, 2.0, 0.0, 1.0] * 2  # each chain reads the list from its start, restarted
    reference = estimate_llc(quadratic(h), at_zero(2), [None], **kwargs)
    torch.testing.assert_close(result.per_chain, reference.per_chain)
    assert result.init_loss == pytest.approx((1 + 2 + 0 + 1) / 4)  # the draws' minibatches are 1, 2, 0, 1

    stepped_on.clear()
    estimate_llc(shifted, at_zero(2), lambda: iter(offsets[:2]), **kwargs)  # a factory, restarted as needed
    assert stepped_on == [0.0, 1.0, 0.0, 1.0, 0.0] * 2
    stepped_on.clear()
    estimate_llc(shifted, at_zero(2), iter(offsets * 4), **kwargs)  # a one-shot iterator: one shared stream
    assert stepped_on == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="one-shot iterator and ran out"):
        estimate_llc(shifted, at_zero(2), iter(offsets * 3), **kwargs)


def test_divergence_is_flagged_with_a_reason():
    h = torch.tensor([1.0, 2.0], dtype=torch.float64)
    blown = estimate_llc(quadratic(h), at_zero(2), [None], num_chains=2, num_draws=2000, step_size=1.0, n_beta=10.0)
    assert blown.diverged.all() and all("non-finite" in reason for reason in blown.reasons)
    assert math.isnan(blown.llc) and blown.per_chain.isnan().all()

    # A nearly flat loss without localisation: the chains diffuse (E|w_t|² ≈ d·ε·t, far from the equilibrium nβ
    # would set after ~1/(ε·nβ·c) = 1e5 steps), so the loss rises steadily: the estimate is not stationary yet.
    def flat(params: dict[str, torch.Tensor], batch: object) -> torch.Tensor:
        return 1e-3 * (params["w"] ** 2).sum()

    rising = estimate_llc(flat, at_zero(100), [None], num_chains=2, num_draws=400, step_size=1e-2, n_beta=1.0)
    assert rising.diverged.all() and all("still rising" in reason for reason in rising.reasons), rising.reasons
    assert "chain 0: loss still rising" in rising.summary() and math.isfinite(rising.llc)
    localized = estimate_llc(
        flat, at_zero(100), [None], num_chains=2, num_draws=400, num_burnin=200, step_size=1e-2, n_beta=1.0,
        localization=10.0,
    )  # fmt: skip
    assert not localized.diverged.any() and localized.reasons == ("", ""), localized.reasons


def test_named_errors():
    h = torch.tensor([1.0], dtype=torch.float64)
    ok = {"num_draws": 2}
    for n_beta in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="n_beta must be a finite number > 0"):
            estimate_llc(quadratic(h), at_zero(1), [None], n_beta=n_beta, **ok)
    for step_size in (0.0, -1e-3):
        with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
            estimate_llc(quadratic(h), at_zero(1), [None], n_beta=1.0, step_size=step_size, **ok)
    with pytest.raises(ValueError, match="localization must be a finite number ≥ 0"):
        estimate_llc(quadratic(h), at_zero(1), [None], n_beta=1.0, localization=-1.0, **ok)
    with pytest.raises(ValueError, match="num_draws must be an integer ≥ 1"):
        estimate_llc(quadratic(h), at_zero(1), [None], n_beta=1.0, num_draws=0)
    with pytest.raises(ValueError, match="num_chains must be an integer ≥ 1"):
        estimate_llc(quadratic(h), at_zero(1), [None], n_beta=1.0, num_chains=0, **ok)
    with pytest.raises(ValueError, match="num_burnin must be an integer ≥ 0"):
        estimate_llc(quadratic(h), at_zero(1), [None], n_beta=1.0, num_burnin=-1, **ok)
    frozen = {"w": torch.zeros(1, dtype=torch.float64), "count": torch.tensor(3)}
    with pytest.raises(ValueError, match="No parameter to sample"):
        estimate_llc(quadratic(h), frozen, [None], n_beta=1.0, **ok)
    with pytest.raises(ValueError, match="must return a scalar floating tensor"):
        estimate_llc(lambda params, batch: params["w"] * 2, at_zero(3), [None], n_beta=1.0, **ok)
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="at the given params"):
            estimate_llc(lambda params, batch, bad=bad: params["w"].sum() + bad, at_zero(1), [None], n_beta=1.0, **ok)
    with pytest.raises(ValueError, match="batches is empty"):
        estimate_llc(quadratic(h), at_zero(1), [], n_beta=1.0, **ok)
    with pytest.raises(ValueError, match="gave no minibatch"):
        estimate_llc(quadratic(h), at_zero(1), lambda: iter([]), n_beta=1.0, **ok)
    for n in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="integer above 1"):
            default_n_beta(n)
    assert default_n_beta(1000) == pytest.approx(1000 / math.log(1000))


def test_tiny_linear_model_through_functional_call():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 5, generator=generator)
    targets = torch.randint(3, (64,), generator=generator)
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        return loss

    optimizer.step(closure)  # w* near a minimum of the training loss, where the LLC is defined
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    before = {name: tensor.detach().clone() for name, tensor in model.named_parameters()}

    def loss_fn(params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    loader = DataLoader(TensorDataset(inputs, targets), batch_size=16)  # a re-iterable, read from its start
    estimate = estimate_llc(
        loss_fn,
        dict(model.named_parameters()),
        loader,
        num_chains=3,
        num_draws=200,
        num_burnin=50,
        step_size=1e-3,
        n_beta=default_n_beta(64),
        localization=1.0,
    )
    assert isinstance(estimate, LLCEstimate)
    assert math.isfinite(estimate.llc) and estimate.llc > 0 and math.isfinite(estimate.llc_std)
    with torch.no_grad():
        full_loss = float(F.cross_entropy(model(inputs), targets))
    assert estimate.init_loss == pytest.approx(full_loss, rel=1e-5)  # the loader's batches tile the data set once
    assert not estimate.diverged.any(), estimate.reasons
    for name, tensor in model.named_parameters():
        assert torch.equal(tensor, before[name]) and tensor.grad is None


def test_a_chain_whose_estimate_is_above_d_is_flagged_not_reported_as_a_coefficient():
    # A step far too large for nβ·h: the chain jumps out and its loss settles high but finite (cross-entropy grows
    # linearly), so neither the non-finite nor the rising check sees it; λ̂ far above d/2 does.
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    data = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 8, generator=data), torch.randint(3, (16,), generator=data)) for _ in range(4)]

    def loss_fn(params, batch):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, (batch[0],)), batch[1])

    params = dict(model.named_parameters())
    blown = estimate_llc(loss_fn, params, batches, num_chains=2, num_draws=20, step_size=10.0, n_beta=100.0)
    assert blown.llc > 27 and blown.diverged.all(), blown.summary()
    assert all("above d/2 = 13.5" in reason for reason in blown.reasons)
    calm = estimate_llc(loss_fn, params, batches, num_chains=2, num_draws=20, step_size=1e-4, n_beta=100.0,
                        localization=100.0)  # fmt: skip
    assert not calm.diverged.any(), calm.summary()


def test_a_step_that_overshoots_the_curvature_is_flagged_above_half_the_dimension():
    # On L = ½·Σ w², a chain whose ε·nβ·h is 1.6 samples a variance 1/(1 − 0.4) too wide: λ̂ ≈ 0.833·d, above the
    # largest coefficient d/2 by far more than its draws' spread allows, yet below d (the bound before this check).
    d, n_beta = 2000, 100.0
    h = torch.ones(d, dtype=torch.float64)
    settings = {"num_chains": 2, "num_draws": 200, "num_burnin": 200, "n_beta": n_beta}
    wide = estimate_llc(quadratic(h), at_zero(d), [None], step_size=1.6 / n_beta, **settings)
    _, expected, _ = stationary(h, n_beta, 0.0, 1.6 / n_beta, 200, 2)
    assert expected == pytest.approx(d / 2 / 0.6) and d / 2 < 0.9 * wide.llc and wide.llc < d
    assert wide.diverged.all() and all("above d/2 = 1000" in reason for reason in wide.reasons), wide.summary()
    fine = estimate_llc(quadratic(h), at_zero(d), [None], step_size=0.1 / n_beta, **settings)
    assert fine.llc > d / 2 and not fine.diverged.any(), fine.summary()  # 2.6 % above d/2: the discretisation


def test_trace_rise_is_small_for_settled_chains_and_large_for_drifting_ones():
    h = torch.linspace(1.0, 2.0, 10, dtype=torch.float64)
    settled = estimate_llc(
        quadratic(h), at_zero(10), [None], num_chains=4, num_draws=2000, num_burnin=300, step_size=1e-3, n_beta=50.0
    )
    assert settled.trace_rise.shape == (4,) and settled.trace_rise.abs().max() < 4, settled.trace_rise
    # no burn-in and a slow chain: the variance is still growing from w* over the whole trace (2,000 coordinates, so
    # that the growth stands far above the trace's noise)
    wide = torch.ones(2000, dtype=torch.float64)
    drifting = estimate_llc(
        quadratic(wide), at_zero(2000), [None], num_chains=4, num_draws=100, step_size=1e-4, n_beta=50.0
    )
    assert (drifting.trace_rise > 4).all() and drifting.diverged.all(), drifting.trace_rise
    short = estimate_llc(quadratic(h), at_zero(10), [None], num_chains=2, num_draws=5, step_size=1e-3, n_beta=50.0)
    assert short.trace_rise.isnan().all()  # fewer than 10 draws in the second half: no trend to read
