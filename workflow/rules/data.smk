# The public/private split of the configured dataset.
rule split:
    input:
        stage("split").deps(P),
    output:
        stage("split").outs(P),
    params:
        values=stage("split").param_values(P),
        cmd=stage("split").command(PARAMS_FILE),
    resources:
        runtime=30,
        mem_mb=4000,
    shell:
        "GGL_THREADS={threads} {params.cmd}"
