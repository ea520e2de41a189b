"""Layers of the model: UniFormer blocks, EMIM attention and its neighbourhood op, VMP."""
