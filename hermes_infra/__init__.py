"""hermes-infra: a fresh Debian VPS to a running, verified Hermes Agent gateway in Docker."""

__version__ = "0.1.0"

# The pipeline, first stage first: a module may import its own stage and the stages before it,
# never one after it (tests/unit/test_architecture.py checks this, ARCHITECTURE.md explains it).
# A stage is a package or a top-level module of hermes_infra, by name.
STAGES: tuple[tuple[str, ...], ...] = (
    ("settings",),
    ("host",),
    ("images", "localvm"),
    ("plan",),
    ("operations",),
    ("commands",),
    ("checks",),
    ("release",),
    ("daytwo",),
    ("cli", "trylocal", "docs", "deploy_file", "__main__"),
)
