"""The edge station service: score camera frames at line speed and record every part."""
