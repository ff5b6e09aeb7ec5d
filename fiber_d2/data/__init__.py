"""Datasets, formats and data mappers."""
