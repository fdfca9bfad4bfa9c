#!/usr/bin/env bash
# Snakemake runs this inside the new conda environment (ggl.yaml), from the workflow's working
# directory (the repository root): install this repository as the README does.
set -euo pipefail
pip install -e .
