"""The stage registry: one description of every stage, read by Snakemake and DVC alike."""

from ggl.pipeline.registry import STAGE_KINDS, Stage, StageKind, all_stages

__all__ = ["STAGE_KINDS", "Stage", "StageKind", "all_stages"]
