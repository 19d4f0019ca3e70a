"""curation: turn human-centric video into training data for audio-driven avatar models."""
__version__ = "0.1.0"
