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

import fnmatch
import inspect
import json
import os
import shlex
import stat
from dataclasses import dataclass

from hermes_infra.host import safeio

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
    """What an archive step's exit code means, for a message and the host's record (fixed texts)."""
    if rc in REASONS:
        return REASONS[rc]
    return f"the archive step failed (exit {rc})"


# ------------------------------------------------------------------ what an archive leaves out
@dataclass(frozen=True)
class Rule:
    """One entry of a data dir that a backup does not take from tar, and why.

    `pattern` is a shell glob. `where` says what it is matched against:
    - "anywhere": the entry's own name, at any depth;
    - "home": the path from the top of a Hermes home, that is the data dir itself or one of its
      profiles (`profiles/<name>/`, each a full HERMES_HOME); `*` never crosses a `/`.
    A directory that matches is left out with everything under it."""

    pattern: str
    where: str
    reason: str


ONLINE_COPY = Rule("*.db", "anywhere",
                   "a SQLite database: copied by SQLite's online backup API as the data dir's owner while the "
                   "gateway runs (tar would read a file being written); the copy takes its place in the archive")
LEFT_OUT = (
    Rule("*.db-wal", "anywhere", "the write-ahead log of a live database: its committed pages are in the online "
                                 "copy, and a stale log restored beside the copy would be replayed into it"),
    Rule("*.db-shm", "anywhere", "a live database's shared-memory index: SQLite rebuilds it, it is valid for no "
                                 "other file"),
    Rule("*.db-journal", "anywhere", "a live database's rollback journal: a stale one restored beside the copy "
                                     "would roll the copy back"),
    Rule("*.pid", "home", "the running gateway's process id: after a restore it names no process, or another one"),
    Rule("*.lock", "home", "a lock a running process holds: restored, it would keep the restored gateway waiting"),
    Rule("cron/*.lock", "home", "the cron ticker's lock: the same"),
    Rule("*heartbeat*", "home", "a liveness stamp of the running gateway: restored, it would claim a process that "
                                "is not there"),
    Rule("cache", "home", "upstream's cache (session temp files, pruned after 72 h): rebuilt, not state"),
    Rule("backups", "home", "upstream's own backups (`hermes backup`, config migrations): copies of what the "
                            "archive holds anyway"),
)
"""Left out of every online backup's tar (the scheduled, the manual one). Derived or live files
only: nothing here is state a restored gateway needs. Kept short on purpose: a name left out by
mistake is lost from every backup, so each entry says why it may go."""


def _glob_parts(parts: list[str], pattern: str) -> bool:
    wanted = pattern.split("/")
    return len(parts) == len(wanted) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted))


def rule_matches(rule_pattern: str, rule_where: str, path: str) -> bool:
    """Whether `path` (relative to the data dir, `/`-separated, no `./`) is the entry a rule names.
    The copy container runs this same function (its source is sent along), so the host's walk and
    these tests agree on it."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return False
    if rule_where == "anywhere":
        return fnmatch.fnmatchcase(parts[-1], rule_pattern)
    homes = [parts]
    if 2 < len(parts) and parts[0] == "profiles":
        homes.append(parts[2:])
    return any(_glob_parts(home, rule_pattern) for home in homes)


def databases_under(src, rules, unreadable):
    """Every regular `*.db` under `src` as (path relative to it, lstat), in name order, depth
    first: no link followed, no other file system entered, nothing a rule ([pattern, where]
    pairs) names walked into. A directory that cannot be listed goes to `unreadable(rel, error)`:
    it raises to end the walk, or returns to go on without that directory. The copy container
    and the SQLite probe run this same function (its source is sent along), so the two walk the
    data dir alike and only decide differently what an unreadable directory means."""
    root_dev = os.stat(src).st_dev

    def walk(rel):
        try:
            entries = sorted(os.scandir(os.path.join(src, rel) if rel else src), key=lambda e: e.name)
        except OSError as error:
            unreadable(rel, error)
            return
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since the listing (a live database's -shm as its last connection closed)
            if info.st_dev != root_dev or any(rule_matches(p, w, name) for p, w in rules):
                continue
            if stat.S_ISDIR(info.st_mode):
                yield from walk(name)
            elif stat.S_ISREG(info.st_mode) and fnmatch.fnmatchcase(entry.name, "*.db"):
                yield name, info

    yield from walk("")


def walk_source() -> str:
    """The source of the walk and the rule match, for a program run in a container."""
    return "\n".join([inspect.getsource(_glob_parts), inspect.getsource(rule_matches),
                      inspect.getsource(databases_under)])


def left_out(path: str) -> Rule | None:
    """The rule that keeps `path` (or a directory above it) out of tar's part of an online backup;
    None when tar takes it. `*.db` files count as left out (the online copy takes them)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        for rule in (ONLINE_COPY, *LEFT_OUT):
            if rule_matches(rule.pattern, rule.where, prefix):
                return rule
    return None


