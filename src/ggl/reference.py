"""Reference results: an experiment's headline metrics as committed, the tolerance a run on
another machine or thread count stays within, and the check that a run does.

CPU floating point differs between machines and thread counts, and the attacks amplify it:
the same params give identical bytes only on the same machine with the same threads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ggl.errors import GglError

REFERENCE_DIR = Path("workflow/reference")


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"none": {"ggl": {"lpips": 0.3}}}`` -> ``{"none.ggl.lpips": 0.3}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def compare(headline: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """What in a run's headline metrics leaves the reference: a missing figure, or one further
    from the reference value than the tolerance of its metric (the last part of its key).
    Names (which attack was best) are not compared: near-equal attacks may swap."""
    got, tolerance = leaves(headline), reference["tolerance"]
    problems = []
    for key, want in leaves(reference["headline"]).items():
        if isinstance(want, str):
            continue
        metric = key.rsplit(".", 1)[-1]
        if key not in got:
            problems.append(f"{key} is missing from the run")
        elif abs(got[key] - want) > tolerance[metric]:
            problems.append(f"{key} = {got[key]}, reference {want} ± {tolerance[metric]}")
    return problems


def check(headline_path: Path, reference_path: Path) -> str:
    """A one-line verdict when the run is within the reference; GglError otherwise."""
    if not reference_path.is_file():
        raise GglError(f"{reference_path}: no reference results for this experiment (only "
                       f"{', '.join(p.stem for p in sorted(REFERENCE_DIR.glob('*.yaml')))})")
    if not headline_path.is_file():
        raise GglError(f"{headline_path} is missing: run the pipeline first")
    reference = yaml.safe_load(reference_path.read_text())
    problems = compare(json.loads(headline_path.read_text()), reference)
    if problems:
        raise GglError(f"{headline_path}: {len(problems)} headline figures outside the "
                       f"tolerance of {reference_path}: " + "; ".join(problems))
    numbers = [v for v in leaves(reference["headline"]).values() if not isinstance(v, str)]
    return (f"{headline_path}: all {len(numbers)} headline figures within the tolerance of "
            f"{reference_path}")
