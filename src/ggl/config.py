"""Params: load a params file, validate it against the one schema (before any compute, every
message naming the offending key and what is allowed, e.g. ``defences.noise[0].sigma: -1 is less
than the minimum of 0``), and expose typed dataclasses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ggl.errors import GglError
from ggl.plugins import PLUGIN_PATTERN
from ggl.settings import GGL_OPTIMISERS, METHODS, NO_MODEL_PASS, AttackConfig

KNOWN_DATASET_SIZES = {"digits": 1797}


class ParamsError(GglError):
    """A params file is malformed; the message names the key and what is allowed."""


def schema() -> dict[str, Any]:
    text = resources.files("ggl").joinpath("schemas/params.schema.yaml").read_text()
    return yaml.safe_load(text)


def _key_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _allowed(subschema: dict[str, Any]) -> str:
    """Human list of what an anyOf of enums and plugin patterns allows."""
    options: list[str] = []
    for option in subschema.get("anyOf", []):
        options += [str(v) for v in option.get("enum", [])]
        if "$ref" in option and option["$ref"].endswith("plugin"):
            options.append("'package.module:callable'")
    return ", ".join(options)


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        where = "" if key == "<top level>" else f" in {key}"
        return f"{key + '.' if key != '<top level>' else ''}{missing}: missing key{where}"
    if error.validator == "additionalProperties":
        return f"{key}: {error.message} (remove it or check its spelling)"
    if error.validator in ("anyOf", "enum"):
        allowed = (_allowed(error.schema) if error.validator == "anyOf"
                   else ", ".join(map(str, error.validator_value)))
        return f"{key}: {error.instance!r} is not allowed; allowed are {allowed}"
    if error.validator == "pattern":
        return (f"{key}: {error.instance!r} is not a valid name "
                f"(letters, digits, '_' and '-', starting with a letter or digit)")
    return f"{key}: {error.message}"


def validate(raw: Any, source: str = "params") -> None:
    """Raise ParamsError listing every violation of the schema and of cross-key rules."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    # An if/then failure is reported on its own sub-error; skip the noisy parent.
    messages = [_describe(e) for e in errors if e.validator not in ("if", "allOf")]
    messages = messages or _cross_checks(raw)  # cross-key rules need a valid shape
    if len(messages) == 1:
        raise ParamsError(f"{source} is invalid: {messages[0]}")
    if messages:
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(messages))


def _cross_checks(raw: dict[str, Any]) -> list[str]:
    data = raw["data"]
    problems = []
    if max(raw["private_images"]) >= data["private_size"]:
        problems.append(f"private_images: index {max(raw['private_images'])} is out of range; "
                        f"allowed are 0 .. data.private_size - 1 = {data['private_size'] - 1}")
    available = KNOWN_DATASET_SIZES.get(data["dataset"])
    needed = data["public_size"] + data["private_size"] + data["test_size"]
    if available is not None and needed > available:
        problems.append(f"data.public_size + data.private_size + data.test_size = {needed} "
                        f"exceeds the {available} images of dataset {data['dataset']!r}")
    utility = raw["utility"]
    for name, client in raw["clients"].items():
        batch = client["batch_size"]
        if len(raw["private_images"]) % batch:
            problems.append(f"clients.{name}.batch_size: {batch} does not divide the "
                            f"{len(raw['private_images'])} private_images into whole batches; "
                            f"list a multiple of {batch} images, or change the batch size")
        if client["checkpoint"] == "trained" and not utility["rounds"]:
            problems.append(f"clients.{name}.checkpoint: trained is the utility stage's model "
                            f"after utility.rounds rounds; set utility.rounds > 0")
    if utility["rounds"] and not data["test_size"]:
        problems.append("utility.rounds: the utility stage measures test accuracy on the "
                        "held-out test part; set data.test_size > 0, or utility.rounds: 0")
    if utility["rounds"] and utility["clients"] > data["private_size"]:
        problems.append(f"utility.clients: {utility['clients']} clients cannot share "
                        f"data.private_size = {data['private_size']} images")
    for name, steps in raw["defences"].items():
        for i, step in enumerate(steps):
            if step["kind"] != "dp-sgd":
                continue
            if i != 0:
                problems.append(f"defences.{name}[{i}]: dp-sgd computes the update itself "
                                f"(per-sample clipping and noise), so it must be the first step")
            if raw["model"]["norm"] != "group":
                problems.append(f"defences.{name}[{i}]: dp-sgd clips per-sample gradients, "
                                f"which BatchNorm mixes across a batch; set model.norm: group "
                                f"(Opacus' GroupNorm variant of the model)")
    return problems


@dataclass(frozen=True)
class DataConfig:
    dataset: str
    root: str
    download: bool
    image_size: int
    num_classes: int
    public_size: int
    private_size: int
    test_size: int  # held out from public and private: the utility stage's test set
    split_seed: int


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    width: int
    seed: int
    num_classes: int
    norm: str = "batch"  # batch | group: BatchNorm replaced by Opacus' GroupNorm (DP-SGD)


