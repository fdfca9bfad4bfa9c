# Where the pipeline answers its question: metrics (the only join of reconstructions with the
# private images), then the paper's tables and figures.
rule metrics:
    input:
        stage("metrics").deps(P),
    output:
        stage("metrics").outs(P),
    params:
        values=stage("metrics").param_values(P),
        cmd=stage("metrics").command(PARAMS_FILE),
    resources:
        runtime=60,
        mem_mb=8000,
    shell:
        "GGL_THREADS={threads} {params.cmd}"


def reported(path):
    """Put the figures and tables in `snakemake --report`, each with its caption."""
    name = os.path.basename(path)
    if name.startswith("reconstructions_"):
        return report(path, caption="../report/reconstructions.rst", category="Reconstructions")
    if name.startswith("sweep_"):
        return report(path, caption="../report/sweep.rst", category="Defence strength")
    if name == "convergence.png":
        return report(path, caption="../report/convergence.rst", category="Convergence")
    if name.endswith(".png"):
        return report(path, caption="../report/metric.rst", category="Metrics")
    if name.endswith(".csv"):
        return report(path, caption="../report/table.rst", category="Tables")
    return path


rule aggregate:
    input:
        stage("aggregate").deps(P),
    output:
        [reported(path) for path in stage("aggregate").outs(P)],
    params:
        values=stage("aggregate").param_values(P),
        cmd=stage("aggregate").command(PARAMS_FILE),
    resources:
        runtime=30,
        mem_mb=4000,
    shell:
        "GGL_THREADS={threads} {params.cmd}"
