"""Bounds for every `tar -c` of a data dir (the day-two backup, the scheduled backup, the
upgrade's snapshot): the agent chooses what the tree holds, so it can make tar's work unbounded.

A sparse file (`truncate -s 16T x`) costs the agent no disk, yet a plain `tar` reads every
zero of it (about 30 hours and 70 GB of gzip per 16 TiB) while the gateway, or during an
upgrade every gateway, is stopped. So each archive:
- is refused when the tree's apparent size (`du --apparent-size`, what tar would read without
  `--sparse`) is over `MAX_APPARENT_BYTES`, before tar starts, with a message naming the limit;
- stores holes as holes (`--sparse`) and stays on the data dir's file system (`--one-file-system`:
  a mount the agent cannot make is not walked, and neither is anything bind-mounted later);
- runs under `timeout`, so a tree that is slow for another reason still ends the run.

Everything here only builds shell text.
"""
from __future__ import annotations

# Generous on purpose: a gateway's data dir holds sessions, memories and SQLite files, usually
# megabytes to a few GB. No setting has an obvious home for it yet (see the README's backups).
MAX_APPARENT_BYTES = 64 << 30
TAR_SECONDS = 4 * 3600
DU_SECONDS = 600
TAR_FLAGS = "--sparse --one-file-system --numeric-owner --no-acls --no-xattrs"
# Exit codes of the bounded steps, so callers can say which bound was hit.
TOO_LARGE_RC = 4
TIMED_OUT_RC = 124


def size_check(path: str = ".", prefix: str = "", limit: int | None = None) -> str:
    """Shell test: true when `path` (already quoted; default: the current dir) is within `limit`
    bytes of apparent size; otherwise false with the reason on stderr. `prefix` runs du as
    someone else (`safeio.as_owner`)."""
    limit = MAX_APPARENT_BYTES if limit is None else limit
    return (f"{{ hi_size=$(timeout {DU_SECONDS} {prefix} du -s -x --apparent-size -B1 -- {path} 2>/dev/null "
            "| cut -f1); "
            "case \"$hi_size\" in ''|*[!0-9]*) echo 'hermes-infra: could not measure the data dir (du failed)' >&2; "
            "false ;; *) if [ \"$hi_size\" -gt " f"{int(limit)} ]; then "
            f"echo \"hermes-infra: the data dir holds $hi_size bytes (apparent size, sparse files counted in full), "
            f"over the limit of {int(limit)} bytes for an archive; nothing archived. Fix: find what is large "
            "(du -x --apparent-size -a DIR | sort -n | tail), remove it, and run again\" >&2; false; fi ;; esac; }")


def tar_create(prefix: str = "") -> str:
    """`tar -c` with the bounds, without its arguments (`prefix`: as the owner)."""
    return f"timeout -k 30 {TAR_SECONDS} {prefix} tar {TAR_FLAGS}"


def describe_rc(rc: int | None) -> str:
    """What a bounded tar step's exit code means, for a message."""
    if rc == TOO_LARGE_RC:
        return f"the data dir is over the archive size limit ({MAX_APPARENT_BYTES} bytes)"
    if rc == TIMED_OUT_RC:
        return f"tar did not finish within {TAR_SECONDS}s"
    return f"tar exit {rc}"