@dataclass(frozen=True)
class ClientConfig:
    """The protocol of an attacked client (an entry of params' ``clients``): B, E, its SGD
    step size and the model checkpoint of the attacked round."""

    batch_size: int = 1
    local_steps: int = 1
    local_lr: float = 0.1
    checkpoint: str = "initial"  # initial | trained (the utility stage's final model)


@dataclass(frozen=True)
class Update:
    """One client update params ask for: its client protocol's name and its private indices."""

    client: str
    indices: tuple[int, ...]


@dataclass(frozen=True)
class UtilityConfig:
    """Federated averaging of the model on the private split (the utility stage)."""

    rounds: int  # 0: no utility stage
    clients: int
    partition: str  # iid | dirichlet
    alpha: float  # the Dirichlet label skew's concentration (partition: dirichlet)
    local_steps: int
    batch_size: int
    lr: float
    seed: int


@dataclass(frozen=True)
class DefenceStep:
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> DefenceStep:
        return cls(raw["kind"], {k: v for k, v in raw.items() if k != "kind"})


def dp_sgd_step(steps: Sequence[DefenceStep]) -> DefenceStep | None:
    """A defence's dp-sgd step (always its first), or None."""
    return steps[0] if steps and steps[0].kind == "dp-sgd" else None


# The setting that measures a defence kind's strength (params sweep it, the paper's Fig. 7)
STRENGTH = {"noise": "sigma", "clipping": "bound", "sparsification": "rate", "soteria": "rate",
            "dp-sgd": "noise_multiplier"}
STRONGER_WHEN_SMALLER = ("clipping",)  # a smaller bound protects more
ZERO_IS_NONE = ("noise", "sparsification", "soteria")  # strength 0 = no defence


@dataclass(frozen=True)
class GeneratorConfig:
    kind: str
    latent_dim: int
    width: int
    conditional: bool
    train: dict[str, Any]
    sha256: str | None = None  # biggan-deep-256: the weights' pinned hash (ggl.biggan)


def build_settings(cls: type, raw: Any, key: str) -> Any:
    """One settings dataclass from params, every field written out; errors name ``key``."""
    names = [f.name for f in fields(cls)]
    if not isinstance(raw, dict):
        raise ParamsError(f"{key}: expected a mapping with {', '.join(names)}; got {raw!r}")
    for name in raw:
        if name not in names:
            raise ParamsError(f"{key}.{name}: unknown setting; allowed are {', '.join(names)}")
    for name in names:
        if name not in raw:
            raise ParamsError(f"{key}.{name}: missing setting (params write out every setting "
                              f"of {key}: {', '.join(names)})")
    try:
        return cls(**raw)
    except ValueError as exc:  # the dataclass names the field first: "lr: must be > 0"
        raise ParamsError(f"{key}.{exc}") from exc


def attack_config(raw: dict[str, Any], key: str,
                  controlled: dict[str, AttackConfig] | None = None) -> AttackConfig:
    """One entry of params' attacks (``key`` names it in errors); ``controlled``: the entries a
    noise-gradient control may name in ``of``."""
    method = raw["method"]
    if method not in (*METHODS, "noise-gradient") and not re.match(PLUGIN_PATTERN, str(method)):
        raise ParamsError(f"{key}.method: {method!r} is not allowed; allowed are "
                          f"{', '.join([*METHODS, 'noise-gradient'])}, or "
                          "'package.module:callable'")
    of = raw.get("of")
    if (of is None) != (method != "noise-gradient"):
        raise ParamsError(f"{key}.of: " + ("missing: name the GGL attack this noise-gradient "
                                           "control repeats" if of is None else
                                           "only a noise-gradient control takes 'of'"))
    classes = METHODS.get(method)
    if of is not None:
        target = (controlled or {}).get(of)
        if target is None or target.method not in GGL_OPTIMISERS:
            ggl = [n for n, c in (controlled or {}).items() if c.method in GGL_OPTIMISERS]
            raise ParamsError(f"{key}.of: {of!r} is not a GGL attack of params' attacks; "
                              f"allowed are {', '.join(ggl) or 'none'}")
        classes = METHODS[target.method]
    objective, optimiser = raw["objective"], raw["optimiser"]
    if classes is not None:  # a plugin method gets its settings as given
        objective = build_settings(classes[0], objective, f"{key}.objective")
        optimiser = build_settings(classes[1], optimiser, f"{key}.optimiser")
    try:
        cfg = AttackConfig(method, raw["trials"], raw["budget"], objective, optimiser, of)
    except ValueError as exc:
        raise ParamsError(f"{key}.{exc}") from exc
    if method in NO_MODEL_PASS and cfg.trials != 1:
        raise ParamsError(f"{key}.trials: a {method} control has one trial, got {cfg.trials}")
    if method == "label-only" and cfg.budget != 1:
        raise ParamsError(f"{key}.budget: label-only is one image (budget 1), got {cfg.budget}")
    if of is not None:  # the same attack, only the gradient differs
        differ = [f for f in ("trials", "budget", "objective", "optimiser")
                  if getattr(cfg, f) != getattr(controlled[of], f)]
        if differ:
            raise ParamsError(f"{key}: a noise-gradient control repeats attacks.{of} exactly; "
                              f"its {', '.join(differ)} differ (copy them from attacks.{of})")
    return cfg


