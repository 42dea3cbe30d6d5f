"""What every Model Gallery service shares."""

__version__ = "0.1.0"
