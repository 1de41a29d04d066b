"""mm-models-video: video generation plugins for mm."""

__version__ = "0.1.0"
