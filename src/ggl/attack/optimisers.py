"""Latent-space minimisers behind one small interface, budgets counted in evaluations.

An objective maps a batch of latents (n, d) to (n,) losses (differentiably, for Adam). One
evaluation = one latent scored, whatever the optimiser: this fixes the authors' mixed budget
units (Adam updates, BO points, CMA-ES rounds that silently dropped most candidates).

The gradient-free methods are ask/tell objects: ``ask(limit)`` proposes at most ``limit``
latents, ``run_ask_tell`` scores them in ONE objective call and keeps the best point, the
evaluation count and the loss curve, ``tell`` takes the losses. Every random stream is derived
from ``seed``; none reads or leaves a mark on the caller's global torch or numpy RNG state.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from ggl.runtime import derive_seed
from ggl.settings import OPTIMISER_CONFIGS, AdamConfig, CMAESConfig, TurboConfig

Objective = Callable[[torch.Tensor], torch.Tensor]  # (n, d) latents -> (n,) losses
Progress = Callable[[int, float], None]  # (evaluations so far, best loss so far)


def finite(losses: torch.Tensor) -> torch.Tensor:
    """Losses with non-finite entries replaced by a value worse than every finite one, so a
    diverged candidate ranks last instead of poisoning cma's ranking or the GP's data."""
    losses = losses.detach().double().cpu().clone()
    bad = ~torch.isfinite(losses)
    if bad.any():
        good = losses[~bad]
        losses[bad] = float(good.max()) + 1.0 if len(good) else 1e300
    return losses


# --- results and bookkeeping ---------------------------------------------------------------

@dataclass
class OptimiseResult:
    best_z: torch.Tensor  # (d,), on the run's device, as evaluated
    best_loss: float
    evaluations: int  # exactly the evaluations made (never above the budget)
    curve: list[tuple[int, float]] = field(default_factory=list)  # after every objective call
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)  # e.g. generations, restarts
    # (evaluations, best point so far) at checkpoint_counts(budget); the last is best_z
    checkpoints: list[tuple[int, torch.Tensor]] = field(default_factory=list)


def checkpoint_counts(budget: int) -> list[int]:
    """Evaluation counts at which the best point so far is kept: budget * 2^-k, k = 5..0,
    rounded up, at least 1, without repeats."""
    return sorted({max(1, math.ceil(budget / 2**k)) for k in range(6)})


class Tracker:
    """Best point ever evaluated, evaluation count and loss curve, updated after every call;
    with a ``budget``, a copy of the best point when the count first reaches each of
    ``checkpoint_counts(budget)`` (recorded at the count reached: a batch may pass several)."""

    def __init__(self, progress: Progress | None = None, budget: int = 0) -> None:
        self.best_z: torch.Tensor | None = None
        self.best_loss = math.inf
        self.evaluations = 0
        self.curve: list[tuple[int, float]] = []
        self.progress = progress
        self.start = time.perf_counter()
        self.pending = checkpoint_counts(budget) if budget else []
        self.checkpoints: list[tuple[int, torch.Tensor]] = []

    def record(self, z: torch.Tensor, losses: torch.Tensor) -> None:
        losses = losses.detach().double().cpu().view(-1)
        if len(losses) != len(z):
            raise ValueError(f"the objective returned {len(losses)} losses for {len(z)} latents")
        self.evaluations += len(losses)
        i = int(torch.argmin(torch.nan_to_num(losses, nan=math.inf)))
        if float(losses[i]) < self.best_loss:
            self.best_loss, self.best_z = float(losses[i]), z[i].detach().clone()
        self.curve.append((self.evaluations, self.best_loss))
        reached = [c for c in self.pending if c <= self.evaluations]
        if reached and self.best_z is not None:
            self.pending = self.pending[len(reached):]
            self.checkpoints.append((self.evaluations, self.best_z.clone()))
        if self.progress is not None:
            self.progress(self.evaluations, self.best_loss)

    def final_checkpoints(self) -> list[tuple[int, torch.Tensor]]:
        """The checkpoints, ending with the final best point at the final count."""
        if self.best_z is None or (self.checkpoints
                                   and self.checkpoints[-1][0] == self.evaluations):
            return self.checkpoints
        return [*self.checkpoints, (self.evaluations, self.best_z.clone())]

    def result(self, **info: Any) -> OptimiseResult:
        if self.best_z is None:  # every loss NaN, or no evaluation at all
            raise RuntimeError(f"no finite loss in {self.evaluations} evaluations")
        return OptimiseResult(self.best_z, self.best_loss, self.evaluations, self.curve,
                              time.perf_counter() - self.start, info, self.final_checkpoints())


# --- Adam --------------------------------------------------------------------------------

def _warmup_cosine(step: int, steps: int) -> float:
    """The ImageNet script's: linear warm-up over the first 5 % of the steps, cosine
    ramp-down over the last 25 % (so the first step has learning rate 0, as theirs)."""
    t = step / max(steps, 1)
    ramp_down = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1.0 - t) / 0.25))
    return ramp_down * min(1.0, t / 0.05)


def _multistep(step: int, steps: int) -> float:
    """The CelebA script's MultiStepLR: gamma 0.1 at 3/8, 5/8 and 7/8 of the steps."""
    return 0.1 ** sum(step >= steps * m // 8 for m in (3, 5, 7))


SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "none": lambda step, steps: 1.0, "warmup-cosine": _warmup_cosine, "step": _multistep}


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``steps``."""
    return SCHEDULES[schedule](step, steps)


def run_adam(objective: Objective, dim: int, budget: int, cfg: AdamConfig, seed: int,
             device: torch.device, progress: Progress | None = None) -> OptimiseResult:
    """Adam on the objective's gradient at batch 1: one step = one evaluation. The loss is
    that of z before the step, so the point recorded is the point scored."""
    return adam_lockstep(objective, dim, budget, cfg, [seed], device, progress)[0]


def adam_lockstep(objective: Objective, dim: int, budget: int, cfg: AdamConfig,
                  seeds: list[int], device: torch.device, progress: Progress | None = None
                  ) -> list[OptimiseResult]:
    """``run_adam`` for N independent problems at once, problem i seeded by ``seeds[i]``: the
    objective maps (N, dim) to (N,), row i the loss of problem i's latent alone (each update
    attacked side by side, ``ggl.attack.lockstep``). Each problem keeps its own Adam state and
    takes the steps it would take alone; ``progress`` follows the first."""
    trackers = [Tracker(progress if i == 0 else None, budget) for i in range(len(seeds))]
    points = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(derive_seed(seed, "adam-start"))
        z0 = torch.randn(1, dim, generator=gen, dtype=torch.float32) * cfg.init_std
        points.append(z0.to(device).requires_grad_(True))
    optimisers = [torch.optim.Adam([z], lr=cfg.lr) for z in points]
    for step in range(budget):
        for opt in optimisers:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg.schedule, step, budget)
            opt.zero_grad(set_to_none=True)
        loss = objective(points[0] if len(points) == 1 else torch.cat(points))
        for i, (z, tracker) in enumerate(zip(points, trackers, strict=True)):
            tracker.record(z, loss[i:i + 1])
        if step == budget - 1:
            break  # a last step would move z to a point nobody scores
        finite = torch.isfinite(loss.detach())
        if bool(finite.all()):
            loss.sum().backward()
        elif bool(finite.any()):
            loss[finite].sum().backward()
        for z, opt, tracker, ok in zip(points, optimisers, trackers, finite.tolist(),
                                       strict=True):
            if not ok:
                # e.g. a simulated local training that diverged here: no gradient to follow,
                # so go back to the best point so far (or halfway to the prior's mean), go on
                with torch.no_grad():
                    z.copy_(tracker.best_z[None] if tracker.best_z is not None else z / 2)
                continue
            if cfg.signed:
                z.grad.sign_()
            opt.step()
    return [tracker.result(steps=budget) for tracker in trackers]


# --- the ask/tell driver and CMA-ES ---------------------------------------------------------

def run_ask_tell(cls: type[CMAES | Turbo], objective: Objective, dim: int, budget: int,
                 cfg: Any, seed: int, device: torch.device,
                 progress: Progress | None = None) -> OptimiseResult:
    """Score ``cls(dim, cfg, seed)``'s proposals, one objective call each, to ``budget``."""
    opt = cls(dim, cfg, seed)
    tracker = Tracker(progress, budget)
    while tracker.evaluations < budget:
        z = opt.ask(budget - tracker.evaluations).to(device, torch.float32)
        if not 0 < len(z) <= budget - tracker.evaluations:
            raise RuntimeError(f"{type(opt).__name__}.ask returned {len(z)} latents for "
                               f"{budget - tracker.evaluations} remaining evaluations")
        with torch.no_grad():
            losses = objective(z)
        tracker.record(z, losses)
        opt.tell(z, losses.detach().double().cpu())
    return tracker.result(**opt.info())