def exclude_options() -> str:
    """GNU tar options that leave out exactly what `left_out` names (tests compare the two on a
    real tree): a name pattern as a no-anchored exclude (tried after every `/`), a home pattern
    anchored at `./` and at `./profiles/*/`; in neither does `*` match a `/`."""
    words = ["--no-wildcards-match-slash"]
    for rule in (ONLINE_COPY, *LEFT_OUT):
        if rule.where == "anywhere":
            words += ["--no-anchored", f"--exclude={shlex.quote(rule.pattern)}"]
        else:
            words += ["--anchored", f"--exclude={shlex.quote('./' + rule.pattern)}",
                      f"--exclude={shlex.quote('./profiles/*/' + rule.pattern)}"]
    return " ".join(words)


# ------------------------------------------------------------------ the online copy of databases
COPY_SECONDS = 3600
INTEGRITY_FAILED_RC = 3
"""The copy's exit code when every database was copied but one copy fails `integrity_check`."""

_COPY_MAIN = r'''
def main(seconds, rules, src, out):
    signal.alarm(int(seconds))
    os.umask(0o077)
    report, broken = {"databases": {}, "copied_as_files": [], "unreadable": []}, False

    def unreadable(rel, error):
        if not isinstance(error, PermissionError):
            raise error
        # tar reads every directory after this, fails on this one and names it: the run fails there.
        report["unreadable"].append(rel)

    def copy_db(name, info):
        nonlocal broken
        target = os.path.join(out, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        source = os.path.join(src, name)
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            head = handle.read(16)
        if head and head != b"SQLite format 3\x00":
            # Not a database (only named like one): its bytes, as tar would have taken them.
            with open(source, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as s, \
                    open(target, "xb") as d:
                while chunk := s.read(1 << 20):
                    d.write(chunk)
            report["copied_as_files"].append(name)
        else:
            live = sqlite3.connect(f"file:{urllib.parse.quote(source)}?mode=ro", uri=True, timeout=60)
            copy = sqlite3.connect(target)
            try:
                live.backup(copy)
                # One self-contained file: a WAL-mode copy would keep pages in a -wal beside it.
                copy.execute("PRAGMA journal_mode=DELETE").fetchone()
            finally:
                live.close()
                copy.close()
            summary = check(target)
            report["databases"][name] = summary
            broken = broken or summary["integrity"] != "ok"
        os.chmod(target, stat.S_IMODE(info.st_mode) & 0o777)

    for name, info in databases_under(src, rules, unreadable):
        copy_db(name, info)
    json.dump(report, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 3 if broken else 0


def check(path):
    """integrity_check and row counts of a copy: its schema untrusted (no virtual table read)."""
    conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA cell_size_check=ON")
        conn.execute("PRAGMA temp_store=MEMORY")
        integrity = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check(20)"))
        tables = {}
        for table, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table' "
                                       "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall():
            if sql and " ".join(sql.split()).upper().startswith("CREATE VIRTUAL TABLE"):
                tables[table] = "virtual table (not read)"
                continue
            quoted = '"' + table.replace('"', '""') + '"'
            try:
                tables[table] = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
            except sqlite3.DatabaseError as error:
                tables[table] = f"unreadable: {error}"[:200]
        return {"integrity": integrity[:1000], "tables": tables, "bytes": os.path.getsize(path)}
    except sqlite3.DatabaseError as error:
        return {"integrity": f"cannot open the copy: {error}"[:300], "tables": {}, "bytes": os.path.getsize(path)}
    finally:
        conn.close()


try:
    sys.exit(main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]))
except Exception as error:  # the caller reads the exit code; the reason goes to stderr, escaped
    print(f"hermes-infra: the online copy failed: {type(error).__name__}: {ascii(str(error))[:500]}",
          file=sys.stderr)
    sys.exit(1)
'''


