"""The shipped demo: a procedural captioned-shapes grammar (``shapes``), a checker that reads
scenes back out of pixels (``checker``), the builder of the demo models' training data
(``make_data``), their evaluation on held-out (colour, shape) pairs (``evaluate``) and the
recipes that train (``train.sh``) and evaluate (``eval.sh``) them. It sits above the library
layers (arch, vqvae, data_utils, generation, preprocess, training) and nothing below imports it.
"""
