"""zerodefect: visual defect inspection for factory lines."""

__version__ = "0.1.0"
