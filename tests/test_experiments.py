"""The paper's experiments (workflow/experiments/*.yaml): their settings, the jobs they plan
through the SLURM profile, the DVC route for an experiment file, and (opt-in, needs root and
apt: ``GGL_SLURM_TEST=1``) a one-node SLURM cluster with a fake GPU running the tiny pipeline."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_tracks, tiny_params

from ggl.config import Params, load_params
from ggl.paper import AUTHORS_OBJECTIVES
from ggl.pipeline.registry import STAGE_KINDS, all_stages, dvc_yaml
from ggl.settings import CONTROLS

EXPERIMENTS = REPO / "workflow" / "experiments"
EXPERIMENT_FILES = sorted(EXPERIMENTS.glob("*.yaml"))
PAPER_EXPERIMENTS = ("celeba32", "imagenet224")
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm" / "profile.yaml"
GPU_RULES = {k.rule for k in STAGE_KINDS if k.resources.get("gpu")}  # train_gan, attack, utility
SLURM_ENV = ("GGL_SLURM_PARTITION", "GGL_SLURM_GPU_PARTITION", "GGL_SLURM_ACCOUNT")


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def copy_workflow(root: Path, dvc: bool = False) -> Path:
    """The workflow and the code in a fresh folder: runs never touch the repository's files."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", root)
    shutil.copytree(REPO / "workflow", root / "workflow", symlinks=True)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", root)
    if dvc:
        shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    return root


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the profile's placeholders, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SLURM_ENV}
    return {**env, **extra}


# --- the experiment files ------------------------------------------------------------------

@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=[p.stem for p in EXPERIMENT_FILES])
def test_experiment_file_is_valid_and_named_after_its_file(path):
    params = load_params(path)
    # outputs go to data/<experiment>/ and results/<experiment>/: one name per file, so
    # results of different experiments never overwrite each other
    assert params.experiment == path.stem


def test_experiment_names_are_distinct_from_each_other_and_the_default():
    names = [load_params(p).experiment for p in EXPERIMENT_FILES]
    names.append(load_params(REPO / "params.yaml").experiment)
    assert len(names) == len(set(names)), names
    assert set(PAPER_EXPERIMENTS) <= set(names)


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_paper_experiments_use_the_papers_settings(name):
    params = load_params(EXPERIMENTS / f"{name}.yaml")
    big = params.data.image_size == 224
    assert params.model.width == 64 and not params.lpips_stand_in
    assert params.model.arch == ("resnet18-imagenet" if big else "resnet18-cifar")
    steps = {d: [(s.kind, s.settings) for s in v] for d, v in params.defences.items()}
    assert steps == {
        "none": [],
        "noise": [("noise", {"sigma": 0.1})],
        "clipping": [("clipping", {"bound": 4.0, "per_layer": False})],
        "sparsification": [("sparsification", {"rate": 90.0})],
        "soteria": [("soteria", {"rate": 80.0})],
    }
    budgets = {a: (c.method, c.trials, c.budget) for a, c in params.attacks.items()
               if c.method not in CONTROLS}
    lbfgs, adam = (1200, 24000) if big else (300, 8000)
    assert budgets == {
        "ggl-adam": ("ggl-adam", 1, 2500),
        "ggl-bo": ("ggl-bo", 1, 1000),
        "ggl-cmaes": ("ggl-cmaes", 1, 800 * 50),  # 800 generations of 50
        "dlg": ("dlg", 4, lbfgs), "idlg": ("idlg", 4, lbfgs),
        "ig": ("ig", 4, adam), "gi": ("gi", 4, adam),
    }
    assert params.attacks["ggl-cmaes"].optimiser.popsize == 50
    # the controls: GGL-Adam on a noise gradient, prior samples, the class mean (needs a
    # public split: ImageNet's prior is BigGAN, it has none)
    controls = {c.method: c for c in params.attacks.values() if c.method in CONTROLS}
    assert set(controls) == {"prior", "noise-gradient"} | (set() if big else {"label-only"})
    assert controls["noise-gradient"].of == "ggl-adam" and params.compute_budget == 0
    assert len(params.private_images) >= 50
    # the noise-gradient control repeats GGL-Adam exactly, on noise
    ggl_adam, control = params.attacks["ggl-adam"], controls["noise-gradient"]
    assert (control.objective, control.optimiser, control.budget) == (
        ggl_adam.objective, ggl_adam.optimiser, ggl_adam.budget)
    assert params.attacks["ggl-bo"].optimiser.n_init == 256
    assert len(params.private_images) >= 10


