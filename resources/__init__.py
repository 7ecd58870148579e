"""Shipped data: sample photos, built-in digits, pretrained models, icons (see README.md here)."""
