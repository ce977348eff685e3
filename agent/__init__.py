"""venue-agent: the gateway runtime."""

__version__ = "0.1.0"
