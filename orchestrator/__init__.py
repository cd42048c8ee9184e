"""A webhook-driven event orchestrator that replaces polling loops."""

__version__ = "0.1.0"
