"""Every pipeline stage, described once: the files it reads and writes, by name, its params
keys, threads, resources, log and code.

A stage kind names the files it writes, each a path pattern, and the files it reads by their
names (``FILES`` gathers them all); a placeholder its instance does not bind (``{image}``, or
``{defence}`` for the metrics stage, which reads every defence) ranges over every value params
give it. The Snakemake rules (one loop in the Snakefile), ``dvc.yaml`` (``ggl dvc-yaml``) and
the ``ggl`` subcommands are generated from ``STAGE_KINDS``, and a stage's code
(``ggl.stages.<kind>``) gets its paths from its ``Stage``, which hands out exactly what was
declared. The code a stage depends on is everything its module may import
(``ggl.pipeline.imports``).

Adding a stage = one ``StageKind`` here and a module in ``ggl.stages``.
"""

from __future__ import annotations

import itertools
import re
import shlex
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggl.config import Params
from ggl.pipeline.imports import closure
from ggl.settings import GGL_OPTIMISERS, uses_generator

Keys = dict[str, str]


# --- which tables and figures params ask for ------------------------------------------------

def has_table2(params: Params) -> bool:
    """Table 2 (and the convergence plot): GGL attacks, by method, without a defence."""
    return "none" in params.defences and any(
        cfg.method in GGL_OPTIMISERS for cfg in params.attacks.values())


METRIC_PLOTS = ("psnr_db_pm1", "lpips", "ssim")  # one bar chart each

VALUES: dict[str, Callable[[Params], list[str]]] = {
    "experiment": lambda p: [p.experiment],
    "defence": lambda p: list(p.defences),
    "attack": lambda p: list(p.attacks),
    "image": lambda p: p.image_ids(),
    "sweep": lambda p: list(p.sweeps()),
    "metric": lambda p: list(METRIC_PLOTS),
}


# --- the files ------------------------------------------------------------------------------

@dataclass(frozen=True)
class File:
    pattern: str
    when: Callable[[Params], bool] | None = None  # only for some params (besides its stage's)
    report: tuple[str, str] | None = None  # (caption in workflow/report/, category)

    def placeholders(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.pattern) if f]


def _dcgan(params: Params) -> bool:
    return params.generator.kind == "dcgan"


def _biggan(params: Params) -> bool:
    return params.generator.kind == "biggan-deep-256"


def _utility(params: Params) -> bool:
    return params.utility.rounds > 0


def _trained(params: Params) -> bool:
    return params.trained_checkpoint()


def _threat_models(params: Params) -> bool:
    return len(params.clients) > 1


def _unused_by_attack(params: Params, keys: Keys) -> frozenset[str]:
    """A pixel baseline or the label-only control never reads the generator."""
    if "attack" in keys and keys["attack"] in params.attacks and not uses_generator(
            keys["attack"], params.attacks):
        return frozenset({"generator", "biggan_weights"})  # input files and params key
    return frozenset()


OUT = "results/{experiment}"
GAN = "results/{experiment}/generator"
RUN = "results/{experiment}/attacks/{defence}/{attack}/{image}"
UTILITY = "results/{experiment}/utility/{defence}"
SAMPLES = ("generator_samples.rst", "Generator")
TABLE_CSV = ("table_csv.rst", "CSV downloads")
PRIVACY_UTILITY = ("privacy_utility.rst", "Privacy and utility")
THREAT_MODELS = ("threat_models.rst", "Threat models")


def available(name: str, params: Params) -> bool:
    """Whether params have file ``name``: its stage runs, and the file's own condition holds
    (e.g. Table 2 only with GGL attacks and no defence)."""
    file = FILES[name]
    return WRITERS[name].when(params) and (file.when is None or file.when(params))


def expand(name: str, params: Params, bound: Keys) -> list[str]:
    """Every path of file ``name``: placeholders in ``bound`` fixed, the others ranging over
    their values in params; [] when params do not have this file."""
    if not available(name, params):
        return []
    file = FILES[name]
    free = [p for p in dict.fromkeys(file.placeholders()) if p not in bound]
    return [file.pattern.format(**bound, **dict(zip(free, combo, strict=True)))
            for combo in itertools.product(*(VALUES[p](params) for p in free))]


