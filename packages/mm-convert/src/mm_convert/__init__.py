"""mm-convert: checkpoint conversion for mm."""

__version__ = "0.1.0"
