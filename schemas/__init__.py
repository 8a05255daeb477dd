"""Shared table-schema language, validator and feature encoder."""
