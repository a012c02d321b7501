"""Releases: the deploy lock, the audit log, revisions, rollouts in batches, upgrades with a way
back (Kamal-style: small objects with one job each; the CLI in `cli.py` is a thin layer).

Everything that talks to a host here runs one SSH command per call (`remote.py`) and builds
its shell text from pure functions, so the unit tests read the commands against fakes.
"""