# --- the stages -----------------------------------------------------------------------------

def _always(params: Params) -> bool:
    return True


@dataclass(frozen=True)
class StageKind:
    """A family of stages, one instance per value of its wildcards in params."""

    name: str  # the ggl subcommand; its code is the module ggl.stages.<name with '_'>
    summary: str
    inputs: tuple[str, ...]  # names of other stages' outputs
    outputs: dict[str, File]  # name -> the file; FILES gathers every stage's
    params: tuple[str, ...]  # dotted params keys read, e.g. "defences.{defence}"
    wildcards: tuple[str, ...] = ()
    when: Callable[[Params], bool] = _always
    scratch: dict[str, File] = field(default_factory=dict)  # kept between attempts (resume)
    threads: int = 1  # the most torch threads its jobs use locally (job_threads); SLURM: profile
    priority: int = 0  # Snakemake runs higher first among ready jobs
    resources: dict[str, int] = field(default_factory=dict)  # sized for the paper experiments
    persist: bool = False  # DVC does not delete its outputs before rerunning it
    # the inputs and params keys an instance does not use (Snakemake then neither waits for
    # nor reruns on them; DVC's matrix shares one list per kind)
    unused: Callable[[Params, Keys], frozenset[str]] = lambda params, keys: frozenset()

    def job_threads(self, params: Params) -> int:
        """Torch CPU threads of this kind's jobs: its own limit, capped by params' ``threads``
        (0: no cap). Snakemake, DVC and ``ggl`` by hand all use it, so a stage's numbers do not
        depend on the runner (Snakemake lowers it further when ``--cores`` is smaller)."""
        return self.threads if params.threads == 0 else min(self.threads, params.threads)

    @property
    def rule(self) -> str:
        return self.name.replace("-", "_")

    @property
    def module(self) -> str:
        return f"ggl.stages.{self.rule}"

    def instances(self, params: Params) -> list[Stage]:
        if not self.when(params):
            return []
        values = [VALUES[w](params) for w in self.wildcards]
        return [Stage(self, params, dict(zip(self.wildcards, combo, strict=True)))
                for combo in itertools.product(*values)]

    def stage_name(self, keys: Keys) -> str:
        """DVC's name for one instance: ``attack@none-ggl-adam``; logs and messages use it too."""
        return self.name + ("@" + "-".join(keys.values()) if keys else "")

    def _job_file(self, folder: str, suffix: str) -> str:
        placeholders = {w: f"{{{w}}}" for w in self.wildcards}
        return f"{folder}/{self.stage_name(placeholders)}{suffix}"

    def log(self, experiment: str) -> str:
        return self._job_file(f"logs/{experiment}", ".log")

    def benchmark(self, experiment: str) -> str:
        """Snakemake's record of each job's wall seconds and memory (``benchmark:``);
        ``benchmarks/stage_seconds.py`` sums them. The stage's code never writes it."""
        return self._job_file(f"logs/{experiment}/benchmarks", ".tsv")


class UndeclaredFile(KeyError):
    """A stage asked for a path its description does not declare."""


