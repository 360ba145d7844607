"""Placeholder for the quality side; built by its own issue."""
