"""Checkpoint files: the project's own format, and published UniFormer / EMIM weights turned into it."""
