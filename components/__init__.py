"""Swappable WaveGrad 2 parts: pure torch modules and functions (no files, no tracking)."""
