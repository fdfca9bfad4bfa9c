# ggl: the whole reproduction. `snakemake --cores all` runs params.yaml (the embedded digits
# default); `snakemake --cores all --configfile workflow/experiments/<name>.yaml` runs another
# experiment. Every rule is generated from the stage registry (src/ggl/pipeline/registry.py),
# which also generates dvc.yaml and the `ggl` subcommands the rules call.
import os

from snakemake.utils import min_version

from ggl.config import ParamsError, load_params
from ggl.pipeline.imports import code_digest
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
# default's defences into other experiments. The params file is the one given, or params.yaml,
# named relative to the project: jobs' commands (and so Snakemake's records of them) stay the
# same when the project moves or is cloned again.
PARAMS_FILE = (
    os.path.relpath(workflow.overwrite_configfiles[-1])
    if workflow.overwrite_configfiles
    else "params.yaml"
)
P = load_params(PARAMS_FILE)  # readable errors naming the key, before anything runs
if config and config != P.raw:  # --config, or several --configfile: jobs would not see them
    raise ParamsError(
        f"--config overrides (and more than one --configfile) are refused: every job reads "
        f"the one params file, {PARAMS_FILE}, so the override would be ignored. Write the "
        f"change into a params file and pass it with --configfile FILE"
    )
config.update(P.raw)


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
        benchmark:
            k.benchmark(P.experiment)
        params:
            values=lambda wc, k=k: Stage(k, P, dict(wc)).param_values(),
            cmd=lambda wc, k=k: Stage(k, P, dict(wc)).command(PARAMS_FILE),
            code=code_digest(k.module),  # a code change reruns the job: by content
        threads: k.job_threads(P)  # Snakemake lowers it to --cores when fewer are given
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
