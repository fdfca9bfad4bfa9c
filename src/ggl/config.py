"""Params: load a params file, validate it against the one schema (before any compute, every
message naming the offending key and what is allowed, e.g. ``defences.noise[0].sigma: -1 is less
than the minimum of 0``, one line per problem), and expose typed dataclasses.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ggl.errors import GglError
from ggl.plugins import PLUGIN_PATTERN, import_callable
from ggl.settings import GGL_OPTIMISERS, METHODS, NO_MODEL_PASS, AttackConfig

MAX_PARAMS_BYTES = 1_000_000  # params.yaml is 12 kB; a 32 MB file hung the validators for minutes

# What the built-in datasets (ggl.data) have: their classes, and the images each part of the
# split can draw on, as (parts, most images, where from). digits is one pool split three ways;
# CelebA's parts come from its train, test and valid splits; ImageNet's private and test parts
# from its 50,000 validation images, and it has no public part (the prior is the pretrained
# BigGAN-deep-256).
DATASET_CLASSES = {"digits": 10, "celeba": 2, "imagenet": 1000}
DATASET_PARTS: dict[str, tuple[tuple[tuple[str, ...], int, str], ...]] = {
    "digits": ((("public_size", "private_size", "test_size"), 1797, "dataset 'digits'"),),
    "celeba": ((("public_size",), 162770, "CelebA's train split"),
               (("private_size",), 19962, "CelebA's test split"),
               (("test_size",), 19867, "CelebA's valid split")),
    "imagenet": ((("public_size",), 0, "no public part: its prior is the pretrained "
                                       "biggan-deep-256"),
                 (("private_size", "test_size"), 50000, "ImageNet's validation set")),
}
DCGAN_IMAGE_SIZE = 32  # ggl.generators.DCGANGenerator: 4x4 doubled 3 times; its critic takes 32x32
BIGGAN_CLASSES = 1000
RESNET18_IMAGENET_WIDTH = 64  # torchvision's resnet18


class ParamsError(GglError):
    """A params file is malformed; the message names the key and what is allowed."""


def schema() -> dict[str, Any]:
    text = resources.files("ggl").joinpath("schemas/params.schema.yaml").read_text()
    return yaml.safe_load(text)


def _is_int(_checker: Any, instance: Any) -> bool:
    """"integer" is an int: Draft 2020-12 also takes 16.0, and a float seed (1.0) derives other
    seeds than 1; a bool is no integer."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _unique_items(validator: Any, unique: bool, instance: Any, _schema: Any) -> Iterator[Any]:
    """uniqueItems in linear time (jsonschema's own turns quadratic on a list of mixed types)."""
    if not (unique and validator.is_type(instance, "array")):
        return
    seen: set[Any] = set()
    for item in instance:
        try:
            key = (type(item), item)
            repeated = key in seen
        except TypeError:  # unhashable: a list or mapping, refused by the items' type anyway
            continue
        if repeated:
            yield jsonschema.ValidationError(f"{_short(item)} is listed twice")
            return
        seen.add(key)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, validators={"uniqueItems": _unique_items},
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_int))


@cache
def _validator() -> Any:
    return _Validator(schema())


def _key_path(path: Any) -> str:
    out = ""
    for part in path:
        if isinstance(part, str) and not (part.isprintable() and part):
            part = repr(part)  # a key with a newline in it still makes one line
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


_REPR = reprlib.Repr()  # bounded: a few items of a few levels, long strings and ints cut
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxlong = 2, 4, 6, 50, 40


def _short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to one short line (true, false and null as YAML spells them); bounded
    work however large the value."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


MAX_VALUES = 1_000_000  # values params may hold, YAML aliases expanded (a 1 MB file: ~500,000)


