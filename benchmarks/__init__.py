"""Measurements of worldsim: speed, fidelity, transfer and physics probes.

Each benchmark module is runnable (``python -m benchmarks.<name> --help``) and writes its
results as JSON under ``benchmarks/results/`` with a description of the machine.
"""