def test_celeba32_trains_the_papers_wgan_gp():
    from ggl.gan import PAPER_RECIPE, gan_config

    params = load_params(EXPERIMENTS / "celeba32.yaml")
    assert params.generator.kind == "dcgan"
    assert asdict(gan_config(params)) == asdict(PAPER_RECIPE)
    assert (params.data.dataset, params.data.num_classes) == ("celeba", 2)


def test_imagenet224_uses_biggan_and_no_public_split():
    params = load_params(EXPERIMENTS / "imagenet224.yaml")
    assert params.generator.kind == "biggan-deep-256"
    assert (params.data.dataset, params.data.public_size) == ("imagenet", 0)


@pytest.mark.parametrize("name", ["celeba32-table1", "celeba32-soteria-sweep"])
def test_small_experiments_share_celeba32s_data_and_generator(name):
    """Same data, images, model and generator as celeba32: its trained generator can be
    copied in instead of training the WGAN-GP again (README "Reproduce the paper")."""
    base = load_params(EXPERIMENTS / "celeba32.yaml").raw
    raw = load_params(EXPERIMENTS / f"{name}.yaml").raw
    for key in ("seed", "data", "private_images", "model", "generator", "metrics"):
        assert raw[key] == base[key], key


def test_table1_ablation_covers_both_distances_and_regularisers():
    params = load_params(EXPERIMENTS / "celeba32-table1.yaml")
    assert list(params.defences) == ["none"]
    attacks = [c for c in params.attacks.values() if c.method not in CONTROLS]
    combos = {(c.objective.distance, c.objective.regulariser) for c in attacks}
    assert combos == {("l2-sum", "kl"), ("cosine", "kl"), ("l2-sum", "norm"),
                      ("cosine", "norm")}
    assert {(c.method, c.budget) for c in attacks} == {("ggl-adam", 2500)}


def test_soteria_sweep_goes_from_0_to_80_percent():
    params = load_params(EXPERIMENTS / "celeba32-soteria-sweep.yaml")
    rates = [steps[0].settings["rate"] for steps in params.defences.values()]
    assert all(len(s) == 1 and s[0].kind == "soteria" for s in params.defences.values())
    assert rates == sorted(rates) and rates[0] == 0 and rates[-1] == 80



# --- where they differ from the paper and the authors' scripts -------------------------------

DEVIATION_COLUMNS = ["key", "this file", "paper's text", "authors' scripts", "follows", "why"]


def deviation_rows(path: Path) -> list[dict[str, str]]:
    """The header table of an experiment file: its ``# | ... |`` comment lines."""
    lines = [line[2:] for line in path.read_text().splitlines() if line.startswith("# |")]
    assert lines, f"{path.name} has no deviation table"
    header, rule, *rows = lines
    assert [c.strip() for c in header.strip("|").split("|")] == DEVIATION_COLUMNS
    assert set(rule) <= set("|-")
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    assert all(len(c) == len(DEVIATION_COLUMNS) for c in cells), path.name
    return [dict(zip(DEVIATION_COLUMNS, c, strict=True)) for c in cells]


def lookup_key(raw: dict, key: str):
    """``attacks.ggl-adam.objective.tanh`` or ``defences.clipping.0.bound`` in raw params."""
    node = raw
    for part in key.split("."):
        if isinstance(node, list):
            assert part.isdigit() and int(part) < len(node), key
            node = node[int(part)]
        else:
            assert isinstance(node, dict) and part in node, f"no key {key}"
            node = node[part]
    return node


PAPER_FILES = [EXPERIMENTS / f"{name}.yaml" for name in AUTHORS_OBJECTIVES]