def _too_many_values(raw: Any) -> bool:
    """Whether params hold over MAX_VALUES values once YAML aliases (*name, which share one
    object) are expanded, or refer to themselves: the validators walk every copy, so an alias
    bomb of a few lines would hang them. Linear in the distinct objects."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # containers whose children are being sized: one seen again is a cycle
    stack: list[tuple[Any, bool]] = [(raw, False)]
    while stack:
        value, children_sized = stack.pop()
        if not isinstance(value, dict | list) or (not children_sized and id(value) in sizes):
            continue
        children = list(value.values() if isinstance(value, dict) else value)
        if children_sized:
            open_.discard(id(value))
            sizes[id(value)] = 1 + sum(sizes.get(id(child), 1) for child in children)
            if sizes[id(value)] > MAX_VALUES:
                return True
        elif id(value) in open_:
            return True
        else:
            open_.add(id(value))
            stack.append((value, True))
            stack.extend((child, False) for child in children)
    return False


def _allowed(subschema: dict[str, Any]) -> str:
    """Human list of what an enum, or an anyOf of enums and plugin patterns, allows."""
    options = [str(v) for v in subschema.get("enum", [])]
    for option in subschema.get("anyOf", []):
        options += [str(v) for v in option.get("enum", [])]
        if "$ref" in option and option["$ref"].endswith("plugin"):
            options.append("'package.module:callable'")
    return ", ".join(options)


NAME_RULE = "letters, digits, '_' and '-', starting with a letter or digit"
TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
              "boolean": "true or false (a boolean)", "object": "a mapping", "array": "a list",
              "null": "null"}


def _pattern_rule(pattern: str) -> str:
    if ":" in pattern:
        return "is not 'package.module:callable'"
    if "0-9a-f" in pattern:
        return "is not 64 lowercase hex digits"
    if "__" in pattern:
        return (f"is not a valid name ({NAME_RULE}; no '__', which DVC stage names put "
                "between names)")
    return f"is not a valid name ({NAME_RULE})"


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """One line per problem of one schema error: the dotted key, the problem, what is allowed."""
    key, value, rule = _key_path(error.absolute_path), _short(error.instance), error.validator
    prefix = "" if key == "<top level>" else key + "."
    if rule == "required":
        missing = error.message.split("'")[1]
        allowed = _allowed(error.schema.get("properties", {}).get(missing) or {})
        return [f"{prefix}{missing}: missing key" + (f"; allowed are {allowed}" if allowed else "")]
    if rule == "additionalProperties" and error.validator_value is False:
        known = list(error.schema.get("properties", {}))
        return [f"{_key_path((*error.absolute_path, extra))}: unknown key (remove it or check "
                f"its spelling); allowed are {', '.join(known)}"
                for extra in error.instance if extra not in known]
    if rule in ("anyOf", "oneOf"):
        allowed = _allowed(error.schema)
        if allowed or not error.context:
            return [f"{key}: {value} is not allowed; allowed are {allowed}"]
        # the branch of the right type says what is wrong ('abc' is no null, but the string
        # branch's pattern is the point)
        typed = [e for e in error.context if e.validator != "type"] or error.context
        return _describe(jsonschema.exceptions.best_match(typed))
    if rule == "enum":
        return [f"{key}: {value} is not allowed; allowed are {_allowed(error.schema)}"]
    if rule == "pattern":
        return [f"{key}: {value} {_pattern_rule(error.validator_value)}"]
    if rule == "type":
        types = error.validator_value
        expected = " or ".join(TYPE_NAMES.get(t, t) for t in ([types] if isinstance(types, str)
                                                                else types))
        hint = ""
        if (types == "integer" and isinstance(error.instance, float)
                and error.instance.is_integer() and abs(error.instance) < 2**63):
            hint = f" (write {int(error.instance)})"
        return [f"{key}: {value} is not {expected}{hint}"]
    bound = error.validator_value
    messages = {"minimum": f"{value} is less than the minimum of {bound}",
                "maximum": f"{value} is greater than the maximum of {bound}",
                "exclusiveMinimum": f"must be > {bound}, got {value}",
                "exclusiveMaximum": f"must be < {bound}, got {value}",
                "maxLength": f"{value} is longer than {bound} characters"}
    message = messages.get(rule, error.message)
    return [f"{key}: {message if len(message) <= 200 else message[:197] + '...'}"]


def _bad_numbers(raw: Any) -> dict[tuple[Any, ...], str]:
    """Every number params may not hold, by key path: a float that is not finite (NaN, inf) and
    an int of 2**63 or more (no setting needs one; torch's seeds take 64 bits)."""
    found: dict[tuple[Any, ...], str] = {}
    seen: set[int] = set()  # YAML aliases share objects: each is walked once
    stack: list[tuple[tuple[Any, ...], Any]] = [((), raw)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            spelt = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[str(value)]
            found[path] = f"{spelt} is not a finite number (every number in params must be)"
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            found[path] = f"{_short(value)} is too large (integers in params are below 2**63)"
        elif isinstance(value, dict | list) and id(value) not in seen:
            seen.add(id(value))
            items = list(value.items() if isinstance(value, dict) else enumerate(value))
            stack.extend((path + (k,), v) for k, v in reversed(items))
    return found


def _refuse(source: str, messages: list[str]) -> None:
    """Raise ParamsError with one line per problem (none: return)."""
    messages = list(dict.fromkeys(messages))  # one line per problem, however reached
    if len(messages) == 1:
        raise ParamsError(f"{source} is invalid: {messages[0]}")
    if messages:
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(messages))


def validate(raw: Any, source: str = "params") -> None:
    """Raise ParamsError listing every violation of the schema and of cross-key rules."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    if _too_many_values(raw):
        raise ParamsError(f"{source} is invalid: its YAML aliases (*name) expand to over "
                          f"{MAX_VALUES:,} values, or refer to themselves")
    bad = _bad_numbers(raw)
    errors = sorted((e for e in _validator().iter_errors(raw)
                     if tuple(e.absolute_path) not in bad),
                    key=lambda e: list(map(str, e.absolute_path)))
    messages = [f"{_key_path(path)}: {problem}" for path, problem in bad.items()]
    # An if/then failure is reported on its own sub-error; skip the noisy parent.
    messages += [m for e in errors if e.validator not in ("if", "allOf") for m in _describe(e)]
    _refuse(source, messages or _cross_checks(raw))  # cross-key rules need a valid shape


def _cross_checks(raw: dict[str, Any]) -> list[str]:
    data = raw["data"]
    problems = []
    if max(raw["private_images"]) >= data["private_size"]:
        problems.append(f"private_images: index {max(raw['private_images'])} is out of range; "
                        f"allowed are 0 .. data.private_size - 1 = {data['private_size'] - 1}")
    problems += _data_checks(raw)
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


def _data_checks(raw: dict[str, Any]) -> list[str]:
    """The data against the dataset, the model, the generator and the stages that read it."""
    data, model, generator = raw["data"], raw["model"], raw["generator"]
    dataset, kind, problems = data["dataset"], generator["kind"], []
    classes = DATASET_CLASSES.get(dataset)
    if classes is not None and data["num_classes"] != classes:
        problems.append(f"data.num_classes: {data['num_classes']}, but dataset {dataset} has "
                        f"{classes} classes; set {classes}")
    for parts, most, where in DATASET_PARTS.get(dataset, ()):
        needed = sum(data[part] for part in parts)
        name = " + ".join(f"data.{part}" for part in parts)
        if most == 0 and needed:
            problems.append(f"{name}: {needed}, but dataset {dataset} has {where}; set 0")
        elif needed > most:
            problems.append(f"{name}{' =' if len(parts) > 1 else ':'} {needed} exceeds the "
                            f"{most} images of {where}")
    if kind == "dcgan" and data["image_size"] != DCGAN_IMAGE_SIZE:
        problems.append(f"data.image_size: {data['image_size']}, but generator.kind dcgan "
                        f"builds {DCGAN_IMAGE_SIZE}x{DCGAN_IMAGE_SIZE} images (and its critic "
                        f"takes no other size); allowed is {DCGAN_IMAGE_SIZE}, or another "
                        f"generator.kind")
    if kind == "biggan-deep-256" and data["num_classes"] > BIGGAN_CLASSES:
        problems.append(f"data.num_classes: {data['num_classes']}, but generator.kind "
                        f"biggan-deep-256 has {BIGGAN_CLASSES} classes to condition on")
    if model["arch"] == "resnet18-imagenet" and model["width"] != RESNET18_IMAGENET_WIDTH:
        problems.append(f"model.width: {model['width']}, but model.arch resnet18-imagenet is "
                        f"torchvision's resnet18, whose width is {RESNET18_IMAGENET_WIDTH}; "
                        f"set {RESNET18_IMAGENET_WIDTH}, or use resnet18-cifar")
    readers = ["generator.kind dcgan is trained on it"] if kind == "dcgan" else []
    readers += [f"attacks.{name} (label-only) averages its images"
                for name, cfg in raw["attacks"].items() if cfg["method"] == "label-only"]
    readers += [f"clients.{name}.batch_size {c['batch_size']} infers labels with it"
                for name, c in raw["clients"].items() if c["batch_size"] > 1]
    if not data["public_size"] and readers:
        more = f" (and {len(readers) - 2} more)" if len(readers) > 2 else ""
        problems.append(f"data.public_size: 0, but {'; '.join(readers[:2])}{more}; set "
                        f"data.public_size > 0")
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
    if (method not in (*METHODS, "noise-gradient")
            and not re.search(PLUGIN_PATTERN, str(method))):
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


def _attacks(raw: dict[str, Any], source: str) -> dict[str, AttackConfig]:
    try:
        return attack_configs(raw)
    except ParamsError as exc:  # the settings dataclasses' one problem, named like the rest
        raise ParamsError(f"{source} is invalid: {exc}") from None


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
            attacks=_attacks(raw["attacks"], source),
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


def plugin_names(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(params key, 'package.module:callable') of every plugin valid params name."""
    named = [("data.dataset", raw["data"]["dataset"]), ("model.arch", raw["model"]["arch"]),
             ("generator.kind", raw["generator"]["kind"])]
    named += [(f"defences.{name}[{i}].kind", step["kind"])
              for name, steps in raw["defences"].items() for i, step in enumerate(steps)]
    named += [(f"attacks.{name}.method", cfg["method"]) for name, cfg in raw["attacks"].items()]
    return [(key, spec) for key, spec in named if re.search(PLUGIN_PATTERN, str(spec))]


def check_plugins(raw: dict[str, Any], source: str = "params") -> None:
    """Import every plugin params name; a ParamsError names the key of each that fails."""
    problems = []
    for key, spec in plugin_names(raw):
        try:
            import_callable(spec)
        except GglError as exc:
            problems.append(f"{key}: " + " ".join(str(exc).split()))
    _refuse(source, problems)


def _duplicate_keys(node: yaml.Node) -> list[str]:
    """Each key given twice in one mapping (PyYAML would silently keep the last), with its
    dotted key path and lines."""
    found: list[tuple[int, str]] = []
    seen: set[int] = set()  # aliases share nodes: each is walked once
    stack: list[tuple[tuple[Any, ...], yaml.Node]] = [((), node)]
    while stack:
        path, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children: list[tuple[tuple[Any, ...], yaml.Node]] = []
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # <<: defaults, overridable
                    children.append((path, value_node))
                    continue
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode):
                    if (key_node.tag, name) in first:
                        found.append((line, f"line {line}: {_key_path((*path, name))} is given "
                                            f"twice (first at line {first[key_node.tag, name]}); "
                                            "YAML would keep the last silently: remove one"))
                    first.setdefault((key_node.tag, name), line)
                children.append(((*path, name), value_node))
        elif isinstance(node, yaml.SequenceNode):
            children = [((*path, i), item) for i, item in enumerate(node.value)]
        stack.extend(reversed(children))
    return [message for _, message in sorted(found)]


def parse_params(text: str, source: str = "params") -> Any:
    """The YAML of a params file; a key given twice, or anything YAML refuses, is a ParamsError
    naming the line."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse(source, _duplicate_keys(node))
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        where = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
        context = f" ({exc.context})" if exc.context else ""
        raise ParamsError(f"{source}{where}: not valid YAML: {exc.problem}{context}") from exc
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an int of over 4300 digits
        raise ParamsError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError as exc:
        raise ParamsError(f"{source}: not valid params: nested too deeply") from exc
    finally:
        loader.dispose()


def load_params(path: str | Path) -> Params:
    """Params of a file, refused before any compute (ParamsError, one line per problem) when
    the file is over MAX_PARAMS_BYTES, not YAML, gives a key twice, breaks the schema or a
    cross-key rule, or names a plugin that cannot be imported."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path}: {size:,} bytes is over the {MAX_PARAMS_BYTES:,}-byte (1 MB) "
                          "limit for a params file; refused before parsing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    params = Params.from_raw(parse_params(text, str(path)), source=str(path))
    check_plugins(params.raw, str(path))
    return params
