"""Datasets as in-memory tensors: the raw image files found and verified (files), seeded
subsets and label noise (sampling), the datasets made in code (toy), and loading plus on-device
augmentation (datasets)."""
