"""Lowest layer: helpers every part of the project shares.

Modules here import only the standard library, torch and numpy, never the project,
so any package (arch, training, vqvae, preprocess, bench...) can use them without cycles.
"""
