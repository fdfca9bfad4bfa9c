"""The paper's published numbers (Li et al., "Auditing Privacy Defenses in Federated Learning
via Generative Gradient Leakage", CVPR 2022), for the experiments in workflow/experiments/
whose settings are the paper's. Means over the paper's evaluated images; PSNR in dB on [-1, 1]
images with peak 1 (``psnr_db_pm1``), LPIPS with the VGG backbone. Keyed by experiment, then
(defence, attack) as the experiment's params name them."""

from __future__ import annotations

from typing import Any

Cell = dict[str, Any]  # {"psnr_db_pm1": float, "lpips": float (optional), "source": str}


def _row(source: str, psnr: list[float], lpips: list[float] | None = None) -> list[Cell]:
    lpips = lpips or [None] * len(psnr)
    return [{"psnr_db_pm1": p, "lpips": q, "source": source}
            for p, q in zip(psnr, lpips, strict=True)]


def _cells(keys: list[tuple[str, str]], cells: list[Cell]) -> dict[tuple[str, str], Cell]:
    return dict(zip(keys, cells, strict=True))


_DEFENDED = [("noise", "ggl-cmaes"), ("clipping", "ggl-cmaes"),
             ("sparsification", "ggl-cmaes"), ("soteria", "ggl-cmaes")]
_NO_DEFENCE = [("none", "ggl-adam"), ("none", "ggl-bo"), ("none", "ggl-cmaes")]

PAPER: dict[str, dict[tuple[str, str], Cell]] = {
    "celeba32": {
        **_cells(_NO_DEFENCE, _row("Table 2", [13.70, 10.95, 11.50], [0.144, 0.216, 0.214])),
        **_cells(_DEFENDED, _row("Table 3", [11.08, 11.19, 11.15, 10.14],
                                 [0.191, 0.167, 0.162, 0.256])),
        # the one baseline cell the paper singles out: cosine distance ignores the clipping
        ("clipping", "ig"): _row("Table 3", [12.65], [0.300])[0],
    },
    "imagenet224": {
        **_cells(_NO_DEFENCE, _row("Table 2", [2.44, 5.78, 5.74], [0.798, 0.617, 0.574])),
        **_cells(_DEFENDED, _row("Table 3", [5.71, 6.52, 6.69, 6.05],
                                 [0.592, 0.559, 0.517, 0.569])),
    },
    "celeba32-table1": _cells(
        [("none", "d1-r1"), ("none", "d2-r1"), ("none", "d1-r2"), ("none", "d2-r2")],
        _row("Table 1", [15.68, 15.35, 15.54, 14.32])),
}

# What the paper says of cells it gives no single number for.
NOTES: dict[str, str] = {
    "celeba32": "Paper, Table 3: the baselines' LPIPS is 0.71-0.83 under every defence "
                "(IG under clipping excepted).",
    "imagenet224": "Paper, Table 3: the baselines' LPIPS is 0.75-0.98 under every defence.",
}


def paper_cell(experiment: str, defence: str, attack: str) -> Cell | None:
    """The paper's number for one cell of an experiment, or None where it gives none."""
    return PAPER.get(experiment, {}).get((defence, attack))


# The GGL objective settings of the authors' published scripts, keyed by experiment and attack
# as the experiment's params name them; only the keys the scripts fix (checked against them on
# identical tensors). Each experiment file's header table says where it follows these, and
# tests/test_experiments.py holds the files to them.
_CELEBA_ADAM = {"distance": "l2-sum", "regulariser": "kl", "reg_weight": 0.1,
                "adaptive": False, "tanh": False}  # inversefed's summed l2, no estimate
_CELEBA_CMAES = {"distance": "l2-mean", "regulariser": "kl", "reg_weight": 0.1,
                 "adaptive": True, "tanh": False}
_CELEBA_BO = {"distance": "l2-mean", "regulariser": "none", "adaptive": True,
              "tanh": False}  # the KL line commented out

AUTHORS_OBJECTIVES: dict[str, dict[str, dict[str, Any]]] = {
    "celeba32": {"ggl-adam": _CELEBA_ADAM, "ggl-cmaes": _CELEBA_CMAES, "ggl-bo": _CELEBA_BO},
    "celeba32-table1": {  # Table 1: the CelebA Adam script with each distance and regulariser
        "d1-r1": _CELEBA_ADAM,
        "d2-r1": {**_CELEBA_ADAM, "distance": "cosine"},
        "d1-r2": {**_CELEBA_ADAM, "regulariser": "norm"},
        "d2-r2": {**_CELEBA_ADAM, "distance": "cosine", "regulariser": "norm"},
    },
    "celeba32-soteria-sweep": {"ggl-cmaes": _CELEBA_CMAES},
    "imagenet224": {  # the KL only where z is not tanh(x)
        "ggl-adam": {"regulariser": "kl", "reg_weight": 0.1, "tanh": False},
        "ggl-cmaes": {"distance": "l2-mean", "regulariser": "none", "adaptive": True,
                      "tanh": True},
        "ggl-bo": {"distance": "l2-mean", "regulariser": "kl", "reg_weight": 0.1,
                   "adaptive": True, "tanh": False},
    },
}
