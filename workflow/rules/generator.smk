# The server's prior: WGAN-GP on the public split, then a readable quality check.
rule train_gan:
    input:
        stage("train-gan").deps(P),
    output:
        [report(p, caption="../report/generator_samples.rst", category="Generator")
         if p.endswith(("samples.png", "losses.png")) else p for p in stage("train-gan").outs(P)],
    params:
        values=stage("train-gan").param_values(P),
        cmd=stage("train-gan").command(PARAMS_FILE),
    threads: 8  # Snakemake lowers this to --cores when fewer are given
    resources:
        gpu=1,
        runtime=240,
        mem_mb=8000,
    shell:
        "GGL_THREADS={threads} {params.cmd}"


rule gan_quality:
    input:
        stage("gan-quality").deps(P),
    output:
        [report(p, caption="../report/generator_quality.rst", category="Generator")
         for p in stage("gan-quality").outs(P)],
    params:
        values=stage("gan-quality").param_values(P),
        cmd=stage("gan-quality").command(PARAMS_FILE),
    resources:
        runtime=30,
        mem_mb=4000,
    shell:
        "GGL_THREADS={threads} {params.cmd}"
