"""The station side's core, torch-free (import-linter keeps it so): the bundle format and its
signatures (bundle.py, signing.py), the ONNX Runtime engine and one head per task (engine.py,
heads.py), the one result type (result.py: Detections, InspectionResult), the station-to-record
wire contract (wire.py), the registry lookups (registry.py) and the box drawer (draw.py)."""
