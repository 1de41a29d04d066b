"""mm-data: datasets, decoding, samplers for mm."""

__version__ = "0.1.0"
