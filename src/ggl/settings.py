"""What params' ``attacks.<name>`` may hold: each method's objective and optimiser settings.

These dataclasses are the one validator of attack settings (the schema only says they are
mappings): fields are typed, choices are ``Literal``s, ranges are checked, and ``ggl.config``
refuses an entry that leaves a field out, so every setting that changes a result is in the
params file. Defaults are the paper's values, for use from Python. No torch here: validating
params must stay cheap.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

Distance = Literal["l2-mean", "l2-sum", "cosine"]  # ggl.attack.objective.DISTANCES
Regulariser = Literal["kl", "norm", "none"]  # ggl.attack.objective.REGULARISERS
Schedule = Literal["none", "warmup-cosine", "step"]  # ggl.attack.optimisers.SCHEDULES
Design = Literal["lhs", "sobol"]  # ggl.attack.optimisers.DESIGNS

_hints = cache(get_type_hints)  # a settings class's field types, resolved once
_FLOAT_MAX = sys.float_info.max


class _Settings:
    """Checks on construction that each field holds its annotated type (an int is accepted for a
    float and stored as one; an int field takes an int only, not 16.0; a bool is no number; a
    float is finite), a Literal field one of its values, and the lower bounds in ``LIMITS``
    (field -> (">" or ">=", bound)); else ValueError 'field: ...'."""

    LIMITS: ClassVar[dict[str, tuple[str, float]]] = {}

    def __post_init__(self) -> None:
        for f in fields(self):
            hint, value = _hints(type(self))[f.name], getattr(self, f.name)
            if get_origin(hint) is Literal:
                if value not in get_args(hint):
                    raise ValueError(f"{f.name}: {value!r:.60} is not allowed; allowed are "
                                     f"{', '.join(get_args(hint))}")
                continue
            number = isinstance(value, int | float) and not isinstance(value, bool)
            valid = {bool: isinstance(value, bool), int: number and isinstance(value, int),
                     float: number}
            if not valid.get(hint, True):
                whole = (hint is int and isinstance(value, float) and value.is_integer()
                         and abs(value) < 2**63)
                raise ValueError(f"{f.name}: expected {hint.__name__}, got {value!r:.60}"
                                 + (f" (write {int(value)})" if whole else ""))
            if hint is float:
                if not (-_FLOAT_MAX <= value <= _FLOAT_MAX):  # NaN, inf, or an int too large
                    raise ValueError(f"{f.name}: must be a finite number, got {value!r:.40}")
                object.__setattr__(self, f.name, float(value))
        for name, (op, low) in self.LIMITS.items():
            value = getattr(self, name)
            if not (value > low if op == ">" else value >= low):
                raise ValueError(f"{name}: must be {op} {low}, got {value}")


# --- GGL: the objective and the latent-space optimisers ---------------------------------------

@dataclass(frozen=True)
class ObjectiveConfig(_Settings):
    distance: Distance = "l2-mean"
    regulariser: Regulariser = "kl"
    reg_weight: float = 0.1  # the paper's lambda
    adaptive: bool = True  # apply the defence estimate T-hat to every trial gradient
    tanh: bool = False  # optimise x with z = tanh(x) (the authors' ImageNet CMA-ES)
    LIMITS = {"reg_weight": (">=", 0)}


@dataclass(frozen=True)
class AdamConfig(_Settings):
    lr: float = 0.1
    schedule: Schedule = "none"  # warmup-cosine: ImageNet script; step: CelebA script
    signed: bool = False  # step on the sign of the gradient (the CelebA script: True + step)
    init_std: float = 1.0  # z0 ~ N(0, init_std^2 I)
    LIMITS = {"lr": (">", 0), "init_std": (">=", 0)}


@dataclass(frozen=True)
class CMAESConfig(_Settings):
    sigma0: float = 1.0
    popsize: int = 50  # paper-like "batch size 50"; cma's own default for d = 128 is 18
    init_std: float = 0.0  # x0 ~ N(0, init_std^2 I); 0: x0 = 0, the prior's mean
    LIMITS = {"sigma0": (">", 0), "popsize": (">=", 2), "init_std": (">=", 0)}


@dataclass(frozen=True)
class TurboConfig(_Settings):
    n_init: int = 256  # initial-design points per (re)start
    batch_size: int = 10
    bound: float = 2.0  # search box [-bound, bound]^d
    length_init: float = 0.8  # trust-region side, in the unit cube mapped to the box
    length_min: float = 0.5**7
    length_max: float = 1.6
    success_tolerance: int = 3
    failure_tolerance: int = 0  # 0: ceil(max(4 / batch_size, d / batch_size)), as TuRBO
    n_candidates: int = 5000  # Sobol candidates for Thompson sampling
    fit_maxiter: int = 100  # L-BFGS-B iterations fitting the GP hyper-parameters
    max_cholesky_size: int = 2000  # larger matrices: GPyTorch's Lanczos/CG, as TuRBO's code
    design: Design = "lhs"  # lhs (the paper) | sobol
    init_chunk: int = 0  # initial design scored in calls of at most this many; 0: one call
    LIMITS = {"n_init": (">=", 2), "batch_size": (">=", 1), "bound": (">", 0),
              "length_min": (">", 0), "success_tolerance": (">=", 1), "fit_maxiter": (">=", 1),
              "max_cholesky_size": (">=", 1), "failure_tolerance": (">=", 0),
              "init_chunk": (">=", 0)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_candidates < self.batch_size:
            raise ValueError(f"n_candidates: must be >= batch_size ({self.batch_size}), got "
                             f"{self.n_candidates}")
        if not self.length_min <= self.length_init <= self.length_max:
            raise ValueError("length_min: need length_min <= length_init <= length_max, got "
                             f"{self.length_min}, {self.length_init}, {self.length_max}")


# --- the pixel-space baselines --------------------------------------------------------------

@dataclass(frozen=True)
class PixelObjectiveConfig(_Settings):
    distance: Distance = "l2-sum"
    tv_weight: float = 0.0  # total variation prior
    l2_weight: float = 0.0  # l2 image prior
    adaptive: bool = False  # apply the same defence estimate as GGL
    LIMITS = {"tv_weight": (">=", 0), "l2_weight": (">=", 0)}


@dataclass(frozen=True)
class PixelOptimiserConfig(_Settings):
    optimiser: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float = 1.0
    signed: bool = False  # Adam on the sign of the gradient (IG)
    schedule: Schedule = "none"  # step: decay at 3/8, 5/8, 7/8 of the budget, as IG
    clamp: bool = False  # keep the image in [-1, 1] after every step (IG, GI)
    history_size: int = 100  # L-BFGS memory
    LIMITS = {"lr": (">", 0), "history_size": (">=", 1)}


# --- the controls: what the attacker gets without the gradient ------------------------------

@dataclass(frozen=True)
class NoSettings(_Settings):
    """A control's objective or optimiser: it has none (params write ``{}``)."""


