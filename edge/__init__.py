"""Placeholder for the edge side; built by its own issue."""
