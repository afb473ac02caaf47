"""Checkpoints: read safely, inspect, fix, diff."""