@dataclass(frozen=True)
class Stage:
    """One stage instance for one params: its files, command and params values. Its code gets
    it as the layout of its paths, handed out by name: asking for a file the stage does not
    declare, or for a value params do not have, is an error, so the code can only write what
    Snakemake and DVC expect."""

    kind: StageKind
    params: Params
    keys: Keys = field(default_factory=dict)  # its wildcards' values

    @property
    def name(self) -> str:
        return self.kind.stage_name(self.keys)

    def _bound(self) -> Keys:
        return {"experiment": self.params.experiment, **self.keys}

    def inputs(self) -> dict[str, list[str]]:
        unused = self.kind.unused(self.params, self.keys)
        return {n: expand(n, self.params, self._bound()) for n in self.kind.inputs
                if n not in unused}

    def reads(self, name: str) -> bool:
        """Whether this instance reads input ``name``: params have it and the instance uses it."""
        return bool(self.inputs().get(name))

    def outputs(self) -> dict[str, list[str]]:
        return {n: expand(n, self.params, self._bound()) for n in self.kind.outputs}

    def code(self) -> list[str]:
        return closure(self.kind.module)

    def deps(self) -> list[str]:
        return [*(p for paths in self.inputs().values() for p in paths), *self.code()]

    def outs(self) -> list[str]:
        return [p for paths in self.outputs().values() for p in paths]

    def log(self) -> str:
        return self.kind.log(self.params.experiment).format(**self.keys)

    def benchmark(self) -> str:
        return self.kind.benchmark(self.params.experiment).format(**self.keys)

    def param_keys(self) -> list[str]:
        unused = self.kind.unused(self.params, self.keys)
        return [key.format(**self.keys) for key in self.kind.params if key not in unused]

    def param_values(self) -> dict[str, Any]:
        return {key: lookup(self.params.raw, key) for key in self.param_keys()}

    def command(self, params_file: str) -> str:
        """The shell command, every word quoted: a params path is data, never shell."""
        options = [word for w, v in self.keys.items() for word in (f"--{w}", v)]
        return shlex.join(["ggl", self.kind.name, "--params", params_file, *options])

    def input(self, name: str, **keys: str) -> Path:
        if name in self.kind.unused(self.params, self.keys):
            raise UndeclaredFile(f"stage {self.name} does not use {name!r}")
        return self._path(name, self.kind.inputs, keys)

    def output(self, name: str, **keys: str) -> Path:
        return self._path(name, tuple(self.kind.outputs), keys)

    def scratch(self, name: str) -> Path:
        return self._path(name, tuple(self.kind.scratch), {})

    def has(self, name: str) -> bool:
        return available(name, self.params)

    def _path(self, name: str, declared: tuple[str, ...], keys: Keys) -> Path:
        if name not in declared:
            raise UndeclaredFile(f"stage {self.name} does not declare {name!r} here; it "
                                 f"declares {', '.join(declared) or 'nothing'}")
        if not self.has(name):
            raise UndeclaredFile(f"stage {self.name}: params have no {name!r}")
        free = {p for p in FILES[name].placeholders() if p not in self._bound()}
        if set(keys) != free:
            raise UndeclaredFile(f"stage {self.name}: {name!r} takes {sorted(free)}, got "
                                 f"{sorted(keys)}")
        for key, value in keys.items():
            if value not in VALUES[key](self.params):
                raise UndeclaredFile(f"stage {self.name}: {key} {value!r} is not in params")
        return Path(FILES[name].pattern.format(**self._bound(), **keys))


def lookup(raw: dict[str, Any], dotted: str) -> Any:
    value: Any = raw
    for part in dotted.split("."):
        value = value[part]
    return value


RESOURCES_GPU = {"gpu": 1}

