"""Params: load a params file, validate it against the one schema, expose typed dataclasses.

Validation happens before any compute starts and every message names the offending key and
what is allowed, e.g. ``defences.noise[0].sigma: -1 is less than the minimum of 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

KNOWN_DATASET_SIZES = {"digits": 1797}


class ParamsError(ValueError):
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
    if error.validator == "anyOf":
        return f"{key}: {error.instance!r} is not allowed; allowed are {_allowed(error.schema)}"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
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
    if not messages:
        messages = _cross_checks(raw)
    if messages:
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(messages))


def _cross_checks(raw: dict[str, Any]) -> list[str]:
    data = raw["data"]
    problems = []
    if max(raw["private_images"]) >= data["private_size"]:
        problems.append(f"private_images: index {max(raw['private_images'])} is out of range; "
                        f"allowed are 0 .. data.private_size - 1 = {data['private_size'] - 1}")
    available = KNOWN_DATASET_SIZES.get(data["dataset"])
    if available is not None and data["public_size"] + data["private_size"] > available:
        problems.append(f"data.public_size + data.private_size = "
                        f"{data['public_size'] + data['private_size']} exceeds the "
                        f"{available} images of dataset {data['dataset']!r}")
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
    split_seed: int


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    width: int
    seed: int
    num_classes: int


@dataclass(frozen=True)
class DefenceStep:
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> DefenceStep:
        settings = {k: v for k, v in raw.items() if k != "kind"}
        return cls(kind=raw["kind"], settings=settings)


@dataclass(frozen=True)
class GeneratorConfig:
    kind: str
    latent_dim: int
    width: int
    conditional: bool
    train: dict[str, Any]


def settings(cls: type, raw: dict[str, Any], key: str) -> Any:
    """Build a settings dataclass, naming ``key`` and the allowed fields on a bad entry."""
    allowed = {f.name: f for f in fields(cls)}
    for name, value in raw.items():
        if name not in allowed:
            raise ParamsError(f"{key}.{name}: unknown setting; allowed are "
                              f"{', '.join(allowed)}")
        expected = type(getattr(cls(), name)) if _has_defaults(cls) else None
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if expected is not None and not isinstance(value, expected):
            raise ParamsError(f"{key}.{name}: expected {expected.__name__}, got {value!r}")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{key}: {exc}") from exc


def _has_defaults(cls: type) -> bool:
    try:
        cls()
    except TypeError:
        return False
    return True


def _attack_config(name: str, raw: dict[str, Any]) -> Any:
    from ggl.attack.run import attack_config

    return attack_config(raw, f"attacks.{name}")


@dataclass(frozen=True)
class Params:
    experiment: str
    device: str
    seed: int
    threads: int
    scorer: str  # how the objective scores a batch of candidates: auto | batched | loop
    data: DataConfig
    private_images: tuple[int, ...]
    model: ModelConfig
    defences: dict[str, tuple[DefenceStep, ...]]
    generator: GeneratorConfig
    attacks: dict[str, Any]  # name -> ggl.attack.run.AttackConfig
    lpips_stand_in: bool
    raw: dict[str, Any]

    @classmethod
    def from_raw(cls, raw: dict[str, Any], source: str = "params") -> Params:
        validate(raw, source)
        data = DataConfig(**raw["data"])
        return cls(
            experiment=raw["experiment"],
            device=raw["device"],
            seed=raw["seed"],
            threads=raw["threads"],
            scorer=raw["scorer"],
            data=data,
            private_images=tuple(raw["private_images"]),
            model=ModelConfig(**raw["model"], num_classes=data.num_classes),
            defences={name: tuple(DefenceStep.from_raw(s) for s in steps)
                      for name, steps in raw["defences"].items()},
            generator=GeneratorConfig(**raw["generator"]),
            attacks={name: _attack_config(name, cfg) for name, cfg in raw["attacks"].items()},
            lpips_stand_in=raw["metrics"]["lpips_stand_in"],
            raw=raw,
        )

    def image_ids(self) -> list[str]:
        return [image_id(i) for i in self.private_images]


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