# prior: the generator's samples of the inferred class (budget = samples); label-only: the mean
# public image of the inferred class; noise-gradient: a GGL attack (``of``, same settings and
# seed) on Gaussian noise with the received gradient's norms and zeros, the real label.
CONTROLS = ("prior", "label-only", "noise-gradient")
NO_MODEL_PASS = ("prior", "label-only")  # one trial, and no pass of the federated model
NO_GENERATOR = ("dlg", "idlg", "ig", "gi", "label-only")  # pixels or the public split alone

# --- the methods --------------------------------------------------------------------------

GGL_OPTIMISERS = {"ggl-adam": "adam", "ggl-cmaes": "cmaes", "ggl-bo": "turbo"}
OPTIMISER_CONFIGS: dict[str, type] = {
    "adam": AdamConfig, "cmaes": CMAESConfig, "turbo": TurboConfig}
# method -> (objective settings, optimiser settings); a plugin method takes its as given
METHODS: dict[str, tuple[type, type]] = {
    **{m: (ObjectiveConfig, OPTIMISER_CONFIGS[o]) for m, o in GGL_OPTIMISERS.items()},
    **{m: (PixelObjectiveConfig, PixelOptimiserConfig) for m in ("dlg", "idlg", "ig", "gi")},
    "prior": (NoSettings, NoSettings), "label-only": (NoSettings, NoSettings),
    # noise-gradient takes the settings classes of the GGL attack it controls (ggl.config)
}


@dataclass(frozen=True)
class AttackConfig:
    method: str
    trials: int  # independent restarts; the lowest final loss is kept
    budget: int  # objective evaluations per trial
    objective: Any = None  # the method's objective settings (a dict for a plugin method)
    optimiser: Any = None  # its optimiser settings (likewise)
    of: str | None = None  # noise-gradient: the name of the GGL attack it controls

    def __post_init__(self) -> None:
        popsize = getattr(self.optimiser, "popsize", None)
        if self.method == "ggl-cmaes" and popsize and self.budget < popsize:
            raise ValueError(f"budget: {self.budget} is less than one generation "
                             f"(optimiser.popsize = {popsize})")


def uses_generator(attack: str, attacks: dict[str, AttackConfig]) -> bool:
    """Whether attack ``attack`` reads the generator (a plugin method may: assume it does)."""
    cfg = attacks[attack]
    if cfg.of is not None:
        return uses_generator(cfg.of, attacks)
    return cfg.method not in NO_GENERATOR