STAGE_KINDS: list[StageKind] = [
    StageKind(
        name="split",
        summary="load the dataset and write the seeded public/private split",
        inputs=(),
        outputs={"public": File("data/{experiment}/public.pt"),
                 "private": File("data/{experiment}/private.pt"),
                 "test": File("data/{experiment}/test.pt"),  # held out: the utility stage's
                 "index": File("data/{experiment}/index.json")},
        params=("experiment", "data"),
        # decodes 182k CelebA JPEGs, or unpacks ImageNet val (6.4 GB)
        resources={"runtime": 120, "mem_mb": 16000},
    ),
    StageKind(
        name="gradients",
        summary="each client's defended update (params' clients: B images, E local steps, "
                "the model's checkpoint) under one defence",
        wildcards=("defence",),
        inputs=("private", "attacked_model"),
        # what the server receives, and the client's truth (for the metrics stage only)
        outputs={"received": File("results/{experiment}/gradients/{defence}/{image}.pt"),
                 "truth": File("results/{experiment}/truth/{defence}/{image}.json")},
        params=("experiment", "seed", "private_images", "clients", "data.image_size",
                "data.num_classes", "model", "defences.{defence}"),
        # per image one backward pass; Soteria: 512 feature Jacobians
        resources={"runtime": 120, "mem_mb": 8000},
    ),
    StageKind(
        name="utility",
        summary="federated averaging of the model on the private split under one defence: "
                "test accuracy per round, and epsilon under dp-sgd",
        wildcards=("defence",),
        when=_utility,
        inputs=("private", "test"),
        outputs={"utility_rounds": File(f"{UTILITY}/rounds.csv"),
                 "utility_summary": File(f"{UTILITY}/summary.json"),
                 "utility_model": File(f"{UTILITY}/model.pt"),
                 # the same weights, which clients at checkpoint trained are attacked on
                 "attacked_model": File(f"{UTILITY}/attacked_model.pt", _trained)},
        scratch={"utility_resume": File(f"{UTILITY}/resume.pt")},
        params=("experiment", "data.num_classes", "model", "defences.{defence}", "utility"),
        # K clients' local steps for R rounds; Soteria scores every image of a round
        priority=1,  # long jobs (Soteria's minutes) first: none left alone at the end
        resources={**RESOURCES_GPU, "runtime": 240, "mem_mb": 16000},
    ),
    StageKind(
        name="train-gan",
        summary="WGAN-GP training of the generator on the public split",
        when=_dcgan,
        inputs=("public",),  # the public split only
        outputs={"generator": File(f"{GAN}/generator.pt"),
                 "gan_losses": File(f"{GAN}/losses.csv"),
                 "gan_samples": File(f"{GAN}/samples.png", report=SAMPLES),
                 "gan_losses_plot": File(f"{GAN}/losses.png", report=SAMPLES)},
        scratch={"gan_resume": File(f"{GAN}/resume.pt")},
        # threads: the weights depend on the thread count (float sums split across threads)
        params=("experiment", "generator", "data.num_classes", "threads"),
        threads=8,  # at most; params' threads caps it (job_threads)
        # First: every attack waits for it, and on few cores a job that needs them all would
        # otherwise start only once no 1-thread job is left (measured: 15 minutes late).
        # Snakemake weighs the summed priority of the jobs it starts: 10 outweighs the <= 8
        # one-thread jobs of priority <= 1 that it displaces.
        priority=10,
        # WGAN-GP, 100 epochs of 162,770 images, 5 critic steps; resumes after a kill
        resources={**RESOURCES_GPU, "runtime": 720, "mem_mb": 32000},
    ),
    StageKind(
        name="gan-quality",
        summary="how recognisable the generator's samples are (a classifier's confidence)",
        when=_dcgan,
        inputs=("generator", "public", "private"),
        outputs={"quality": File(f"{GAN}/quality.json",
                                 report=("generator_quality.rst", "Generator"))},
        priority=1,  # beside the attacks, not alone after them
        params=("experiment", "generator", "seed", "data.image_size", "data.num_classes"),
        # a small CPU classifier, 15 epochs of the public split
        resources={"runtime": 240, "mem_mb": 32000},
    ),
    StageKind(
        name="fetch-biggan",
        summary="download BigGAN-deep-256, verify it, and record its SHA-256",
        when=_biggan,
        inputs=(),
        # shared by experiments: the published weights never change
        outputs={"biggan_weights": File("data/biggan/biggan-deep-256-pytorch_model.bin"),
                 "biggan_config": File("data/biggan/biggan-deep-256-config.json"),
                 "biggan_lock": File("data/biggan/biggan-deep-256.lock.json")},
        params=("generator.kind", "generator.sha256"),
        # DVC keeps them when the stage reruns: the present weights then verify against the
        # lock instead of a new download being trusted again
        persist=True,
        # downloads 0.25 GB: needs the internet (README: fetch on the login node)
        resources={"runtime": 60, "mem_mb": 4000},
    ),
    StageKind(
        name="attack",
        summary="invert every received gradient of one defence with one attack",
        wildcards=("defence", "attack"),
        # the received gradients (never the client's truth), the generator and the public
        # split (the label-only control's)
        inputs=("received", "generator", "biggan_weights", "public", "attacked_model"),
        outputs={"reconstruction": File(f"{RUN}/reconstruction.pt"),
                 "reconstruction_png": File(f"{RUN}/reconstruction.png"),
                 "latent": File(f"{RUN}/latent.pt"),
                 "curve": File(f"{RUN}/curve.csv"),
                 "checkpoints": File(f"{RUN}/checkpoints.pt"),
                 "result": File(f"{RUN}/result.json")},
        params=("experiment", "seed", "scorer", "compute_budget", "clients",
                "data.image_size", "data.num_classes", "generator", "attacks.{attack}"),
        unused=_unused_by_attack,
        # all images of one (defence, attack); IG/GI at 224x224: 4 x 24,000 double-backward
        # steps an image
        resources={**RESOURCES_GPU, "runtime": 1440, "mem_mb": 32000},
    ),
    StageKind(
        name="metrics",
        summary="join each reconstruction with its private image: MSE-I, PSNR, SSIM, LPIPS, "
                "MSE-R",
        inputs=("reconstruction", "result", "checkpoints", "truth", "private", "attacked_model"),
        outputs={"metrics": File(f"{OUT}/metrics.csv"),
                 "metrics_conventions": File(f"{OUT}/metrics_conventions.json"),
                 # the attacks' wall-clock seconds: measured, so never the same twice
                 "timings": File(f"{OUT}/timings.csv"),
                 # each run's best-so-far image at its checkpoints against the truth
                 "quality_curves": File(f"{OUT}/quality_vs_compute.csv")},
        params=("experiment", "model", "data.num_classes", "metrics", "private_images",
                "clients", "threads"),  # LPIPS: conv floats may round per thread count
        threads=2,  # LPIPS' convolutions; the last job of the run, nothing else is left
        # LPIPS (VGG16) of every reconstruction, on the CPU
        resources={"runtime": 120, "mem_mb": 16000},
    ),
    StageKind(
        name="aggregate",
        summary="the paper's tables and figures from metrics.csv",
        inputs=("metrics", "quality_curves", "private", "reconstruction", "result", "curve",
                "quality", "utility_summary"),
        outputs={"overview_html": File(f"{OUT}/tables/overview.html",
                                       report=("overview.rst", "Overview")),
                 "leakage_csv": File(f"{OUT}/tables/leakage.csv", report=TABLE_CSV),
                 "privacy_utility_csv": File(f"{OUT}/tables/privacy_utility.csv", _utility,
                                             TABLE_CSV),
                 "privacy_utility_md": File(f"{OUT}/tables/privacy_utility.md", _utility),
                 "privacy_utility_html": File(f"{OUT}/tables/privacy_utility.html", _utility,
                                              PRIVACY_UTILITY),
                 "privacy_utility_png": File(f"{OUT}/figures/privacy_utility.png", _utility,
                                             PRIVACY_UTILITY),
                 "threat_models_csv": File(f"{OUT}/tables/threat_models.csv", _threat_models,
                                           TABLE_CSV),
                 "threat_models_md": File(f"{OUT}/tables/threat_models.md", _threat_models),
                 "threat_models_png": File(f"{OUT}/figures/threat_models.png", _threat_models,
                                           THREAT_MODELS),
                 "leakage_md": File(f"{OUT}/tables/leakage.md"),
                 "leakage_html": File(f"{OUT}/tables/leakage.html",
                                      report=("leakage.rst", "Tables")),
                 "summary_csv": File(f"{OUT}/tables/summary.csv", report=TABLE_CSV),
                 "summary_html": File(f"{OUT}/tables/summary.html",
                                      report=("summary.rst", "Tables")),
                 "table3_csv": File(f"{OUT}/tables/table3.csv", report=TABLE_CSV),
                 "table3_md": File(f"{OUT}/tables/table3.md"),
                 "table3_html": File(f"{OUT}/tables/table3.html",
                                     report=("table3.rst", "Tables")),
                 "table2_csv": File(f"{OUT}/tables/table2.csv", has_table2, TABLE_CSV),
                 "table2_md": File(f"{OUT}/tables/table2.md", has_table2),
                 "table2_html": File(f"{OUT}/tables/table2.html", has_table2,
                                     ("table2.rst", "Tables")),
                 "grid": File(f"{OUT}/figures/reconstructions_{{image}}.png",
                              report=("reconstructions.rst", "Reconstructions")),
                 "metric_plot": File(f"{OUT}/figures/{{metric}}.png",
                                     report=("metric.rst", "Metrics")),
                 "sweep_plot": File(f"{OUT}/figures/sweep_{{sweep}}.png",
                                    report=("sweep.rst", "Defence strength")),
                 "quality_vs_compute": File(f"{OUT}/figures/quality_vs_compute.png",
                                            report=("quality_vs_compute.rst", "Compute")),
                 "convergence": File(f"{OUT}/figures/convergence.png", has_table2,
                                     ("convergence.rst", "Convergence")),
                 "convergence_csv": File(f"{OUT}/tables/convergence.csv", has_table2),
                 # a few headline figures per experiment: `dvc exp show`, `dvc metrics diff`
                 "headline": File(f"{OUT}/headline.json")},
        params=("experiment", "seed", "defences", "attacks", "private_images", "clients"),
        resources={"runtime": 30, "mem_mb": 8000},
    ),
]

