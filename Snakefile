# ggl: the whole reproduction. `snakemake --cores all` runs params.yaml (the embedded digits
# default); `snakemake --cores all --configfile workflow/experiments/<name>.yaml` runs another
# experiment. Every rule is generated from the stage registry (src/ggl/pipeline/registry.py),
# which also generates dvc.yaml and the `ggl` subcommands the rules call.
import os

import yaml
from snakemake.utils import min_version

from ggl.config import Params
from ggl.pipeline.registry import (
    STAGE_KINDS,
    Stage,
    all_stages,
    check_dvc_yaml,
    rule_inputs,
    rule_outputs,
    constraints,
)

min_version("9.0")


report: "workflow/report/workflow.rst"


# No `configfile:` directive: Snakemake would deep-merge it with --configfile, leaking the
# default's defences into other experiments. The params file is the one given, or params.yaml.
PARAMS_FILE = (
    str(workflow.overwrite_configfiles[-1])
    if workflow.overwrite_configfiles
    else "params.yaml"
)
if not config:
    with open(PARAMS_FILE) as handle:
        config.update(yaml.safe_load(handle))
P = Params.from_raw(config, source=PARAMS_FILE)  # readable errors naming the key, first


rule all:
    default_target: True
    input:
        [out for s in all_stages(P) for out in s.outs()],


for k in (k for k in STAGE_KINDS if k.instances(P)):

    rule:
        name:
            k.rule
        input:
            unpack(lambda wc, k=k: rule_inputs(k, P, dict(wc))),
        output:
            **rule_outputs(k, P, report),
        log:
            k.log(P.experiment),
        params:
            values=lambda wc, k=k: Stage(k, P, dict(wc)).param_values(),
            cmd=lambda wc, k=k: Stage(k, P, dict(wc)).command(PARAMS_FILE),
        threads: k.threads  # Snakemake lowers it to --cores when fewer are given
        priority: k.priority
        resources:
            **k.resources,
        wildcard_constraints:
            **constraints(k, P),
        conda:
            "workflow/envs/ggl.yaml"
        shell:
            "GGL_THREADS={threads} {params.cmd}"


# Keep DVC in step: after a successful run, record the outputs in dvc.lock so that
# `dvc repro` has nothing to do (only when dvc.yaml was generated from this params file).
# --no-relink: relinking gave cached outputs new times, so Snakemake re-ran `aggregate` forever.
onsuccess:
    if os.path.isdir(".dvc") and check_dvc_yaml(P, PARAMS_FILE, "dvc.yaml") is None:
        shell(
            "dvc commit --force --no-relink --quiet || echo 'note: dvc commit failed; run it by hand'"
        )
