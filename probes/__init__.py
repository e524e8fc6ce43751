"""Probes: one module per probe, each with the same start / ready / stop shape.

Probes measure and write raw records; they never import ``analysis``.
"""
