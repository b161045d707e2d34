"""Streaming eligibility filter: which public content may go to AI training."""

__version__ = "0.1.0"
