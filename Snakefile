# ggl: the whole reproduction. `snakemake --cores all` runs params.yaml (the embedded digits
# default); `snakemake --cores all --configfile workflow/experiments/<name>.yaml` runs another
# experiment. Inputs, outputs, params and commands of every rule come from the stage registry
# (src/ggl/pipeline/registry.py), which also generates dvc.yaml.
import os

import yaml
from snakemake.utils import min_version, validate

from ggl.config import Params
from ggl.pipeline.registry import Stage, all_stages, check_dvc_yaml, kind

min_version("9.0")

report: "workflow/report/workflow.rst"

# No `configfile:` directive: Snakemake would deep-merge it with --configfile, leaking the
# default's defences into other experiments. The params file is the one given, or params.yaml.
PARAMS_FILE = str(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles \
    else "params.yaml"
if not config:
    with open(PARAMS_FILE) as handle:
        config.update(yaml.safe_load(handle))
P = Params.from_raw(config, source=PARAMS_FILE)  # readable errors naming the key, first
validate(config, schema="workflow/schemas/params.schema.yaml")


def stage(kind_name, wildcards=None):
    return Stage(kind(kind_name), dict(wildcards or {}))


include: "workflow/rules/data.smk"
include: "workflow/rules/gradients.smk"
include: "workflow/rules/generator.smk"
include: "workflow/rules/biggan.smk"
include: "workflow/rules/attacks.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        [out for s in all_stages(P) for out in s.outs(P)],


# Keep DVC in step: after a successful run, record the outputs in dvc.lock so that
# `dvc repro` has nothing to do (only when dvc.yaml was generated from this params file).
onsuccess:
    if os.path.isdir(".dvc") and check_dvc_yaml(P, PARAMS_FILE, "dvc.yaml") is None:
        shell("dvc commit --force --quiet || echo 'note: dvc commit failed; run it by hand'")
