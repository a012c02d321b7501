"""Stage 1, settings: what the operator writes (the documented schema) and loading it from
inventories, validated by meaning before any connection. Imports nothing else of hermes_infra."""
