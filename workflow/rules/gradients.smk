# The client's defended gradient of every private image, one job per defence.
rule gradients:
    input:
        lambda wc: stage("gradients", wc).deps(P),
    output:
        kind("gradients").outs(P, defence="{defence}"),
    params:
        values=lambda wc: stage("gradients", wc).param_values(P),
        cmd=lambda wc: stage("gradients", wc).command(PARAMS_FILE),
    wildcard_constraints:
        defence="|".join(P.defences),
    resources:
        runtime=30,
        mem_mb=4000,
    shell:
        "GGL_THREADS={threads} {params.cmd}"