def copy_program() -> str:
    """The Python the copy container runs (`python3 -I -S -c`): walk the data dir as its owner
    without following a link or leaving its file system, skip what `LEFT_OUT` names, copy every
    regular `*.db` with `sqlite3.Connection.backup` (a read-only connection to the live file:
    SQLite's locks give a consistent snapshot while the gateway writes), check each copy, print
    a JSON report. Exit 0, `INTEGRITY_FAILED_RC`, or 1 (a copy failed; why on stderr)."""
    return "\n".join(["import fnmatch, json, os, signal, sqlite3, stat, sys, urllib.parse", walk_source(), _COPY_MAIN])


def copy_arguments() -> list[str]:
    """argv after the program: the time bound and the directory rules (the `*.db` rule is the
    walk's own test)."""
    rules = [[rule.pattern, rule.where] for rule in LEFT_OUT]
    return [str(COPY_SECONDS), json.dumps(rules, separators=(",", ":"))]


# Exit codes of `online_archive_script`, each a step that failed; `describe_rc` words them.
MISSING_RC = 3
COPY_FAILED_RC = 20
INTEGRITY_RC = 21
TAR_FAILED_RC = 22
APPEND_FAILED_RC = 23
GZIP_FAILED_RC = 24
WORK_DIR_RC = 25
REASONS = {
    MISSING_RC: "the data dir is missing, not a directory, or a symbolic link",
    TOO_LARGE_RC: f"the data dir is over the archive size limit of {MAX_APPARENT_BYTES} bytes (apparent size), "
                  "or could not be measured",
    TIMED_OUT_RC: f"tar or the database copy did not finish in time ({TAR_SECONDS}s, {COPY_SECONDS}s)",
    COPY_FAILED_RC: "the online copy of the SQLite databases failed (see the journal or the output)",
    INTEGRITY_RC: "a database copy failed PRAGMA integrity_check (the live database may be damaged)",
    TAR_FAILED_RC: "tar failed: some files could not be read",
    APPEND_FAILED_RC: "the database copies could not be added to the archive",
    GZIP_FAILED_RC: "gzip failed (disk full?)",
    WORK_DIR_RC: "no root-only work dir could be made for the copy (disk full?)",
}
"""Fixed texts only: a reason is recorded on the host and shown by `status`, so nothing the agent
wrote (a file name, tar's messages) may be part of one."""


def copy_container_name(profile: str) -> str:
    return f"hermes-infra-dbcopy-{profile}"


def copy_command(data_dir: str, uid: int, gid: int, profile: str, out_dir: str, image: str) -> str:
    """`docker run` of the copy program in a one-off container of the gateway's own image, as the
    data dir's owner: no network, no capability, a read-only root, its entrypoint (which would
    start s6 and refuse `--user`) replaced by `python3 -I -S` (no site or user code from the image
    or the data dir). `out_dir` (already quoted: a shell word) is the only other mount.

    The data dir is mounted read-write: a reader of a WAL database must be able to write its
    `-shm` index (SQLite's locks live there); on a read-only mount a database whose last
    connection has closed cannot be opened at all ("attempt to write a readonly database"). The
    program opens every database `mode=ro` and writes only to `/out`; the container runs as the
    owner, who may write the data dir anyway."""
    return one_off_python(data_dir, uid, gid, copy_container_name(profile), image, copy_program(),
                          [*copy_arguments(), "/opt/data", "/out"], COPY_SECONDS + 60,
                          f"--mount type=bind,src={out_dir},dst=/out ")