@pytest.mark.parametrize("path", PAPER_FILES, ids=[p.stem for p in PAPER_FILES])
def test_deviation_table_names_real_keys_and_their_values(path):
    raw = load_params(path).raw
    for row in deviation_rows(path):
        value = lookup_key(raw, row["key"])
        assert row["follows"] in ("authors", "paper", "neither"), row
        assert row["why"], row
        if not isinstance(value, list | dict):
            assert yaml.safe_load(row["this file"]) == value, row
        if row["follows"] == "authors":
            authors = row["authors' scripts"].split(" (")[0].split(":")[0]
            assert yaml.safe_load(authors) == value, row


@pytest.mark.parametrize("path", PAPER_FILES, ids=[p.stem for p in PAPER_FILES])
def test_objectives_are_the_authors_unless_the_table_says_why_not(path):
    """"Reproduce the paper" means the authors' objective, bar the deviations stated."""
    raw = load_params(path).raw
    stated = {row["key"] for row in deviation_rows(path) if row["follows"] != "authors"}
    for attack, settings in AUTHORS_OBJECTIVES[path.stem].items():
        for name, authors in settings.items():
            key = f"attacks.{attack}.objective.{name}"
            if key not in stated:
                assert lookup_key(raw, key) == authors, key


@pytest.mark.parametrize("path", PAPER_FILES, ids=[p.stem for p in PAPER_FILES])
def test_readme_repeats_each_deviation_table(path):
    readme = (REPO / "README.md").read_text()
    section = readme.split(f"#### `{path.name}`", 1)
    assert len(section) == 2, f"README has no deviation table for {path.name}"
    body = section[1].split("####", 1)[0]
    for line in path.read_text().splitlines():
        if line.startswith("# |"):
            assert line[2:] in body, line

# --- the jobs they plan ----------------------------------------------------------------------

def expected_jobs(params: Params) -> Counter:
    """What params imply, counted by hand: one split, one gradient job per defence, the
    generator's jobs, one attack job per (defence, attack), one utility job per defence when
    utility.rounds > 0, metrics, aggregate, and `all`."""
    defences, attacks = len(params.defences), len(params.attacks)
    jobs = Counter(split=1, gradients=defences, attack=defences * attacks, metrics=1,
                   aggregate=1, all=1)
    if params.utility.rounds:
        jobs.update(utility=defences)
    if params.generator.kind == "dcgan":  # trained here, then checked
        jobs.update(train_gan=1, gan_quality=1)
    elif params.generator.kind == "biggan-deep-256":  # downloaded once
        jobs.update(fetch_biggan=1)
    return jobs


def registry_jobs(params: Params) -> Counter:
    """The same from the stage registry (rule names use '_' where stage kinds use '-')."""
    jobs = Counter(stage.kind.name.replace("-", "_") for stage in all_stages(params))
    jobs["all"] += 1
    return jobs


def planned_jobs(stdout: str) -> Counter:
    """The "Job stats" table of a Snakemake dry run."""
    table = stdout.split("Job stats:", 1)[1].splitlines()
    jobs: Counter = Counter()
    for line in table[3:]:  # after the header and its rule
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("experiments"))


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=[p.stem for p in EXPERIMENT_FILES])
def test_slurm_dry_run_plans_the_jobs_params_imply(workflow_copy, path):
    params = load_params(path)
    config = f"workflow/experiments/{path.name}"
    out = run(["snakemake", "-n", "--quiet", "rules", "--profile", "workflow/profiles/slurm",
               "--configfile", config], workflow_copy, env=clean_env())
    jobs = planned_jobs(out.stdout)
    total = int(re.search(r"^total\s+(\d+)$", out.stdout, re.M).group(1))
    assert jobs == expected_jobs(params) == registry_jobs(params), out.stdout
    assert total == sum(jobs.values())
    if path.stem in PAPER_EXPERIMENTS:  # 5 defences x (7 attacks + its controls) attack jobs
        controls = 3 if path.stem == "celeba32" else 2  # ImageNet: no public split, no class mean
        assert jobs["attack"] == 5 * (7 + controls)
        assert total == 5 * (7 + controls) + (11 if path.stem == "celeba32" else 10)



