# The curious server's attacks: one job per (defence, attack), covering every private image.
# Inputs are the received gradients and the generator only, never the private images.
rule attack:
    input:
        lambda wc: stage("attack", wc).deps(P),
    output:
        kind("attack").outs(P, defence="{defence}", attack="{attack}"),
    params:
        values=lambda wc: stage("attack", wc).param_values(P),
        cmd=lambda wc: stage("attack", wc).command(PARAMS_FILE),
    wildcard_constraints:
        defence="|".join(P.defences),
        attack="|".join(P.attacks),
    resources:
        gpu=1,
        runtime=600,
        mem_mb=8000,
    shell:
        "GGL_THREADS={threads} {params.cmd}"
