"""Stage 4, plan: pure Python, no I/O on a host. From settings and facts, every file's bytes,
keys, digests, compose texts, limits, image identity, retirements (hostplan.make_plan)."""
