"""A small Dagster project whose assets run locally, as Slurm jobs, or in one allocation."""
