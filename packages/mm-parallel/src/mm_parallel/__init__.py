"""mm-parallel: parallel engines for mm."""

__version__ = "0.1.0"
