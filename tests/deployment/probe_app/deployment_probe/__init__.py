"""Probe app: one query message per SuperNode and round, replies checked."""
