"""citywatch: real-time IoT sensing and alert stream processor for city governance."""

__version__ = "0.1.0"
