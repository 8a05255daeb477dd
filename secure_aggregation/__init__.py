"""Pairwise-masking secure aggregation: primitives and per-party state machines."""
