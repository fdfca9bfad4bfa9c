"""Every pipeline stage, described once: its command, inputs, params keys and outputs.

``dvc.yaml`` is generated from this table (``ggl dvc-yaml``) and the Snakemake rules in
``workflow/rules/`` take their inputs, outputs, params and commands from it, so the two
runners cannot disagree. A stage kind with wildcards (for example the gradient stage, one per
defence) expands to one stage instance per value listed in params.

Adding a stage = one more ``StageKind`` in ``STAGE_KINDS`` and one small rule file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggl.config import Params

Keys = dict[str, str]


def data_dir(params: Params) -> str:
    return f"data/{params.experiment}"


def results_dir(params: Params) -> str:
    return f"results/{params.experiment}"


def split_outs(params: Params) -> list[str]:
    return [f"{data_dir(params)}/{name}" for name in ("public.pt", "private.pt", "index.json")]


def gradient_outs(params: Params, defence: str) -> list[str]:
    folder = f"{results_dir(params)}/gradients/{defence}"
    return [f"{folder}/{image}.{ext}" for image in params.image_ids() for ext in ("pt", "json")]


def generator_outs(params: Params) -> list[str]:
    folder = f"{results_dir(params)}/generator"
    return [f"{folder}/{name}" for name in ("generator.pt", "losses.csv", "samples.png",
                                            "losses.png")]


BIGGAN_DIR = "data/biggan"  # shared by experiments: the published weights never change


def biggan_outs(params: Params) -> list[str]:
    from ggl.biggan import CONFIG_FILE, WEIGHTS_FILE

    return [f"{BIGGAN_DIR}/{WEIGHTS_FILE}", f"{BIGGAN_DIR}/{CONFIG_FILE}"]


def generator_checkpoint(params: Params) -> str | None:
    """The file the attack stage loads the generator from (None for a plugin generator)."""
    kind = params.generator.kind
    if kind == "dcgan":
        return generator_outs(params)[0]
    if kind == "biggan-deep-256":
        return biggan_outs(params)[0]
    return None


def quality_outs(params: Params) -> list[str]:
    return [f"{results_dir(params)}/generator/quality.json"]


def attack_outs(params: Params, defence: str, attack: str) -> list[str]:
    from ggl.attack.run import ATTACK_FILES

    folder = f"{results_dir(params)}/attacks/{defence}/{attack}"
    return [f"{folder}/{image}/{name}" for image in params.image_ids() for name in ATTACK_FILES]


def attack_deps(params: Params, defence: str, attack: str) -> list[str]:
    """The received gradients (.pt only: never the client's truth) and the generator."""
    received = gradient_outs(params, defence)[::2]
    checkpoint = generator_checkpoint(params)
    return [*received, *([checkpoint] if checkpoint else [])]


def metrics_outs(params: Params) -> list[str]:
    return [f"{results_dir(params)}/metrics.csv"]


def metrics_deps(params: Params) -> list[str]:
    """Every reconstruction, the clients' truths and the private split."""
    from ggl.attack.run import ATTACK_FILES

    wanted = {"reconstruction.pt", "result.json"}
    recon = [out for d in params.defences for a in params.attacks
             for out in attack_outs(params, d, a) if out.rsplit("/", 1)[1] in wanted]
    truths = [out for d in params.defences for out in gradient_outs(params, d)[1::2]]
    assert wanted <= set(ATTACK_FILES)
    return [*recon, *truths, split_outs(params)[1]]


def has_table2(params: Params) -> bool:
    from ggl.report import GGL_ATTACKS

    return "none" in params.defences and bool(set(GGL_ATTACKS) & set(params.attacks))


def aggregate_outs(params: Params) -> list[str]:
    base = results_dir(params)
    tables = ["summary.csv", "table3.csv", "table3.md"]
    tables += ["table2.csv", "table2.md"] if has_table2(params) else []
    figures = [f"reconstructions_{i}.png" for i in params.image_ids()]
    figures += ["psnr_db_pm1.png", "lpips.png", "ssim.png"]
    figures += ["convergence.png"] if has_table2(params) else []
    from ggl.report import defence_sweeps

    figures += [f"sweep_{kind}.png" for kind in defence_sweeps(params)]
    return [*(f"{base}/tables/{t}" for t in tables), *(f"{base}/figures/{f}" for f in figures),
            f"{base}/summary.json"]


def aggregate_deps(params: Params) -> list[str]:
    curves = [out for a in params.attacks for out in attack_outs(params, "none", a)
              if out.endswith("curve.csv")] if "none" in params.defences else []
    return [*metrics_outs(params), *metrics_deps(params), *curves]


def lookup(raw: dict[str, Any], dotted: str) -> Any:
    value: Any = raw
    for part in dotted.split("."):
        value = value[part]
    return value


@dataclass(frozen=True)
class StageKind:
    """A family of stages; ``instances`` lists the wildcard values params ask for."""

    name: str
    wildcards: tuple[str, ...]
    instances: Callable[[Params], list[Keys]]
    argv: Callable[..., list[str]]  # (**keys) -> CLI arguments after 'ggl <name>'
    deps: Callable[..., list[str]]  # (params, **keys) -> files read
    outs: Callable[..., list[str]]  # (params, **keys) -> files written
    param_keys: Callable[..., list[str]]  # (**keys) -> dotted params keys read
    code: tuple[str, ...] = ()  # modules of src/ggl whose change should re-run the stage
    summary: str = ""


@dataclass(frozen=True)
class Stage:
    kind: StageKind
    keys: Keys = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "__".join([self.kind.name, *self.keys.values()])

    def command(self, params_file: str) -> str:
        args = ["ggl", self.kind.name, "--params", params_file, *self.kind.argv(**self.keys)]
        return " ".join(args)

    def deps(self, params: Params) -> list[str]:
        code = [f"src/ggl/{module}" for module in self.kind.code]
        return [*self.kind.deps(params, **self.keys), *code]

    def outs(self, params: Params) -> list[str]:
        return self.kind.outs(params, **self.keys)

    def param_keys(self) -> list[str]:
        return self.kind.param_keys(**self.keys)

    def param_values(self, params: Params) -> dict[str, Any]:
        return {key: lookup(params.raw, key) for key in self.param_keys()}


STAGE_KINDS: list[StageKind] = [
    StageKind(
        name="split",
        wildcards=(),
        instances=lambda params: [{}],
        argv=lambda: [],
        deps=lambda params: [],
        outs=split_outs,
        param_keys=lambda: ["experiment", "data"],
        code=("data.py",),
        summary="load the dataset and write the seeded public/private split",
    ),
    StageKind(
        name="gradients",
        wildcards=("defence",),
        instances=lambda params: [{"defence": d} for d in params.defences],
        argv=lambda defence: ["--defence", defence],
        deps=lambda params, defence: split_outs(params)[1:],
        outs=gradient_outs,
        param_keys=lambda defence: ["experiment", "seed", "private_images", "model",
                                    f"defences.{defence}"],
        code=("client.py", "defences.py", "models.py"),
        summary="the client's gradient of each private image under one defence",
    ),
    StageKind(
        name="train-gan",
        wildcards=(),
        instances=lambda params: [{}] if params.generator.kind == "dcgan" else [],
        argv=lambda: [],
        deps=lambda params: split_outs(params)[:1],  # the public split only
        outs=generator_outs,
        param_keys=lambda: ["experiment", "generator"],
        code=("gan.py", "generators.py"),
        summary="WGAN-GP training of the generator on the public split",
    ),
    StageKind(
        name="fetch-biggan",
        wildcards=(),
        instances=lambda params: [{}] if params.generator.kind == "biggan-deep-256" else [],
        argv=lambda: [],
        deps=lambda params: [],
        outs=biggan_outs,
        param_keys=lambda: ["generator.kind"],
        code=("biggan.py",),
        summary="download BigGAN-deep-256 and verify its SHA-256",
    ),
    StageKind(
        name="gan-quality",
        wildcards=(),
        instances=lambda params: [{}] if params.generator.kind == "dcgan" else [],
        argv=lambda: [],
        deps=lambda params: [generator_outs(params)[0], *split_outs(params)[:2]],
        outs=quality_outs,
        param_keys=lambda: ["experiment", "generator", "seed"],
        code=("gan.py",),
        summary="how recognisable the generator's samples are (a classifier's confidence)",
    ),
    StageKind(
        name="attack",
        wildcards=("defence", "attack"),
        instances=lambda params: [{"defence": d, "attack": a}
                                  for d in params.defences for a in params.attacks],
        argv=lambda defence, attack: ["--defence", defence, "--attack", attack],
        deps=attack_deps,
        outs=attack_outs,
        param_keys=lambda defence, attack: ["experiment", "seed", "generator",
                                            f"attacks.{attack}"],
        code=("attack/run.py", "attack/objective.py", "attack/batched.py",
              "attack/optimisers.py", "attack/baselines.py", "attack/labels.py", "defences.py",
              "generators.py"),
        summary="invert every received gradient of one defence with one attack",
    ),
    StageKind(
        name="metrics",
        wildcards=(),
        instances=lambda params: [{}],
        argv=lambda: [],
        deps=metrics_deps,
        outs=metrics_outs,
        param_keys=lambda: ["experiment", "model", "metrics", "private_images"],
        code=("metrics.py", "report.py"),
        summary="join each reconstruction with its private image: MSE-I, PSNR, SSIM, LPIPS, "
                "MSE-R",
    ),
    StageKind(
        name="aggregate",
        wildcards=(),
        instances=lambda params: [{}],
        argv=lambda: [],
        deps=aggregate_deps,
        outs=aggregate_outs,
        param_keys=lambda: ["experiment", "defences", "attacks", "private_images"],
        code=("report.py",),
        summary="the paper's tables and figures from metrics.csv",
    ),
]


def kind(name: str) -> StageKind:
    for k in STAGE_KINDS:
        if k.name == name:
            return k
    raise KeyError(f"no stage kind {name!r}; known: {[k.name for k in STAGE_KINDS]}")


def all_stages(params: Params) -> list[Stage]:
    return [Stage(k, keys) for k in STAGE_KINDS for keys in k.instances(params)]


def dvc_yaml(params: Params, params_file: str) -> dict[str, Any]:
    """The dvc.yaml document for one params file."""
    stages: dict[str, Any] = {}
    for stage in all_stages(params):
        keys = stage.param_keys()
        entry: dict[str, Any] = {"cmd": stage.command(params_file)}
        if stage.deps(params):
            entry["deps"] = stage.deps(params)
        entry["params"] = keys if params_file == "params.yaml" else [{params_file: keys}]
        # `dvc metrics show` reads summary.json; `dvc plots` shows the figures and the CSV
        # tables (DVC renders no Markdown: the .md tables stay plain outputs).
        metrics = [o for o in stage.outs(params) if o.endswith("/summary.json")]
        plots = [o for o in stage.outs(params)
                 if "/figures/" in o or ("/tables/" in o and o.endswith(".csv"))]
        entry["outs"] = [o for o in stage.outs(params) if o not in metrics + plots]
        for section, paths in (("metrics", metrics), ("plots", plots)):
            if paths:
                entry[section] = [{path: {"cache": False}} for path in paths]
        stages[stage.name] = entry
    return {"stages": stages}


DVC_HEADER = ("# Generated by `ggl dvc-yaml --params {params_file}` from the stage registry in\n"
              "# src/ggl/pipeline/registry.py. Do not edit: regenerate it after changing the\n"
              "# stage list or params' names (`ggl dvc-yaml --check` fails when it is stale).\n")


def render_dvc_yaml(params: Params, params_file: str) -> str:
    import yaml

    body = yaml.safe_dump(dvc_yaml(params, params_file), sort_keys=False, width=100)
    return DVC_HEADER.format(params_file=params_file) + body


def check_dvc_yaml(params: Params, params_file: str, path: str | Path) -> str | None:
    """None when ``path`` matches what the registry generates, else a message."""
    path = Path(path)
    expected = render_dvc_yaml(params, params_file)
    if not path.exists():
        return f"{path} is missing; run `ggl dvc-yaml --params {params_file}`"
    if path.read_text() != expected:
        return (f"{path} is stale (the stage registry or {params_file} changed); run "
                f"`ggl dvc-yaml --params {params_file} --output {path}`")
    return None