def test_imagenet_plans_fetch_biggan_with_no_hash_asked_of_the_user(workflow_copy):
    config = "workflow/experiments/imagenet224.yaml"
    out = run(["snakemake", "-n", "-p", "--cores", "1", "data/biggan/biggan-deep-256.lock.json",
               "--configfile", config], workflow_copy, env=clean_env())
    assert "rule fetch_biggan:" in out.stdout, out.stdout
    commands = [line.strip() for line in out.stdout.splitlines() if "ggl fetch-biggan" in line]
    assert len(commands) == 1 and "sha256" not in commands[0], commands

def dry_run_resources(stdout: str) -> dict[str, list[str]]:
    """rule -> the resources line of each of its jobs in a (non-quiet) dry run."""
    found: dict[str, list[str]] = {}
    for block in stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        match = re.search(r"^\s+resources: (.*)$", block, re.M)
        found.setdefault(rule, []).append(match.group(1) if match else "")
    return found


def test_slurm_profile_sizes_every_rule_and_asks_gpus_for_gpu_rules(workflow_copy):
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    env = clean_env(GGL_SLURM_PARTITION="cpu-part", GGL_SLURM_GPU_PARTITION="gpu-part",
                    GGL_SLURM_ACCOUNT="proj")
    found: dict[str, list[str]] = {}
    for name in (*PAPER_EXPERIMENTS, "digits-privacy-utility"):  # together: every rule
        out = run(["snakemake", "-n", "--profile", "workflow/profiles/slurm", "--configfile",
                   f"workflow/experiments/{name}.yaml"], workflow_copy, env=env)
        for rule, lines in dry_run_resources(out.stdout).items():
            found.setdefault(rule, []).extend(lines)
    rules = set(found) - {"all"}
    assert rules == set(profile["set-threads"]) == {k.rule for k in STAGE_KINDS}
    assert set(profile["set-resources"]) == GPU_RULES == {"train_gan", "attack", "utility"}
    for rule in rules:
        sizes = next(k.resources for k in STAGE_KINDS if k.rule == rule)  # the registry's
        for line in found[rule]:
            items = dict(item.split("=", 1) for item in line.split(", "))
            assert items["runtime"] == str(sizes["runtime"]), (rule, line)
            assert items["mem_mb"] == str(sizes["mem_mb"]), (rule, line)
            assert items["slurm_account"] == "proj", (rule, line)
            # the environment variables fill the placeholders; GPU rules go to the GPU queue
            gpu = rule in GPU_RULES
            assert items["slurm_partition"] == ("gpu-part" if gpu else "cpu-part"), rule
            assert items.get("gpu") == ("1" if gpu else None), (rule, line)


PROFILE_ARGS = """
import json, sys
from snakemake.cli import parse_args
_, args = parse_args(["-n", "--profile", sys.argv[1]])
gpu = (args.resources or {}).get("gpu")
print(json.dumps([args.executor, args.jobs, None if gpu is None else gpu.value]))
"""


