"""Stage 2, host: talking to a machine. The one batched read of a host (hostfacts), safe data-dir
I/O (safeio), the SSH channel, apt's locks, and the control machine's own facts (hostenv)."""