def one_off_python(data_dir: str, uid: int, gid: int, name: str, image: str, program: str, arguments: list[str],
                   seconds: int, mounts: str = "") -> str:
    """`docker run` of `program` (Python source) in a one-off container of the gateway's image as
    the data dir's owner, confined as `copy_command` says; the data dir at /opt/data, `mounts`
    (shell words, already quoted) beside it; `image` a shell word."""
    return (f"timeout -k 30 {int(seconds)} docker run --rm --name {shlex.quote(name)} --pull never "
            f"--user {int(uid)}:{int(gid)} --network none --read-only --cap-drop ALL "
            "--security-opt no-new-privileges --pids-limit 64 --workdir / --entrypoint python3 "
            f"--mount {shlex.quote(f'type=bind,src={data_dir},dst=/opt/data')} "
            f"{mounts}{image} -I -S -c {shlex.quote(program)} "
            + " ".join(shlex.quote(a) for a in arguments))


def online_archive_script(data_dir: str, uid: int, gid: int, profile: str, container: str, fallback_image: str,
                          work: str) -> str:
    """Shell (run by root, in a subshell of its own) writing a gzip'd tar of the data dir on stdout
    while the gateway runs; exits 0 or one of the `REASONS` codes (`INTEGRITY_RC` after the whole
    archive was written). `work` (a shell word such as "$w") is a fresh root-only 0700 dir.

    1. `work/db`, handed to the owner, receives the database copies (`copy_command`); no process
       of the owner can reach it but that container (the parent is root's, 0700), and once
       `docker run` returns the container and every process in it are gone;
    2. tar of the rest as the owner (`LEFT_OUT` and `*.db` excluded) into `work/data.tar`,
       a file root opened;
    3. the copies appended by root (`tar -r`, regular files only, links never followed);
    4. gzip."""
    owner = safeio.as_owner(uid, gid)
    quoted = shlex.quote(data_dir)
    out = f"{work}/db"
    chosen_image = '"$hi_img"'
    image = (f"hi_img=$(docker inspect --format '{{{{.Image}}}}' {shlex.quote(container)} 2>/dev/null) "
             f"|| hi_img={shlex.quote(fallback_image)}")
    return "; ".join([
        f"[ -d {quoted} ] && [ ! -L {quoted} ] || exit {MISSING_RC}",
        image,
        f"install -d -o {int(uid)} -g {int(gid)} -m 0700 -- {out} || exit {COPY_FAILED_RC}",
        # A copy container an interrupted run left behind would hold the name.
        f"docker rm -f {shlex.quote(copy_container_name(profile))} >/dev/null 2>&1",
        f"{copy_command(data_dir, uid, gid, profile, out, chosen_image)} > {work}/databases.json; hi_c=$?",
        f"docker rm -f {shlex.quote(copy_container_name(profile))} >/dev/null 2>&1",
        f"case $hi_c in 0|{INTEGRITY_FAILED_RC}) ;; 124|137) exit {TIMED_OUT_RC} ;; *) exit {COPY_FAILED_RC} ;; esac",
        f"( {safeio.enter(data_dir)} || exit {MISSING_RC}; {size_check(prefix=owner)} || exit {TOO_LARGE_RC}; "
        f"exec {tar_create(owner)} {exclude_options()} --warning=no-file-changed --warning=no-file-ignored "
        f"-cf - . ) > {work}/data.tar; hi_t=$?",
        f"case $hi_t in 0|1) ;; {MISSING_RC}|{TOO_LARGE_RC}|{TIMED_OUT_RC}) exit $hi_t ;; "
        f"*) echo \"hermes-infra: tar exit $hi_t\" >&2; exit {TAR_FAILED_RC} ;; esac",
        f"( cd -P -- {out} && find . -type f -name '*.db' -print0 > {work}/copies && "
        f"tar {TAR_FLAGS} --null --no-recursion -T {work}/copies -rf {work}/data.tar ) || exit {APPEND_FAILED_RC}",
        f"gzip -1 -c < {work}/data.tar || exit {GZIP_FAILED_RC}",
        f"[ $hi_c = 0 ] || exit {INTEGRITY_RC}",
    ])
