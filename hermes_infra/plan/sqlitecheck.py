"""Which SQLite library the gateway's image runs, and each database's journal mode and
`PRAGMA integrity_check`, read inside a one-off container of the gateway's image as the data
dir's owner (the online copy's confinement: `datatar.one_off_python`). `status` shows it and
the control HI-DATA-005 judges it.

Why it matters: SQLite 3.7.0 to 3.51.2 has the WAL-reset bug (fixed in 3.51.3, March 2026):
with several connections writing a WAL database, a checkpoint racing a WAL reset can leave
pages of a committed transaction out of the database: silent corruption. Hermes 0.19.0 opens
`state.db` and its other databases in WAL mode (`hermes_state.apply_wal_with_fallback`, and
`PRAGMA journal_mode=WAL` in the cron, delivery-ledger, kanban and delegation stores), from
several threads and processes, through Python's stdlib `sqlite3`, which links the system's
`libsqlite3.so.0`. The registry-free image is Debian 13 with Debian's libsqlite3-0
3.46.1-7+deb13u2 (a build from 2024-08-13): vulnerable. Upstream's own images (after 0.19.0)
build SQLite 3.53.4 and refuse WAL on a vulnerable library.

Everything the program reports comes from files the agent controls: names are data (cleaned
before they are shown), and no database is written (`mode=ro`, no virtual table read).
"""
from __future__ import annotations

import json
import shlex

from hermes_infra.images.build import SQLITE_FIXED_VERSION as FIXED_VERSION
from hermes_infra.plan import datatar

PROBE_SECONDS = 60
MAX_DATABASES = 50

_PROBE_MAIN = r'''
def main(seconds, rules, src):
    signal.alarm(int(seconds))
    report = {"sqlite_version": sqlite3.sqlite_version, "databases": {}, "truncated": False}
    # A directory it cannot list is passed over: the probe reports what it can read (the online
    # copy, which must take everything, fails on one instead).
    for name, _ in databases_under(src, rules, lambda rel, error: None):
        if MAX <= len(report["databases"]):
            report["truncated"] = True
            break
        report["databases"][name] = probe(os.path.join(src, name))
    json.dump(report, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def probe(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        head = handle.read(16)
    if head and head != b"SQLite format 3\x00":
        return {"journal_mode": None, "integrity": "not a SQLite database"}
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as error:
        return {"journal_mode": None, "integrity": f"cannot open: {error}"[:300]}
    try:
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA cell_size_check=ON")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        integrity = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check(20)"))
        return {"journal_mode": str(mode)[:20], "integrity": integrity[:1000]}
    except sqlite3.Error as error:
        return {"journal_mode": None, "integrity": f"cannot check: {error}"[:300]}
    finally:
        conn.close()


try:
    sys.exit(main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]))
except Exception as error:
    print(f"hermes-infra: the SQLite probe failed: {type(error).__name__}: {ascii(str(error))[:500]}",
          file=sys.stderr)
    sys.exit(1)
'''


def probe_program() -> str:
    return "\n".join(["import fnmatch, json, os, signal, sqlite3, stat, sys, urllib.parse",
                      f"MAX = {MAX_DATABASES}", datatar.walk_source(), _PROBE_MAIN])


def container_name(profile: str) -> str:
    return f"hermes-infra-sqlite-{profile}"


def probe_command(data_dir: str, uid: int, gid: int, profile: str, container: str, fallback_image: str) -> str:
    """Shell printing the probe's JSON (one line): the running container's image, or the settings'
    when it is gone. Read-only: the data dir is mounted as the online copy mounts it (a WAL
    reader must write its `-shm`), every database opened `mode=ro`."""
    rules = json.dumps([[rule.pattern, rule.where] for rule in datatar.LEFT_OUT], separators=(",", ":"))
    name = shlex.quote(container_name(profile))
    run = datatar.one_off_python(data_dir, uid, gid, container_name(profile), '"$hi_img"', probe_program(),
                                 [str(PROBE_SECONDS), rules, "/opt/data"], PROBE_SECONDS + 30)
    quoted = shlex.quote(data_dir)
    return (f"if [ -d {quoted} ] && [ ! -L {quoted} ]; then "
            f"hi_img=$(docker inspect --format '{{{{.Image}}}}' {shlex.quote(container)} 2>/dev/null) "
            f"|| hi_img={shlex.quote(fallback_image)}; docker rm -f {name} >/dev/null 2>&1; "
            f"{run} 2>/dev/null; docker rm -f {name} >/dev/null 2>&1; fi; true")


def parse_version(text: str) -> tuple[int, ...] | None:
    parts = text.split(".")
    if not 2 <= len(parts) <= 4 or not all(p.isdigit() and len(p) <= 4 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def parse_report(text: str) -> dict | None:
    """The probe's JSON, checked field by field; None when it is not what the program prints."""
    try:
        report = json.loads(text or "null")
    except json.JSONDecodeError:
        return None
    if not isinstance(report, dict) or not isinstance(report.get("sqlite_version"), str) \
            or parse_version(report["sqlite_version"]) is None or not isinstance(report.get("databases"), dict):
        return None
    databases = {}
    for name, entry in list(report["databases"].items())[:MAX_DATABASES]:
        if not isinstance(name, str) or not isinstance(entry, dict):
            continue
        mode = entry.get("journal_mode")
        databases[name] = {"journal_mode": mode if isinstance(mode, str) else None,
                           "integrity": str(entry.get("integrity"))[:1000]}
    return {"sqlite_version": report["sqlite_version"], "databases": databases,
            "truncated": report.get("truncated") is True}


def vulnerable(report: dict) -> bool:
    """The library has the WAL-reset bug (older than 3.51.3)."""
    version = parse_version(report["sqlite_version"])
    return version is None or version < FIXED_VERSION


def problems(report: dict) -> list[tuple[str, str]]:
    """(database, what is wrong): a failed integrity check, or WAL mode on a vulnerable library."""
    found = []
    for name, entry in sorted(report["databases"].items()):
        if entry["integrity"] == "not a SQLite database":
            continue  # only named like one: nothing SQLite writes
        if entry["integrity"] != "ok":
            found.append((name, f"integrity_check: {entry['integrity']}"))
        if entry["journal_mode"] == "wal" and vulnerable(report):
            found.append((name, f"WAL mode on SQLite {report['sqlite_version']} (the WAL-reset bug, fixed in "
                                f"{'.'.join(map(str, FIXED_VERSION))})"))
    return found


def exec_command(container: str, uid: int, gid: int) -> str:
    """The same probe in the *running* gateway container (`docker exec` as the owner): for the
    compliance check, which only reads (starting a container is a change to the host)."""
    rules = json.dumps([[rule.pattern, rule.where] for rule in datatar.LEFT_OUT], separators=(",", ":"))
    return (f"timeout -k 5 {PROBE_SECONDS + 30} docker exec -i -u {int(uid)}:{int(gid)} {shlex.quote(container)} "
            f"python3 -I -S -c {shlex.quote(probe_program())} {PROBE_SECONDS} {shlex.quote(rules)} /opt/data")
