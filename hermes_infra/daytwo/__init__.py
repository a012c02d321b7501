"""Day two: operate deployed gateways without the guides' docker commands.

`status` (read-only, one SSH connection per host), `logs`, `restart` (health-gated), the Hermes
CLI as the container user (`hermes`, `pairing`, `doctor`), `backup` and `restore` (onto the
same or a new host), and HTML pages for `status` and `check`. The CLI (`daytwo.cli`) is a thin
layer over these modules' functions.
"""