def attack_configs(raw: dict[str, Any]) -> dict[str, AttackConfig]:
    """params' attacks, noise-gradient controls checked against the attacks they repeat."""
    plain = {name: attack_config(cfg, f"attacks.{name}") for name, cfg in raw.items()
             if cfg["method"] != "noise-gradient"}
    return {name: plain.get(name) or attack_config(cfg, f"attacks.{name}", plain)
            for name, cfg in raw.items()}


@dataclass(frozen=True)
class Params:
    experiment: str
    device: str
    seed: int
    threads: int
    scorer: str  # how the objective scores a batch of candidates: auto | batched | loop
    compute_budget: int  # model passes per trial for every attack; 0: each its own budget
    data: DataConfig
    private_images: tuple[int, ...]
    clients: dict[str, ClientConfig]
    model: ModelConfig
    defences: dict[str, tuple[DefenceStep, ...]]
    generator: GeneratorConfig
    attacks: dict[str, AttackConfig]
    lpips_stand_in: bool
    reid_pool: int  # unattacked private images per class the truth is ranked among
    utility: UtilityConfig
    raw: dict[str, Any]

    @classmethod
    def from_raw(cls, raw: dict[str, Any], source: str = "params") -> Params:
        validate(raw, source)
        data = DataConfig(**raw["data"])
        return cls(
            **{key: raw[key] for key in ("experiment", "device", "seed", "threads", "scorer",
                                         "compute_budget")},
            data=data,
            private_images=tuple(raw["private_images"]),
            clients={name: ClientConfig(**c) for name, c in raw["clients"].items()},
            model=ModelConfig(**raw["model"], num_classes=data.num_classes),
            utility=UtilityConfig(**raw["utility"]),
            defences={name: tuple(DefenceStep.from_raw(s) for s in steps)
                      for name, steps in raw["defences"].items()},
            generator=GeneratorConfig(**raw["generator"]),
            attacks=attack_configs(raw["attacks"]),
            lpips_stand_in=raw["metrics"]["lpips_stand_in"],
            reid_pool=raw["metrics"]["reid_pool"],
            raw=raw,
        )

    def image_ids(self) -> list[str]:
        """The id of each client update (``updates``)."""
        return list(self.updates())

    def updates(self) -> dict[str, Update]:
        """Each client update's id and batch: per entry of clients, private_images in order,
        batch_size at a time. Ids: img<index> at batch size 1, batch<k> above, prefixed with
        '<client>-' when params have several clients."""
        out = {}
        for name, client in self.clients.items():
            size, indices = client.batch_size, self.private_images
            prefix = f"{name}-" if len(self.clients) > 1 else ""
            for k in range(len(indices) // size):
                batch = indices[k * size:(k + 1) * size]
                update = image_id(batch[0]) if size == 1 else f"batch{k}"
                out[prefix + update] = Update(name, batch)
        return out

    def batched(self) -> bool:
        """Whether some client sends the update of a batch above one image."""
        return any(c.batch_size > 1 for c in self.clients.values())

    def trained_checkpoint(self) -> bool:
        """Whether some client is attacked at the utility stage's trained model."""
        return any(c.checkpoint == "trained" for c in self.clients.values())

    def families(self) -> dict[str, dict[str, float]]:
        """{kind: {defence name: strength}} of every one-step defence whose kind has a strength
        setting (``STRENGTH``)."""
        families: dict[str, dict[str, float]] = {}
        for name, steps in self.defences.items():
            if len(steps) == 1 and steps[0].kind in STRENGTH:
                families.setdefault(steps[0].kind, {})[name] = float(
                    steps[0].settings[STRENGTH[steps[0].kind]])
        return families

    def sweeps(self) -> dict[str, dict[str, float]]:
        """The families params try at 3 or more strengths (e.g. Soteria at 0-80 %, the paper's
        Fig. 7); ``none`` joins a sweep as strength 0 where 0 means no defence."""
        sweeps = self.families()
        if "none" in self.defences:
            for kind in sweeps.keys() & ZERO_IS_NONE:
                sweeps[kind]["none"] = 0.0
        return {k: v for k, v in sweeps.items() if len(set(v.values())) >= 3}

    def runs(self) -> list[tuple[str, str, str]]:
        """(defence, attack, image id) of every attack run params ask for."""
        return [(d, a, i) for d in self.defences for a in self.attacks for i in self.image_ids()]


def image_id(index: int) -> str:
    """The name of a private image in every file path and table: img<index>."""
    return f"img{index}"


def load_params(path: str | Path) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    return Params.from_raw(raw, source=str(path))
