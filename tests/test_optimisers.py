"""The latent-space optimisers: they minimise, count evaluations exactly, and are seeded."""

from __future__ import annotations

import math

import cma
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from ggl.attack import optimisers as opt
from ggl.attack.optimisers import minimise
from ggl.settings import AdamConfig, CMAESConfig, TurboConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The GP's matrices here are tiny: with several BLAS/OpenMP threads on a busy machine
    each fit took ~15x longer (threads spinning against each other), so run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


class Counted:
    """A shifted sphere that counts the latents it scores and the calls it gets."""

    def __init__(self) -> None:
        self.evaluations = 0
        self.sizes: list[int] = []
        self.largest = 0.0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.evaluations += len(z)
        self.sizes.append(len(z))
        self.largest = max(self.largest, float(z.detach().abs().max()))
        return (z - torch.linspace(-1, 1, z.shape[1]).to(z)).pow(2).sum(1)


# Small GP settings keep TuRBO fast: a handful of batches, few candidates, short fits.
def small_turbo(**kw) -> TurboConfig:
    return TurboConfig(**{"n_init": 20, "n_candidates": 300, "fit_maxiter": 20, **kw})


# (method, settings, budget, dimension, required drop of the best loss after the first call)
CASES = [("adam", AdamConfig(), 150, 128, 0.01),
         ("adam-step-signed", AdamConfig(schedule="step", signed=True), 150, 128, 0.1),
         ("adam-warmup-cosine", AdamConfig(schedule="warmup-cosine"), 150, 128, 0.01),
         ("cmaes", CMAESConfig(popsize=20), 1000, 128, 0.5),
         ("turbo", small_turbo(), 80, 16, 0.6),
         ("turbo", small_turbo(), 70, 128, 0.9)]


@pytest.mark.parametrize(("method", "cfg", "budget", "dim", "drop"), CASES,
                         ids=[f"{c[0]}-d{c[3]}" for c in CASES])
def test_each_optimiser_lowers_the_loss_and_counts_exactly(method, cfg, budget, dim, drop):
    f, calls = Counted(), []
    result = minimise(method.split("-")[0], f, dim, budget, cfg, seed=0,
                      progress=lambda n, loss: calls.append((n, loss)))
    assert result.best_loss < drop * result.curve[0][1]
    assert result.evaluations == f.evaluations == budget
    assert len(result.curve) == len(f.sizes) and calls == result.curve
    assert result.curve[-1] == (result.evaluations, result.best_loss)
    evals, losses = zip(*result.curve, strict=True)
    assert all(a < b for a, b in zip(evals, evals[1:], strict=False))
    assert all(a >= b for a, b in zip(losses, losses[1:], strict=False))
    assert result.best_z.shape == (dim,)
    assert float(f(result.best_z[None])) == pytest.approx(result.best_loss, rel=1e-5)
    assert result.seconds > 0


def test_turbo_stays_in_its_box():
    f = Counted()
    minimise("turbo", f, 8, 40, small_turbo(n_init=10, bound=0.5), seed=0)
    assert f.largest <= 0.5


