"""The ``ggl`` command: one subcommand per stage of the registry, plus tools.

Every subcommand takes ``--params`` (default params.yaml) and validates it before any compute
starts. A stage writes only the files the registry declares for it, and its log.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from ggl.config import Params, ParamsError, load_params
from ggl.errors import GglError, MissingRunError
from ggl.pipeline.registry import STAGE_KINDS, VALUES, Stage, kind
from ggl.threads import set_thread_env

Handler = Callable[[argparse.Namespace, Params], None]


def run_stage(stage: Stage, log: logging.Logger | None = None) -> None:
    """Run one stage instance's code: its inputs must exist before, its outputs after."""
    absent = [path for paths in stage.inputs().values() for path in paths
              if not Path(path).is_file()]
    if absent:
        raise MissingRunError(
            f"stage {stage.name}: {len(absent)} of its inputs are missing, e.g. "
            f"{', '.join(absent[:3])}; run the stages that write them first (snakemake plans "
            f"them; under DVC with a params file other than params.yaml, regenerate dvc.yaml "
            f"with `ggl dvc-yaml --params FILE` after adding a defence or attack)")
    module = importlib.import_module(stage.kind.module)
    module.run(stage, log or logging.getLogger(f"ggl.{stage.name}"))
    missing = [path for path in stage.outs() if not Path(path).is_file()]
    if missing:
        raise RuntimeError(f"stage {stage.name} did not write {len(missing)} of its declared "
                           f"outputs, e.g. {', '.join(missing[:3])}")


def cmd_stage(args: argparse.Namespace, params: Params) -> None:
    k = kind(args.command)
    if not k.when(params):
        raise ParamsError(f"{args.params}: the {k.name} stage has no part in these params "
                          f"(generator.kind: {params.generator.kind})")
    keys = {w: getattr(args, w) for w in k.wildcards}
    for w, value in keys.items():
        if value not in VALUES[w](params):
            raise ParamsError(f"--{w}: {value!r} is not in params; allowed are "
                              f"{', '.join(VALUES[w](params))}")
    stage = Stage(k, params, keys)
    log_path = Path(stage.log())
    log = _logger(stage.name, log_path, stage.kind.job_threads(params))
    try:
        run_stage(stage, log)
    except GglError as exc:
        _append(log_path, f"error: {exc}\n")
        raise
    except BaseException:
        _append(log_path, traceback.format_exc())  # the log keeps what stderr shows
        raise


def _logger(name: str, path: Path, threads: int) -> logging.Logger:
    """The stage's logger (stderr and its log file). Also sets torch's CPU threads: GGL_THREADS
    (the Snakemake rules set it to the job's threads, which Snakemake may lower to --cores) or
    the stage's job threads."""
    import torch

    from ggl import worker
    from ggl.runtime import get_logger

    torch.set_num_threads(int(os.environ.get("GGL_THREADS") or threads))
    log = get_logger(name, path)
    log.info("torch CPU threads: %d", torch.get_num_threads())  # the numbers depend on them
    if parent := os.environ.get(worker.PID_VARIABLE):
        log.info("%s, process %s", worker.LOG_MARK, parent)
    return log


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(text)


def _in_worker(argv: list[str]) -> int | None:
    """The command's exit code from a worker's child; None: run it here (a worker is started
    for the commands after this one)."""
    from ggl import worker

    if not worker.enabled():
        return None
    try:
        path = worker.socket_path()
    except OSError:
        return None
    code = worker.run("ggl.cli:main", argv, path)  # a list argv: the child runs it itself
    if code is None:
        worker.start(path)
    return code


def cmd_validate(args: argparse.Namespace, params: Params) -> None:
    print(f"{args.params}: valid ({len(params.defences)} defences, "
          f"{len(params.private_images)} private images)")


def cmd_fetch_lpips(args: argparse.Namespace, params: Params) -> None:
    from ggl.metrics import fetch_vgg16_weights

    print(f"VGG16 weights for LPIPS: {fetch_vgg16_weights()}")


def cmd_dvc_yaml(args: argparse.Namespace, params: Params) -> None:
    from ggl import io
    from ggl.pipeline.registry import check_dvc_yaml, render_dvc_yaml

    if args.check:
        problem = check_dvc_yaml(params, args.params, args.output)
        if problem:
            raise GglError(problem)
        print(f"{args.output} is up to date with the stage registry")
        return
    io.write_text(args.output, render_dvc_yaml(params, args.params))
    print(f"wrote {args.output}")


def cmd_check_reference(args: argparse.Namespace, params: Params) -> None:
    from ggl.pipeline.registry import FILES
    from ggl.reference import REFERENCE_DIR, check

    headline = Path(FILES["headline"].pattern.format(experiment=params.experiment))
    print(check(headline, Path(args.reference or REFERENCE_DIR / f"{params.experiment}.yaml")))


OFFLINE_PLOTS = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ggl: DVC plots</title>
<script>{bundle}</script>
<style>body {{ font-family: sans-serif; }} img {{ max-width: 48%; }}</style>
</head><body>
{{plot_divs}}
</body></html>
"""


def cmd_plots_template(args: argparse.Namespace, params: Params) -> None:
    """DVC's own template loads Vega from a CDN, so its charts are blank offline; this one has
    Vega, Vega-Lite and Vega-Embed inline (vl-convert's bundle)."""
    import vl_convert

    from ggl import io

    io.write_text(args.output, OFFLINE_PLOTS.format(bundle=vl_convert.javascript_bundle()))
    print(f"wrote {args.output}; now: dvc plots show --html-template {args.output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ggl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml",
                       help="params file (default: params.yaml)")
        p.set_defaults(handler=handler)
        return p

    add("validate", cmd_validate, "check a params file against the schema and exit")
    for k in STAGE_KINDS:
        p = add(k.name, cmd_stage, f"stage: {k.summary}")
        for w in k.wildcards:
            p.add_argument(f"--{w}", required=True, help=f"a name from params' {w} list")
    add("fetch-lpips", cmd_fetch_lpips,
        "download torchvision's VGG16 weights for LPIPS into the torch cache (hash-checked)")
    p = add("check-reference", cmd_check_reference,
            "compare a run's headline metrics with the committed reference results")
    p.add_argument("--reference", help="reference file (default: "
                                       "workflow/reference/<experiment>.yaml)")
    p = add("plots-template", cmd_plots_template,
            "write an HTML template with which `dvc plots show` renders offline")
    p.add_argument("--output", default=".dvc/tmp/plots-offline.html",
                   help="where to write (default: .dvc/tmp/plots-offline.html)")
    p = add("dvc-yaml", cmd_dvc_yaml, "generate dvc.yaml from the stage registry")
    p.add_argument("--output", default="dvc.yaml", help="where to write (default: dvc.yaml)")
    p.add_argument("--check", action="store_true",
                   help="do not write; fail if the file differs from what would be generated")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Expected problems (``GglError``) print one line and exit 2; anything else keeps its
    traceback (and exits 1). A stage command from the command line (``argv`` None) runs in a
    child of the warm worker (``ggl.worker``) where one is enabled; from Python, in-process."""
    args = build_parser().parse_args(argv)
    set_thread_env()  # before any stage imports torch: OpenMP reads it once
    if args.handler is cmd_stage and argv is None:
        code = _in_worker(sys.argv[1:])
        if code is not None:
            return code
    try:
        args.handler(args, load_params(args.params))
    except GglError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