class CMAES:
    """The ``cma`` package's CMA-ES, told exactly once per full generation: when fewer than
    ``popsize`` evaluations remain, ``ask(limit)`` returns the first ``limit`` candidates of a
    fresh generation, scored and counted but not told (CMA's update needs the ranking of a whole
    population). ``cma`` draws from numpy's global RNG, so every call into it runs on a private
    numpy state swapped in and out: neither side disturbs the other."""

    def __init__(self, dim: int, cfg: CMAESConfig, seed: int) -> None:
        import cma

        gen = torch.Generator().manual_seed(derive_seed(seed, "cmaes-start"))
        x0 = torch.randn(dim, generator=gen, dtype=torch.float64) * cfg.init_std
        self.popsize, self.generations, self.untold = cfg.popsize, 0, 0
        self._asked: list[np.ndarray] | None = None
        self._state: dict[str, Any] | None = None
        options = {"popsize": cfg.popsize, "seed": derive_seed(seed, "cmaes") + 1,  # 0 = 'time'
                   "verbose": -9, "verb_log": 0, "verb_disp": 0}
        with self._numpy_rng():
            self.es = cma.CMAEvolutionStrategy(x0.numpy(), cfg.sigma0, options)

    @contextlib.contextmanager
    def _numpy_rng(self) -> Iterator[None]:
        outer = np.random.get_state()
        if self._state is not None:
            np.random.set_state(self._state)
        try:
            yield
        finally:
            self._state = np.random.get_state()
            np.random.set_state(outer)

    def ask(self, limit: int | None = None) -> torch.Tensor:
        with self._numpy_rng():
            self._asked = self.es.ask()
        return torch.tensor(np.stack(self._asked[:limit]), dtype=torch.float32)

    def tell(self, z: torch.Tensor, losses: torch.Tensor) -> None:
        if self._asked is None:
            raise RuntimeError("tell without ask")
        if len(z) < self.popsize:
            self.untold += len(z)
        else:
            with self._numpy_rng():
                self.es.tell(self._asked, finite(losses).tolist())
            self.generations += 1
        self._asked = None

    def info(self) -> dict[str, int]:
        return {"generations": self.generations, "untold_evaluations": self.untold}