@pytest.mark.parametrize("budget", [100, 107, 139, 13])
def test_cmaes_tells_each_full_generation_once_and_spends_the_budget(budget, monkeypatch):
    told = []
    tell = cma.CMAEvolutionStrategy.tell
    monkeypatch.setattr(cma.CMAEvolutionStrategy, "tell",
                        lambda self, xs, ys, *a, **k: (told.append(len(xs)),
                                                       tell(self, xs, ys, *a, **k))[1])
    f = Counted()
    result = minimise("cmaes", f, 16, budget, CMAESConfig(popsize=20), seed=1)
    assert told == [20] * (budget // 20)  # the truncated last generation is scored, not told
    assert result.info["generations"] == budget // 20
    assert result.info["untold_evaluations"] == budget % 20
    assert result.evaluations == f.evaluations == budget
    assert f.sizes == [20] * (budget // 20) + [budget % 20] * (budget % 20 > 0)


@pytest.mark.parametrize(("budget", "chunk", "design"), [(33, 0, "lhs"), (47, 4, "sobol")])
def test_turbo_spends_exactly_its_budget_in_batches(budget, chunk, design):
    f = Counted()
    cfg = small_turbo(n_init=10, batch_size=5, init_chunk=chunk, design=design)
    result = minimise("turbo", f, 8, budget, cfg, seed=0)
    design = [chunk] * (10 // chunk) + [10 % chunk] * (10 % chunk > 0) if chunk else [10]
    batches = [5] * ((budget - 10) // 5) + [(budget - 10) % 5] * ((budget - 10) % 5 > 0)
    assert f.sizes == design + batches
    assert result.evaluations == f.evaluations == budget
    assert result.info["restarts"] == 0


def test_turbo_restarts_with_a_fresh_design_when_the_region_collapses():
    f = Counted()
    cfg = small_turbo(n_init=6, batch_size=3, failure_tolerance=1, length_min=0.3)
    result = minimise("turbo", f, 4, 45, cfg, seed=0)
    designs, restarts = f.sizes.count(6), result.info["restarts"]
    # one design per (re)start, scored fresh; a restart on the very last tell leaves its
    # design unasked
    assert designs >= 2 and designs in (restarts, restarts + 1)
    assert result.evaluations == f.evaluations == 45


def test_turbo_trust_region_shrinks_after_failures():
    turbo = opt.Turbo(4, small_turbo(n_init=4, batch_size=2, failure_tolerance=2), seed=0)
    turbo.tell(turbo.ask(), torch.arange(4.0))  # the design: best loss 0
    for _ in range(2):
        turbo.tell(turbo.ask(), torch.full((2,), 5.0))
    assert turbo.length == pytest.approx(0.4)
    for _ in range(3):
        turbo.tell(turbo.ask(), torch.full((2,), -1.0) * 2 ** len(turbo.Y))
    assert turbo.length == pytest.approx(0.8)
    assert turbo.failure_tolerance == 2
    assert opt.Turbo(128, TurboConfig(), 0).failure_tolerance == 13  # the paper's


CHEAP = [("adam", AdamConfig(), 30), ("cmaes", CMAESConfig(popsize=10), 35),
         ("turbo", small_turbo(n_init=10, batch_size=4), 22)]


@pytest.mark.parametrize(("method", "cfg", "budget"), CHEAP, ids=[c[0] for c in CHEAP])
def test_same_seed_same_answer_and_global_rngs_untouched(method, cfg, budget):
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = minimise(method, Counted(), 32, budget, cfg, seed=3).best_z
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    torch.rand(5)  # a caller drawing in between changes nothing
    np.random.rand(5)
    b = minimise(method, Counted(), 32, budget, cfg, seed=3).best_z
    c = minimise(method, Counted(), 32, budget, cfg, seed=4).best_z
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert not torch.equal(a, c)


def test_schedules():
    assert opt.lr_factor("none", 50, 100) == 1
    assert [opt.lr_factor("step", s, 800) for s in (0, 299, 300, 500, 700, 799)] == \
        pytest.approx([1, 1, 0.1, 0.01, 1e-3, 1e-3])
    assert opt.lr_factor("warmup-cosine", 0, 100) == 0
    assert opt.lr_factor("warmup-cosine", 2, 100) == pytest.approx(0.4)
    assert opt.lr_factor("warmup-cosine", 50, 100) == 1
    assert opt.lr_factor("warmup-cosine", 75, 100) == pytest.approx(1)
    assert opt.lr_factor("warmup-cosine", 99, 100) < 0.01


def test_entry_point_checks_its_arguments():
    with pytest.raises(ValueError, match="allowed are adam, cmaes, turbo"):
        minimise("lbfgs", Counted(), 4, 10, None, seed=0)
    with pytest.raises(TypeError, match="AdamConfig"):
        minimise("adam", Counted(), 4, 10, CMAESConfig(), seed=0)
    with pytest.raises(ValueError, match="schedule"):
        AdamConfig(schedule="cosine")
    with pytest.raises(ValueError, match="length_min"):
        TurboConfig(length_min=1.0)
    assert set(opt.OPTIMISERS) == set(opt.OPTIMISER_CONFIGS) == {"adam", "cmaes", "turbo"}


def test_latin_hypercube_puts_one_point_in_each_slice():
    u = opt.latin_hypercube(7, 3, torch.Generator().manual_seed(0))
    assert sorted((u * 7).floor().T.flatten().tolist()) == sorted(list(range(7)) * 3)


def test_non_finite_losses_rank_last():
    assert opt.finite(torch.tensor([1.0, math.nan, math.inf, 3.0])).tolist() == [1, 4, 4, 3]


def test_adam_steps_back_from_a_non_finite_loss_and_keeps_the_best_finite_point():
    def objective(z: torch.Tensor) -> torch.Tensor:
        loss = (z - 3).pow(2).sum(1)  # minimum at 3, but beyond 1 the "simulation diverges"
        return torch.where(z.max(1).values > 1, torch.full_like(loss, float("nan")), loss)

    result = minimise("adam", objective, 4, 40, AdamConfig(lr=0.3), seed=0, device="cpu")
    assert math.isfinite(result.best_loss) and result.evaluations == 40
    assert float(result.best_z.max()) <= 1