# Every file the pipeline writes, by name: each belongs to the one stage kind that writes it.
FILES: dict[str, File] = {n: f for k in STAGE_KINDS for n, f in {**k.outputs, **k.scratch}.items()}
WRITERS: dict[str, StageKind] = {n: k for k in STAGE_KINDS for n in {**k.outputs, **k.scratch}}


def kind(name: str) -> StageKind:
    for k in STAGE_KINDS:
        if k.name == name:
            return k
    raise KeyError(f"no stage kind {name!r}; known: {[k.name for k in STAGE_KINDS]}")


def all_stages(params: Params) -> list[Stage]:
    return [stage for k in STAGE_KINDS for stage in k.instances(params)]


# --- what Snakemake needs of a stage kind ----------------------------------------------------

def rule_outputs(k: StageKind, params: Params, report: Callable[..., Any]) -> dict[str, list]:
    """Named output patterns, Snakemake wildcards left in; report() marks what the report
    shows, with its caption."""
    wildcards = {w: f"{{{w}}}" for w in k.wildcards}
    out = {}
    for name in k.outputs:
        paths = expand(name, params, {"experiment": params.experiment, **wildcards})
        caption = FILES[name].report
        out[name] = [report(p, caption=f"workflow/report/{caption[0]}", category=caption[1])
                     for p in paths] if caption else paths
    return out


