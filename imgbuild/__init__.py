"""imgbuild: turn a YAML recipe into an offline AI service image set that fits on optical discs."""

__version__ = "0.1.0"
