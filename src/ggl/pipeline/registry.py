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


def quality_outs(params: Params) -> list[str]:
    return [f"{results_dir(params)}/generator/quality.json"]


def attack_outs(params: Params, defence: str, attack: str) -> list[str]:
    from ggl.attack.run import ATTACK_FILES

    folder = f"{results_dir(params)}/attacks/{defence}/{attack}"
    return [f"{folder}/{image}/{name}" for image in params.image_ids() for name in ATTACK_FILES]


def attack_deps(params: Params, defence: str, attack: str) -> list[str]:
    """The received gradients (.pt only: never the client's truth) and the generator."""
    received = gradient_outs(params, defence)[::2]
    return [*received, generator_outs(params)[0]]


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
        code=("attack/run.py", "attack/objective.py", "attack/optimisers.py",
              "generators.py"),
        summary="invert every received gradient of one defence with one attack",
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
        entry["outs"] = stage.outs(params)
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