def profile_settings(cwd: Path, profile: str) -> list:
    """(executor, jobs, global gpu limit) as Snakemake reads them from ``profile`` and any
    profile it loads alongside (a fresh process: the parser caches profiles)."""
    import json
    import sys

    out = run([sys.executable, "-c", PROFILE_ARGS, profile], cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_slurm_profile_does_not_queue_gpu_jobs_one_at_a_time(workflow_copy):
    """A global `resources: gpu=1` (the local profile's, from any profile Snakemake loads
    alongside) would let only one GPU job run at a time on the whole cluster."""
    executor, jobs, gpu = profile_settings(workflow_copy, "workflow/profiles/slurm")
    assert executor == "slurm"
    assert gpu is None or gpu >= jobs
    # the local profile for one GPU does limit them, as it should
    assert profile_settings(workflow_copy, "workflow/profiles/local-gpu")[2] == 1


# --- the DVC route for an experiment file ----------------------------------------------------

def dvc_outs(document: dict) -> set[str]:
    """Every path dvc.yaml tracks as an output, its ``matrix`` fan-out written out (a params
    file other than params.yaml lists the names)."""
    found = set()
    for stage in document["stages"].values():
        paths = [o if isinstance(o, str) else next(iter(o))
                 for section in ("outs", "metrics") for o in stage.get(section, [])]
        matrix = stage.get("matrix", {})
        for combo in itertools.product(*matrix.values()):
            item = dict(zip(matrix, combo, strict=True))
            found |= {re.sub(r"\$\{item\.(\w+)\}", lambda m, item=item: item[m[1]], path)
                      for path in paths}
    return found


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_snakemake_and_dvc_plan_the_same_files_for_an_experiment(workflow_copy, name):
    config = f"workflow/experiments/{name}.yaml"
    out = run(["snakemake", "--summary", "--configfile", config], workflow_copy)
    planned = {row.split("\t")[0] for row in out.stdout.splitlines()[1:] if row.strip()}
    assert_tracks(planned, dvc_outs(dvc_yaml(load_params(workflow_copy / config), config)))


def test_dvc_set_param_changes_only_the_lines_it_touches(tmp_path):
    """`dvc exp run -S` rewrites the whole params file in its own YAML style: params.yaml is
    written in that style, so its comments and examples survive and the diff is the change."""
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", copy)
    apply_overrides(str(copy), ["+defences.noise2=[{kind: noise, sigma: 0.05}]",
                                "attacks.dlg.budget=50"])
    before = (REPO / "params.yaml").read_text().splitlines()
    after = copy.read_text().splitlines()
    removed, added = Counter(before) - Counter(after), Counter(after) - Counter(before)
    assert removed == Counter(["    budget: 100"])
    assert added == Counter(["  noise2:", "  - kind: noise", "    sigma: 0.05", "    budget: 50"])


def test_dvc_plots_render_offline_with_the_generated_template(tmp_path):
    """DVC's own template loads Vega from a CDN (blank charts offline); ours inlines it and
    DVC accepts it as an --html-template."""
    from dvc_render.html import HTML

    out = tmp_path / "offline.html"
    run(["ggl", "plots-template", "--output", str(out)], REPO)
    html = out.read_text()
    assert "http://" not in html.split("<script>")[0] and "<script src" not in html
    assert "vegaEmbed" in html
    page = HTML(html).with_element("<div id='p'>plot</div>").embed()
    assert "<div id='p'>plot</div>" in page and "{plot_divs}" not in page


def ran_stages(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_dvc_experiments_follow_params_and_record_headline_metrics(tmp_path):
    """README: `dvc exp run` from a fresh clone (no Snakemake run before), `-S` to change a
    setting (reruns only the stages that read it) or to add a defence (runs its stages),
    `dvc exp show` and `dvc metrics diff` to compare."""
    root = copy_workflow(tmp_path / "project", dvc=True)
    raw = tiny_params(experiment="tiny-dvc")
    raw["defences"] = {k: raw["defences"][k] for k in ("none", "noise")}
    raw["attacks"] = {k: raw["attacks"][k] for k in ("ggl-adam", "idlg")}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["ggl", "dvc-yaml"], root)
    run(["git", "init", "-q"], root)
    run(["git", "add", "."], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root)

    first = run(["dvc", "exp", "run"], root)
    params = load_params(root / "params.yaml")
    assert ran_stages(first.stdout) == {s.name for s in all_stages(params)}
    for stage in all_stages(params):
        for out in stage.outs():
            assert (root / out).is_file(), out

    second = run(["dvc", "exp", "run", "-S", "defences.noise=[{kind: noise, sigma: 0.02}]"], root)
    assert ran_stages(second.stdout) == {"gradients@noise", "attack@noise-ggl-adam",
                                         "attack@noise-idlg", "metrics", "aggregate"}
    assert yaml.safe_load((root / "params.yaml").read_text())["defences"]["noise"][0][
        "sigma"] == 0.02

    clip = "+defences.clip=[{kind: clipping, bound: 1.0, per_layer: false}]"
    third = run(["dvc", "exp", "run", "-S", clip], root)
    assert ran_stages(third.stdout) == {"gradients@clip", "attack@clip-ggl-adam",
                                        "attack@clip-idlg", "metrics", "aggregate"}
    headline = json.loads((root / "results/tiny-dvc/headline.json").read_text())
    assert set(headline) == {"none", "noise", "clip", "generator"}
    assert "Running stage" not in run(["dvc", "repro"], root).stdout

    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    recorded = [exp for commit in shown for exp in [commit, *(commit.get("experiments") or [])]]
    def clip_psnr(entry: dict) -> float | None:
        data = ((entry.get("revs") or [entry])[0]).get("data") or {}
        metrics = data.get("metrics", {}).get("results/tiny-dvc/headline.json", {})
        return metrics.get("data", {}).get("clip", {}).get("ggl", {}).get("psnr_db_pm1")
    assert sum(clip_psnr(e) == headline["clip"]["ggl"]["psnr_db_pm1"] for e in recorded) >= 2
    diff = run(["dvc", "metrics", "diff", "--json", "HEAD", "workspace"], root)
    assert "clip.ggl.psnr_db_pm1" in json.loads(diff.stdout)["results/tiny-dvc/headline.json"]


# --- opt-in: a real one-node SLURM cluster with a fake GPU -----------------------------------

SLURM_PACKAGES = ("munge", "slurm-client", "slurmctld", "slurmd")
SLURM_CONF = """\
ClusterName=ggltest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldPort=6917
SlurmdPort=6918
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=600
GresTypes=gpu
# config_overrides: the node offers what is declared, whatever this machine has, so that the
# profile's paper-scale requests (8 CPUs, 32 GB, one GPU) fit on a small test machine.
SlurmdParameters=config_overrides
NodeName={host} CPUs=16 RealMemory=64000 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def installed_packages() -> set[str]:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\\n"],
                         capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if line.startswith("ii")}


class OneNodeCluster:
    """slurmctld, slurmd and munged started in the foreground by this test and stopped by
    their PIDs; Debian packages installed for it are removed again (an installed SLURM
    client without a controller slows every later Snakemake call down).

    The configuration goes to the standard /etc/slurm (removed again): the jobstep plugin
    drops every SLURM_* variable, SLURM_CONF included, before its nested `srun`."""

    CONF_DIR = Path("/etc/slurm")

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.host = socket.gethostname().split(".")[0]
        self.daemons: list[subprocess.Popen] = []
        self.installed: list[str] = []
        self.written: list[Path] = []
        self.conf = self.CONF_DIR / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def install(self) -> None:
        missing = [p for p in SLURM_PACKAGES
                   if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
        if missing:
            before = installed_packages()
            apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                            *missing], check=True, env=apt, capture_output=True)
            # exactly what this test added (dependencies too), to purge it again afterwards
            self.installed = sorted(installed_packages() - before)

    def start(self) -> None:
        (self.dir / "state").mkdir(parents=True)
        (self.dir / "spool").mkdir()
        gres = self.CONF_DIR / "gres.conf"
        for path in (self.conf, gres):
            if path.exists():  # a machine with its own SLURM: never replace its settings
                raise RuntimeError(f"{path} exists; this test only runs where SLURM is not "
                                   "configured")
        self.CONF_DIR.mkdir(exist_ok=True)
        self.written += [self.conf, gres]
        self.conf.write_text(SLURM_CONF.format(host=self.host, dir=self.dir))
        # a fake GPU: the scheduler counts it, nothing uses it
        gres.write_text(f"NodeName={self.host} Name=gpu File=/dev/null\n")
        key, socket_dir = Path("/etc/munge/munge.key"), Path("/run/munge")
        if not key.exists():
            run(["mungekey", "--create", "--keyfile", str(key)], self.dir)
            shutil.chown(key, "munge", "munge")
        socket_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(socket_dir, "munge", "munge")
        # -F: foreground, so the PID is munged's own; it refuses to run as root
        self.daemons.append(subprocess.Popen(["munged", "-F"], user="munge", group="munge",
                                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        self._wait(lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0,
                   "munged")
        for daemon in ("slurmctld", "slurmd"):
            # -D: stay in the foreground, so the PID is the daemon's own
            self.daemons.append(subprocess.Popen([daemon, "-D", "-f", str(self.conf)],
                                                 env=self.env, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.STDOUT))
        self._wait(self._node_idle, "the node to come up idle")

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                             env=self.env)
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def _wait(self, ready, what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(d.poll() is not None for d in self.daemons):
                raise RuntimeError(f"a daemon died waiting for {what}; logs in {self.dir}")
            if ready():
                return
            time.sleep(1)
        raise TimeoutError(f"waited {seconds} s for {what}; logs in {self.dir}")

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld remembers (MinJobAge keeps finished ones 10 minutes)."""
        out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True,
                             env=self.env, check=True)
        jobs = []
        for line in out.stdout.splitlines():
            fields = dict(re.findall(r"(\w[\w:/]*)=(\S*)", line))
            if fields:
                jobs.append(fields)
        return jobs

    def stop(self) -> None:
        for daemon in reversed(self.daemons):  # by PID, newest first
            if daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        for path in self.written:
            path.unlink(missing_ok=True)
        if self.installed:
            subprocess.run(["apt-get", "purge", "-y", "-qq", *self.installed],
                           capture_output=True, env={**os.environ,
                                                     "DEBIAN_FRONTEND": "noninteractive"})


