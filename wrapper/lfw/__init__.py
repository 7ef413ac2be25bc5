"""lfw: short recipes rendered into complete LLaMA-Factory runs."""

__version__ = "0.1.0"
