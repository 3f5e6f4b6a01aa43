"""Lambda Runtime API Daemon: run AWS Lambda runtimes outside the Lambda service."""

__version__ = "0.1.0"
