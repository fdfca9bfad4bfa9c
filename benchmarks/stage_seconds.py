"""Where a Snakemake run's time went: every job's benchmark file (Snakemake's ``benchmark:``
directive; the stage registry declares one per job under ``logs/<experiment>/benchmarks/``),
summed per stage kind, and per attack for the attack stage.

    snakemake --cores all                     # writes the benchmark files
    python benchmarks/stage_seconds.py        # the table, for params.yaml
    python benchmarks/stage_seconds.py --params workflow/experiments/X.yaml --startup 3

``--startup N`` also measures each kind's start-up (a fresh ``python`` importing the ``ggl``
command and the stage's module, median of N) and multiplies it by the kind's jobs: the seconds
the run spent importing before any stage computed, had no job forked from the warm worker
(``ggl.worker``). The ``forked`` column counts the jobs that did (their log says so); for those,
Snakemake's peak memory is that of the ``ggl`` process it started, not of the forked child, so
``max MiB`` is over the other jobs only (``-``: none; run with ``GGL_WORKER=0`` to measure it).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from ggl.config import load_params
from ggl.pipeline.registry import all_stages
from ggl.worker import LOG_MARK


def read_benchmark(path: Path) -> dict[str, float]:
    """The last row of one benchmark file (Snakemake appends a row per repeat)."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: no rows")
    out = {}
    # Snakemake's cpu_time and mean_load sample the process now and then: here they missed half
    # of an attack job's CPU seconds (against /usr/bin/time), so only wall seconds and memory
    for key in ("s", "max_rss"):
        value = rows[-1].get(key, "NA")
        out[key] = float("nan") if value in ("NA", "-", "") else float(value)
    return out


def startup_seconds(module: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import ggl.cli, {module}"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--startup", type=int, default=0, metavar="N",
                        help="also time each kind's imports, median of N fresh processes")
    args = parser.parse_args()
    params = load_params(Path(args.params))

    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    modules: dict[str, str] = {}
    missing = []
    for stage in all_stages(params):
        path = Path(stage.benchmark())
        if not path.is_file():
            missing.append(str(path))
            continue
        group = stage.kind.name + (f" {stage.keys['attack']}" if "attack" in stage.keys else "")
        row = read_benchmark(path)
        log = Path(stage.log())
        row["forked"] = log.is_file() and LOG_MARK in log.read_text()
        groups[group].append(row)
        modules[group] = stage.kind.module
    if not groups:
        sys.exit(f"no benchmark files under logs/{params.experiment}/benchmarks/: run "
                 f"`snakemake --cores all` (with --configfile {args.params} if not params.yaml)")

    print(f"# {params.experiment}: {sum(map(len, groups.values()))} jobs' benchmark files "
          f"(wall seconds and peak resident MiB from Snakemake's benchmark: directive)")
    if missing:
        print(f"# {len(missing)} jobs have none (not run by Snakemake yet), e.g. {missing[0]}")
    header = f"{'stage':<28} {'jobs':>5} {'sum s':>8} {'mean s':>7} {'max s':>7} {'forked':>6}"
    header += f" {'max MiB':>8}" + (f" {'start-up s':>10} {'x jobs':>7}" if args.startup else "")
    print(header)
    total = startup_total = 0.0
    for group, rows in sorted(groups.items(), key=lambda kv: -sum(r["s"] for r in kv[1])):
        seconds = [r["s"] for r in rows]
        memory = [r["max_rss"] for r in rows if not r["forked"]]
        line = (f"{group:<28} {len(rows):>5} {sum(seconds):8.1f} {statistics.mean(seconds):7.2f} "
                f"{max(seconds):7.2f} {sum(bool(r['forked']) for r in rows):>6} "
                + (f"{max(memory):8.0f}" if memory else f"{'-':>8}"))
        if args.startup:
            each = startup_seconds(modules[group], args.startup)
            startup_total += each * len(rows)
            line += f" {each:10.2f} {each * len(rows):7.1f}"
        print(line, flush=True)
        total += sum(seconds)
    print(f"{'all jobs':<28} {sum(map(len, groups.values())):>5} {total:8.1f}"
          + (f" {'':>7} {'':>7} {'':>6} {'':>8} {'':>10} {startup_total:7.1f}"
             if args.startup else ""))


if __name__ == "__main__":
    main()
