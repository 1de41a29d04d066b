"""mm-models-vlm: vision-language plugins for mm."""

__version__ = "0.1.0"
