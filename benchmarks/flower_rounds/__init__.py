"""Flower apps of the round benchmark in ``benchmarks/bench_flower_rounds.py``.

``client`` holds the ClientApp that every simulated node runs, ``server`` the
ServerApp that times plain rounds, healthfed's secure rounds and Flower's SecAgg+
rounds side by side.
"""