def rule_inputs(k: StageKind, params: Params, wildcards: Keys) -> dict[str, list[str]]:
    """The files a job waits for. Its code is not among them: Snakemake compares its digest,
    a rule param (``code_digest``), so file times of a fresh clone trigger nothing."""
    return Stage(k, params, wildcards).inputs()


def constraints(k: StageKind, params: Params) -> Keys:
    return {w: "|".join(map(re.escape, VALUES[w](params))) for w in k.wildcards}


# --- dvc.yaml -----------------------------------------------------------------------------

# The params list each wildcard ranges over: DVC's `matrix` fans a stage kind out over it, so
# `dvc exp run -S` with a new defence or attack creates and runs its stages.
MATRIX = {"defence": "defences", "attack": "attacks"}


def dvc_path(file: File, bound: Keys) -> str:
    """The path DVC tracks for ``file``: the file itself, or the folder above its first
    placeholder not in ``bound`` when the file ranges over params values or exists for some
    params only (DVC cannot list such files from params)."""
    parts = file.pattern.split("/")
    cut = next((i for i, part in enumerate(parts)
                if set(File(part).placeholders()) - set(bound)), None)
    if cut is None and file.when is not None:
        cut = len(parts) - 1
    return "/".join(parts[:cut]).format(**bound)


