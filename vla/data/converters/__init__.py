"""Converters into the Parquet episode format: ``calvin``, ``synthetic``, ``lerobot``."""
