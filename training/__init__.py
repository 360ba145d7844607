"""Training: config, data, loop, calibration, export, evaluation and MLflow registry (torch)."""
