# BigGAN-deep-256, the 224x224 prior: downloaded once, verified by SHA-256 (ImageNet DAG only).
rule fetch_biggan:
    output:
        stage("fetch-biggan").outs(P),
    params:
        values=stage("fetch-biggan").param_values(P),
        cmd=stage("fetch-biggan").command(PARAMS_FILE),
    resources:
        runtime=30,
        mem_mb=2000,
    shell:
        "GGL_THREADS={threads} {params.cmd}"
