"""hermes-infra: a fresh Debian VPS to a running, verified Hermes Agent gateway in Docker."""

__version__ = "0.1.0"
