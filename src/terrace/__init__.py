"""Terrace: a self-hostable platform layer driven by one declarative landscape file."""

__version__ = "0.1.0"