# --- TuRBO-1 on BoTorch ----------------------------------------------------------------------

def latin_hypercube(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """n points in [0, 1]^dim, one in each of the n equal slices of every coordinate."""
    slices = torch.argsort(torch.rand(dim, n, generator=gen, dtype=torch.float64), dim=1).T
    return (slices + torch.rand(n, dim, generator=gen, dtype=torch.float64)) / n


def sobol_design(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    from torch.quasirandom import SobolEngine

    seed = int(torch.randint(2**31 - 1, (), generator=gen))
    return SobolEngine(dim, scramble=True, seed=seed).draw(n, dtype=torch.float64)


DESIGNS: dict[str, Callable[[int, int, torch.Generator], torch.Tensor]] = {
    "lhs": latin_hypercube, "sobol": sobol_design}


class Turbo:
    """TuRBO-1 (Eriksson et al., NeurIPS 2019), written from the paper on BoTorch's API.

    Points live in the unit cube, mapped affinely to the box. After an initial design, each batch
    fits a GP (Matern-5/2 ARD, constant mean, standardised outcomes, float64 on the CPU) to the
    current restart's points; the trust region is centred on their best point, its sides
    ``length`` times the lengthscales over their geometric mean (volume length^d), clipped to the
    cube; Sobol candidates in it each replace a random subset of the centre's coordinates (with
    probability min(20/d, 1), at least one); Thompson sampling picks the batch. A batch beating
    the restart's best by over 1e-3 of its magnitude is a success; ``success_tolerance`` of them
    in a row double the length (up to length_max), ``failure_tolerance`` failures halve it; below
    ``length_min`` the search restarts from a fresh initial design."""

    def __init__(self, dim: int, cfg: TurboConfig, seed: int) -> None:
        self.dim, self.cfg, self.seed = dim, cfg, seed
        self.failure_tolerance = cfg.failure_tolerance or math.ceil(
            max(4 / cfg.batch_size, dim / cfg.batch_size))
        self.restarts, self.batches = 0, 0
        self._asked: torch.Tensor | None = None
        self._restart()

    def _restart(self) -> None:
        self.length = self.cfg.length_init
        self.successes = self.failures = 0
        self.X = torch.zeros(0, self.dim, dtype=torch.float64)  # unit cube
        self.Y = torch.zeros(0, dtype=torch.float64)  # losses
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "turbo-design", self.restarts))
        self._design = DESIGNS[self.cfg.design](self.cfg.n_init, self.dim, gen)

    def ask(self, limit: int | None = None) -> torch.Tensor:
        limit = math.inf if limit is None else limit
        if len(self._design):  # the initial design, possibly in chunks
            n = min(len(self._design), self.cfg.init_chunk or len(self._design), limit)
            self._asked, self._design = self._design[:n], self._design[n:]
        else:
            self._asked = self.propose(min(self.cfg.batch_size, limit))
        return (2 * self._asked - 1) * self.cfg.bound  # the unit cube mapped to the box

    def tell(self, z: torch.Tensor, losses: torch.Tensor) -> None:
        if self._asked is None or len(self._asked) != len(losses):
            raise RuntimeError("tell must answer the last ask")
        losses = finite(losses)
        if len(self.Y) >= self.cfg.n_init:  # design points do not move the region
            best = float(self.Y.min())
            if float(losses.min()) < best - 1e-3 * abs(best):
                self.successes, self.failures = self.successes + 1, 0
            else:
                self.successes, self.failures = 0, self.failures + 1
            if self.successes == self.cfg.success_tolerance:
                self.length, self.successes = min(2 * self.length, self.cfg.length_max), 0
            elif self.failures == self.failure_tolerance:
                self.length, self.failures = self.length / 2, 0
        self.X = torch.cat([self.X, self._asked])
        self.Y = torch.cat([self.Y, losses])
        self._asked = None
        if self.length < self.cfg.length_min:
            self.restarts += 1
            self._restart()

    def info(self) -> dict[str, int]:
        return {"restarts": self.restarts, "batches": self.batches,
                "failure_tolerance": self.failure_tolerance}

    def fit(self) -> Any:
        """The GP on the restart's points, hyper-parameters by maximum marginal likelihood.
        Deterministic objective: small noise; BoTorch maximises, so it sees -loss."""
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.constraints import Interval
        from gpytorch.kernels import MaternKernel, ScaleKernel
        from gpytorch.likelihoods import GaussianLikelihood
        from gpytorch.mlls import ExactMarginalLogLikelihood

        kernel = ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=self.dim,
                                          lengthscale_constraint=Interval(0.005, 4.0)),
                             outputscale_constraint=Interval(0.05, 20.0))
        likelihood = GaussianLikelihood(noise_constraint=Interval(1e-8, 1e-3))
        model = SingleTaskGP(self.X, -self.Y[:, None], likelihood=likelihood,
                             covar_module=kernel, outcome_transform=Standardize(m=1))
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": self.cfg.fit_maxiter}})
        return model

    def propose(self, n: int) -> torch.Tensor:
        import gpytorch
        from botorch.generation import MaxPosteriorSampling

        self.batches += 1
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "turbo-batch", self.batches))
        # BoTorch's fitting retries and posterior samples draw from the global torch RNG:
        # seed it for this batch only, and hand the caller's state back afterwards.
        with torch.random.fork_rng(devices=[]), \
                gpytorch.settings.max_cholesky_size(self.cfg.max_cholesky_size):
            torch.manual_seed(derive_seed(self.seed, "turbo-botorch", self.batches))
            model = self.fit()
            centre = self.X[torch.argmin(self.Y)]
            scales = model.covar_module.base_kernel.lengthscale.detach().view(-1).double()
            scales = scales / torch.exp(torch.log(scales).mean())  # geometric mean 1
            lower = (centre - scales * self.length / 2).clamp(0.0, 1.0)
            upper = (centre + scales * self.length / 2).clamp(0.0, 1.0)
            m = self.cfg.n_candidates
            points = lower + (upper - lower) * sobol_design(m, self.dim, gen)
            mask = torch.rand(m, self.dim, generator=gen) <= min(20.0 / self.dim, 1.0)
            empty = torch.nonzero(~mask.any(1)).view(-1)
            mask[empty, torch.randint(self.dim, (len(empty),), generator=gen)] = True
            candidates = torch.where(mask, points, centre)
            with torch.no_grad():
                chosen = MaxPosteriorSampling(model=model, replacement=False)(
                    candidates, num_samples=n)
        return chosen.detach()


# --- the entry point -----------------------------------------------------------------------

OPTIMISERS: dict[str, Callable[..., OptimiseResult]] = {
    "adam": run_adam, "cmaes": partial(run_ask_tell, CMAES), "turbo": partial(run_ask_tell, Turbo)}


def minimise(method: str, objective: Objective, dim: int, budget: int, config: Any = None,
             seed: int = 0, device: torch.device | str = "cpu",
             progress: Progress | None = None) -> OptimiseResult:
    """Minimise ``objective`` over R^dim (or its box) with at most ``budget`` evaluations."""
    if method not in OPTIMISERS:
        raise ValueError(f"unknown optimiser {method!r}; allowed are {', '.join(OPTIMISERS)}")
    config = OPTIMISER_CONFIGS[method]() if config is None else config
    if not isinstance(config, OPTIMISER_CONFIGS[method]):
        raise TypeError(f"{method} takes a {OPTIMISER_CONFIGS[method].__name__}, "
                        f"got {type(config).__name__}")
    if budget < 1 or dim < 1:
        raise ValueError(f"need budget >= 1 and dim >= 1, got {budget} and {dim}")
    return OPTIMISERS[method](objective, dim, budget, config, seed, torch.device(device),
                              progress)
