"""Clip data sets: synthetic motion scenes, video folders and list files, augmentation, the clip cache."""
