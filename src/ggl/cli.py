"""The ``ggl`` command: one subcommand per pipeline stage, plus tooling.

Every stage subcommand takes ``--params`` (default params.yaml), validates it before any
compute starts, and writes under data/<experiment>/ and results/<experiment>/.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ggl.config import Params, ParamsError, load_params
from ggl.report import MissingRunError

Handler = Callable[[argparse.Namespace, Params], None]


def cmd_validate(args: argparse.Namespace, params: Params) -> None:
    print(f"{args.params}: valid ({len(params.defences)} defences, "
          f"{len(params.private_images)} private images)")


def cmd_split(args: argparse.Namespace, params: Params) -> None:
    from ggl.data import load_dataset, write_split
    from ggl.pipeline.registry import data_dir

    log = _logger("split", params)
    split = load_dataset(params.data)
    paths = write_split(split, params.data, data_dir(params))
    log.info("split %s: %d public, %d private images -> %s", params.data.dataset,
             len(split.public_images), len(split.private_images), paths["index"].parent)


def cmd_gradients(args: argparse.Namespace, params: Params) -> None:
    from ggl.client import run_gradients
    from ggl.pipeline.registry import data_dir, results_dir

    log = _logger(f"gradients__{args.defence}", params)
    written = run_gradients(params, args.defence, Path(data_dir(params)),
                            Path(results_dir(params)))
    log.info("wrote %d files for defence %s", len(written), args.defence)


def cmd_train_gan(args: argparse.Namespace, params: Params) -> None:
    from ggl.data import load_part
    from ggl.gan import train_gan
    from ggl.pipeline.registry import data_dir, generator_outs
    from ggl.runtime import resolve_device

    log = _logger("train-gan", params)
    images, labels = load_part(data_dir(params), "public")
    path = train_gan(images, gan_config(params), Path(generator_outs(params)[0]).parent,
                     resolve_device(params.device), log, public_labels=labels)
    log.info("generator written to %s", path)


def cmd_gan_quality(args: argparse.Namespace, params: Params) -> None:
    from ggl.data import load_part
    from ggl.gan import quality_check
    from ggl.pipeline.registry import data_dir, generator_outs, quality_outs
    from ggl.runtime import resolve_device

    log = _logger("gan-quality", params)
    device = resolve_device(params.device)
    generator = build_generator(params, device)
    public, private = load_part(data_dir(params), "public"), load_part(data_dir(params),
                                                                       "private")
    quality = quality_check(generator, *public, *private, quality_outs(params)[0], device,
                            params.seed, num_classes=params.data.num_classes,
                            extra={"checkpoint": generator_outs(params)[0]})
    log.info("quality: %s", {k: v for k, v in quality.items() if "histogram" not in k})


def cmd_attack(args: argparse.Namespace, params: Params) -> None:
    from ggl.attack.run import run_attack
    from ggl.client import gradient_paths
    from ggl.pipeline.registry import results_dir
    from ggl.runtime import resolve_device

    for key, names in (("--defence", params.defences), ("--attack", params.attacks)):
        value = args.defence if key == "--defence" else args.attack
        if value not in names:
            raise ValueError(f"{key}: {value!r} is not in params; allowed are "
                             f"{', '.join(names)}")
    log = _logger(f"attack__{args.defence}__{args.attack}", params)
    device = resolve_device(params.device)
    generator = build_generator(params, device)
    files = {image: gradient_paths(results_dir(params), args.defence, image)[0]
             for image in params.image_ids()}
    folders = run_attack(files, args.defence, args.attack, params.attacks[args.attack],
                         generator, {"kind": params.generator.kind, **generator.info()},
                         params.seed, Path(results_dir(params)), device, params.scorer)
    log.info("%s on %s: %d reconstructions", args.attack, args.defence, len(folders))


def cmd_metrics(args: argparse.Namespace, params: Params) -> None:
    from ggl import io
    from ggl.metrics import CONVENTIONS
    from ggl.pipeline.registry import data_dir, metrics_outs, results_dir
    from ggl.report import run_metrics
    from ggl.runtime import resolve_device

    log = _logger("metrics", params)
    frame = run_metrics(params, Path(results_dir(params)), Path(data_dir(params)),
                        resolve_device(params.device))
    path = Path(metrics_outs(params)[0])
    io.write_text(path, frame.to_csv(index=False))
    io.write_json(path.with_name("metrics_conventions.json"), CONVENTIONS)
    log.info("%d rows -> %s", len(frame), path)


def cmd_aggregate(args: argparse.Namespace, params: Params) -> None:
    from ggl.pipeline.registry import data_dir, results_dir
    from ggl.report import aggregate

    log = _logger("aggregate", params)
    paths = aggregate(params, Path(results_dir(params)), Path(data_dir(params)))
    log.info("wrote %d tables and figures", len(paths))


def gan_config(params: Params):
    from ggl.gan import GanTrainConfig

    g = params.generator
    return GanTrainConfig.from_dict({**g.train, "latent_dim": g.latent_dim, "width": g.width,
                                     "num_classes": params.data.num_classes if g.conditional
                                     else 0})


def build_generator(params: Params, device):
    from ggl.generators import load_generator
    from ggl.pipeline.registry import generator_checkpoint

    g = params.generator
    return load_generator(g.kind, generator_checkpoint(params), device,
                          image_size=params.data.image_size, latent_dim=g.latent_dim,
                          width=g.width, conditional=g.conditional,
                          num_classes=params.data.num_classes, seed=params.seed)


def cmd_fetch_biggan(args: argparse.Namespace, params: Params) -> None:
    from ggl.biggan import fetch_biggan, parse_sha256_overrides
    from ggl.pipeline.registry import BIGGAN_DIR

    path = fetch_biggan(BIGGAN_DIR, sha256=parse_sha256_overrides(args.sha256))
    print(f"verified: {path}")


def cmd_fetch_lpips(args: argparse.Namespace, params: Params) -> None:
    from ggl.metrics import fetch_vgg16_weights

    print(f"VGG16 weights for LPIPS: {fetch_vgg16_weights()}")


def cmd_dvc_yaml(args: argparse.Namespace, params: Params) -> None:
    from ggl import io
    from ggl.pipeline.registry import check_dvc_yaml, render_dvc_yaml

    if args.check:
        problem = check_dvc_yaml(params, args.params, args.output)
        if problem:
            raise SystemExit(f"error: {problem}")
        print(f"{args.output} is up to date with the stage registry")
        return
    io.write_text(args.output, render_dvc_yaml(params, args.params))
    print(f"wrote {args.output}")


def _logger(stage: str, params: Params):
    """The stage's logger; also sets torch's CPU threads: GGL_THREADS (which the Snakemake
    rules set to the job's threads, so parallel jobs do not oversubscribe the cores) or
    params' threads."""
    import os

    from ggl.runtime import get_logger

    threads = int(os.environ.get("GGL_THREADS") or params.threads)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return get_logger(stage, Path("logs") / params.experiment)


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
    add("split", cmd_split, "stage: load the dataset, write the public/private split to data/")
    p = add("gradients", cmd_gradients,
            "stage: the defended client gradient of every private image for one defence")
    p.add_argument("--defence", required=True, help="a defence name from params' defences")
    add("train-gan", cmd_train_gan,
        "stage: train the WGAN-GP generator on the public split (resumes if interrupted)")
    add("gan-quality", cmd_gan_quality,
        "stage: judge the generator's samples with a classifier trained on public labels")
    p = add("attack", cmd_attack,
            "stage: invert every received gradient of one defence with one attack")
    p.add_argument("--defence", required=True, help="a defence name from params' defences")
    p.add_argument("--attack", required=True, help="an attack name from params' attacks")
    add("metrics", cmd_metrics,
        "stage: score every reconstruction against its private image (metrics.csv)")
    add("aggregate", cmd_aggregate, "stage: the paper's tables and figures from metrics.csv")
    p = add("fetch-biggan", cmd_fetch_biggan,
            "stage: download BigGAN-deep-256's weights and config, verified by SHA-256")
    p.add_argument("--sha256", action="append", default=[], metavar="[FILE=]HASH",
                   help="the SHA-256 to verify against (the weights' is not recorded yet: see "
                        "ggl.biggan); repeatable")
    add("fetch-lpips", cmd_fetch_lpips,
        "download torchvision's VGG16 weights for LPIPS into the torch cache (hash-checked)")
    p = add("dvc-yaml", cmd_dvc_yaml, "generate dvc.yaml from the stage registry")
    p.add_argument("--output", default="dvc.yaml", help="where to write (default: dvc.yaml)")
    p.add_argument("--check", action="store_true",
                   help="do not write; fail if the file differs from what would be generated")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
        args.handler(args, params)
    except (ParamsError, MissingRunError, ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