def _outermost(paths: list[str]) -> list[str]:
    """``paths`` without repeats and without those inside another (DVC forbids overlaps)."""
    unique = list(dict.fromkeys(paths))
    return [p for p in unique if not any(p.startswith(q + "/") for q in unique)]


def dvc_stage(k: StageKind, params: Params, params_file: str) -> dict[str, Any]:
    """One dvc.yaml stage for kind ``k``, fanned out with ``matrix`` over its wildcards. With
    params.yaml the lists and names are DVC template expressions read from it; another params
    file cannot be a template source beside params.yaml (DVC refuses to redefine its keys), so
    its names are written out and dvc.yaml must be regenerated after adding one."""
    template = params_file == "params.yaml"
    bound = {"experiment": "${experiment}" if template else params.experiment,
             **{w: f"${{item.{w}}}" for w in k.wildcards}}
    stage = Stage(k, params, {w: bound[w] for w in k.wildcards})  # wildcards as templates
    entry: dict[str, Any] = {}
    if k.wildcards:
        entry["matrix"] = {w: f"${{{MATRIX[w]}}}" if template else VALUES[w](params)
                           for w in k.wildcards}
    entry["cmd"] = stage.command(params_file)
    inputs = [dvc_path(FILES[n], bound) for n in k.inputs if WRITERS[n].when(params)]
    entry["deps"] = _outermost(inputs) + stage.code()
    keys = stage.param_keys()
    entry["params"] = keys if template else [{params_file: keys}]
    outs = _outermost([dvc_path(f, bound) for n, f in k.outputs.items() if n != "headline"])
    entry["outs"] = [{o: {"persist": True}} for o in outs] if k.persist else outs
    if "headline" in k.outputs:  # kept in git, so that DVC experiments record it
        entry["metrics"] = [{dvc_path(FILES["headline"], bound): {"cache": False}}]
    return entry


# `dvc plots show`: id -> (file, x, y, template in workflow/plots/, title); and the figures.
DVC_PLOTS = {
    "psnr_per_image": ("metrics", "attack", "psnr_db_pm1", "points",
                       "PSNR (dB, [-1, 1]) per image, by defence"),
    "ssim_per_image": ("metrics", "attack", "ssim", "points", "SSIM per image, by defence"),
    "convergence": ("convergence_csv", "evaluations", "best_loss", "curves",
                    "GGL's best objective so far, no defence, one line per image"),
}


def dvc_yaml(params: Params, params_file: str) -> dict[str, Any]:
    """The dvc.yaml document for one params file."""
    bound = {"experiment": "${experiment}" if params_file == "params.yaml"
             else params.experiment}
    plots: list[dict[str, Any]] = [
        {plot: {"template": f"workflow/plots/{template}.json", "x": x,
                "y": {FILES[name].pattern.format(**bound): y}, "title": title}}
        for plot, (name, x, y, template, title) in DVC_PLOTS.items()]
    plots.append({dvc_path(FILES["metric_plot"], bound): {}})  # the PNG figures
    return {"stages": {k.name: dvc_stage(k, params, params_file)
                       for k in STAGE_KINDS if k.when(params)}, "plots": plots}


DVC_HEADER = ("# Generated by `ggl dvc-yaml --params {params_file}` from the stage registry in\n"
              "# src/ggl/pipeline/registry.py. Do not edit: regenerate it after changing the\n"
              "# stage list, the code's imports or generator.kind (`ggl dvc-yaml --check` fails\n"
              "# when it is stale). Stages fan out over the defences and attacks of params.yaml\n"
              "# (another params file's are listed: regenerate after adding one).\n")


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
        return (f"{path} is stale (the stage registry, {params_file} or the code's imports "
                f"changed); run `ggl dvc-yaml --params {params_file} --output {path}`")
    return None