@pytest.mark.skipif(os.environ.get("GGL_SLURM_TEST") != "1",
                    reason="opt-in: GGL_SLURM_TEST=1 installs and starts a SLURM cluster")
def test_tiny_pipeline_runs_through_the_slurm_profile_on_a_one_node_cluster(tmp_path):
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("GGL_SLURM_TEST=1 needs root and apt-get (Debian/Ubuntu) to install "
                    "slurmctld, slurmd and munge")
    cluster = OneNodeCluster(tmp_path / "cluster")
    try:
        cluster.install()
        cluster.start()
        root = copy_workflow(tmp_path / "project")
        raw = tiny_params(experiment="tiny-slurm")
        raw["attacks"] = {k: raw["attacks"][k] for k in ("ggl-cmaes", "idlg")}
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        env = {**cluster.env, "GGL_SLURM_PARTITION": "debug",
               "GGL_SLURM_GPU_PARTITION": "debug", "GGL_SLURM_ACCOUNT": ""}
        # squeue: no accounting database here; short first status check for a quick test;
        # --verbose logs each sbatch call
        out = run(["snakemake", "--profile", "workflow/profiles/slurm", "--verbose",
                   "--slurm-status-command", "squeue",
                   "--slurm-init-seconds-before-status-checks", "5"], root, env=env,
                  timeout=1800)
        calls = re.findall(r"sbatch call: (.*)", out.stdout + out.stderr)
        for call in calls:
            rule = re.search(r"--comment '?rule_([a-z_]+?)(?:_wildcards|'|\s)", call).group(1)
            assert ("--gpus=1" in call) == (rule in GPU_RULES), call
            asked = re.findall(r"(?:-p|-t|--mem) \S+|--cpus-per-task=\d+|--gpus=\S+", call)
            print("sbatch", rule, " ".join(asked))
        params = load_params(root / "params.yaml")
        for stage in all_stages(params):
            for path in stage.outs():
                assert (root / path).is_file(), path
        submitted = [(re.match(r"rule_([a-z_]+)", job.get("Comment", "")), job)
                     for job in cluster.jobs()]
        by_rule: dict[str, list[dict[str, str]]] = {}
        for match, job in submitted:
            if match:
                by_rule.setdefault(match.group(1).split("_wildcards")[0], []).append(job)
        print({rule: len(jobs) for rule, jobs in by_rule.items()})
        expected = expected_jobs(params)
        del expected["all"]  # the target rule runs in the submitting Snakemake
        assert Counter({rule: len(jobs) for rule, jobs in by_rule.items()}) == expected
        assert len(calls) == sum(expected.values())
        for rule, jobs in by_rule.items():
            for job in jobs:
                tres = job.get("TresPerJob", "") + job.get("TRES", "")
                assert ("gpu" in tres) == (rule in GPU_RULES), (rule, job)
                assert job["JobState"] == "COMPLETED", (rule, job)
                print(rule, job["JobId"], job["Partition"], job.get("TresPerJob", ""),
                      job["NumCPUs"], job["TimeLimit"])
    finally:
        cluster.stop()
