"""The pipeline: the stage registry and the import graph its code dependencies come from."""
