"""repx: reproducible, incremental computational experiments described in Nix."""

__version__ = "0.1.0"
