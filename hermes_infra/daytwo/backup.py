"""`hermes-infra backup` and `hermes-infra restore`: a gateway's data dir to the control machine
and back, onto the same host or a new one.

A backup is one file per profile, `<host>_<profile>_<UTC time>.hermes-backup.tar`, mode 0600
in a 0700 directory: `manifest.json` (what, from where, every file's sha256, size and mode,
every SQLite database's integrity and row counts) and `data.tar.gz` (the data dir as GNU tar
stores it: numeric owners, links and FIFOs stored, never followed or read). Secrets (`.env`,
WeChat login, tokens) are inside it only: nothing is printed, nothing lands elsewhere.

Consistency, online: the gateway keeps running. Each SQLite database (every regular `*.db`)
is copied with SQLite's online backup API, which reads one consistent snapshot under SQLite's
own locks while Hermes writes; the copy runs as the data dir's owner in a one-off, confined
container of the gateway's image (`datatar.copy_command`). The rest of the data dir goes by
tar, leaving out the live and derived files `datatar.LEFT_OUT` names (WAL, shm and journal
files, pid, lock and heartbeat files, `cache/`, upstream's `backups/`), each with its reason.
The control machine then opens each database *copy* from the archive (never on the host;
read-only, virtual tables skipped, cell sizes checked, bounded in time) and records `PRAGMA
integrity_check` and row counts: a corrupt `state.db` is reported at backup time, and such a
backup is a failed one. Each run's result (time, size, ok or failed, a fixed-text reason) is
recorded on the host (`manual_record_path`), where `status` shows it.

Safety (the data dir is the agent's): `tar -c` runs as the data dir's owner (`setpriv`) from
a directory entered by root without following a link, the database copies are written into a
root-only directory no process of the owner but the copy container can reach; root only moves
bytes. A restore
checks every member of the archive on the control machine first (no absolute path, no `..`,
no device, nothing under a symlink member, nothing after a damaged header; a hard link becomes
a copy of its file), re-packs exactly those members with fresh headers (the host's GNU tar never
parses a header Python did not), uploads that into the root-only staging dir, and unpacks it *as the owner* into a fresh directory (`install -d -o uid`), so
nothing it holds can land outside the data dir or belong to root. A data dir that already
holds state is moved aside (`<dir>.pre-restore-<time>`) only with `--force`.

Restore onto a new host: the host is deployed first when its gateway does not exist yet
(`release.up.up`, the normal deploy), then: stop, unpack, verify every file's sha256 against
the manifest, start, health gate (`/v1/models` answers the *restored* API key).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import secrets as pysecrets
import shlex
import sqlite3
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import BinaryIO
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hermes_infra import commands
from hermes_infra.host import safeio
from hermes_infra.plan import datatar
from hermes_infra.plan import hostplan as planmod
from hermes_infra.daytwo.lifecycle import compose_base, gate_command
from hermes_infra.daytwo.remote import DayTwoError, HostTarget, Remote, clean, deploy_lock, open_remote
from hermes_infra.release.up import up
from hermes_infra.settings.schema import GatewaySettings, HostSettings

SCHEMA = "hermes-infra/backup/v1"
SUFFIX = ".hermes-backup.tar"
MANIFEST = "manifest.json"
DATA = "data.tar.gz"
SQLITE_MAGIC = b"SQLite format 3\x00"
AUDIT_LOG = "/var/log/hermes-infra/audit.jsonl"
STAGE_DIR = planmod.STAGE_DIR
WORK_DIR_RC = datatar.WORK_DIR_RC
ASIDE_STAMP_GLOB = "[0-9]" * 8 + "T" + "[0-9]" * 6 + "Z"  # %Y%m%dT%H%M%SZ

Say = Callable[[str], None]


def _say_default(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- host commands
def running_command(gateway: GatewaySettings) -> str:
    return (f"docker inspect --format '{{{{.State.Running}}}}' {shlex.quote(gateway.service_name)} 2>/dev/null "
            "|| echo missing")


def stop_command(settings: HostSettings, gateway: GatewaySettings) -> str:
    return (f"{compose_base(settings)} stop -t {int(gateway.stop_grace_seconds)} "
            f"{shlex.quote(gateway.service_name)} 2>&1")


def start_command(settings: HostSettings, gateway: GatewaySettings) -> str:
    """Start the stopped gateway, then the deploy's health gate."""
    return (f"{compose_base(settings)} start {shlex.quote(gateway.service_name)} 2>&1 && "
            f"{{ {gate_command(settings, gateway)}\n}}")


def offsite_tar_path(gateway: GatewaySettings, stage: str = STAGE_DIR) -> str:
    """Where a manual backup leaves its uncompressed tar for the off-host upload (root's, in the
    root-only stage dir), until the control machine has checked the archive."""
    return f"{stage}/offsite-{gateway.name}.tar"


def archive_command(gateway: GatewaySettings, image: str, stage: str = STAGE_DIR, keep_tar: bool = False) -> str:
    """gzip'd tar of the data dir on stdout while the gateway runs (`datatar.online_archive_script`:
    the databases copied online as the owner, the rest by tar as the owner); the exit code is the
    archive step's (0, or one of `datatar.REASONS`). The copies wait in a fresh root-only dir under
    `stage`, removed afterwards. `image` is used when the gateway's container is gone. With
    `keep_tar` (off-host backups), a successful run leaves its uncompressed tar at
    `offsite_tar_path` for the upload.

    Files root left in the data dir are given back first (the owner could not read them)."""
    directory = gateway.host_data_dir
    archive = datatar.online_archive_script(directory, gateway.uid, gateway.gid, gateway.name, gateway.service_name,
                                            image, '"$w"')
    # A work dir an interrupted backup left goes first: backups hold the deploy lock, so no other uses one.
    kept = shlex.quote(offsite_tar_path(gateway, stage))
    keep = f"if [ $rc = 0 ]; then mv -f -- \"$w/data.tar\" {kept} || rc={WORK_DIR_RC}; fi; " if keep_tar else ""
    return (f"umask 077; install -d -m 0700 {shlex.quote(stage)} && rm -rf -- {shlex.quote(stage)}/backup.* "
            f"{kept} && w=$(mktemp -d {shlex.quote(stage + '/backup.XXXXXX')}) || exit {WORK_DIR_RC}; "
            f"( {safeio.chown_foreign_script(directory, gateway.uid, gateway.gid)} ) >/dev/null 2>&1; "
            f"( {archive} ); rc=$?; {keep}rm -rf -- \"$w\"; exit $rc")


def record_command(settings: HostSettings, gateway: GatewaySettings, record: dict) -> str:
    """Replace the profile's record of its last manual backup (root's, 0600 in a 0700 dir), at once."""
    path = manual_record_path(settings, gateway.name)
    text = json.dumps(record, sort_keys=True, ensure_ascii=True)
    directory = shlex.quote(path.rsplit("/", 1)[0])
    return (f"umask 077; install -d -m 0700 {directory} && printf '%s\\n' {shlex.quote(text)} > "
            f"{shlex.quote(path + '.new')} && mv -f -- {shlex.quote(path + '.new')} {shlex.quote(path)}")


def manual_record_path(settings: HostSettings, profile: str) -> str:
    """Where `hermes-infra backup` records a profile's last run on the host, in the scheduled
    backup's format (`backup_timer.last_run_path`) with `kind` `manual`; `status` shows both."""
    return f"{settings.backup_dir.rstrip('/')}/manual/{profile}.last.json"


def probe_command(settings: HostSettings, gateway: GatewaySettings) -> str:
    """What a restore needs to know first: the data dir (missing/empty/full/link), the compose file,
    the container."""
    quoted = shlex.quote(gateway.host_data_dir)
    compose_file = shlex.quote(f"{settings.project_dir}/compose.yaml")
    return (f"if [ -L {quoted} ]; then echo datadir=symlink; elif [ ! -e {quoted} ]; then echo datadir=missing; "
            f"elif [ ! -d {quoted} ]; then echo datadir=notdir; "
            f"elif [ -n \"$(find {quoted} -mindepth 1 -maxdepth 1 -print -quit 2>/dev/null)\" ]; then echo datadir=full; "
            f"else echo datadir=empty; fi; "
            f"[ -f {compose_file} ] && echo compose=present || echo compose=missing; "
            f"echo container=$({running_command(gateway)})")


def upload_command(staged: str) -> str:
    return (f"umask 077; install -d -m 0700 {shlex.quote(STAGE_DIR)} && cat > {shlex.quote(staged)} && "
            f"sha256sum {shlex.quote(staged)} | cut -d' ' -f1")


def unpack_command(gateway: GatewaySettings, staged: str, aside: str | None) -> str:
    """Move an existing data dir aside (root renames the entry itself: nothing is followed), make
    a fresh 0700 one for the owner, and unpack into it as the owner."""
    directory = shlex.quote(gateway.host_data_dir)
    steps = []
    if aside:
        steps.append(f"if [ -e {directory} ] || [ -L {directory} ]; then mv -T -- {directory} {shlex.quote(aside)}; fi")
    else:
        steps.append(f"if [ -L {directory} ] || [ -e {directory} ]; then "
                     f"echo 'hermes-infra: {gateway.host_data_dir} appeared; not overwritten' >&2; exit 3; fi")
    steps.append(f"install -d -o {int(gateway.uid)} -g {int(gateway.gid)} -m 0700 -- {directory}")
    tar = (f"{safeio.as_owner(gateway.uid, gateway.gid)} tar --no-same-owner --same-permissions --no-acls "
           "--no-xattrs --no-overwrite-dir -xzf -")
    steps.append(f"( {safeio.enter(gateway.host_data_dir)} && {tar} < {shlex.quote(staged)} )")
    return " && ".join(steps)


def verify_command(gateway: GatewaySettings, marker: str) -> str:
    """sha256 of every regular file, then `marker`, then every entry not owned by the owner,
    computed as the owner; every record NUL-terminated (a name may hold anything but NUL, so
    no name can pass for a record or the marker)."""
    owner = safeio.as_owner(gateway.uid, gateway.gid)
    return (f"{safeio.enter(gateway.host_data_dir)} && {{ {owner} find . -type f -print0 | "
            f"{owner} xargs -0 -r sha256sum -z --; printf '%s\\0' {shlex.quote(marker)}; "
            f"find . \\( ! -uid {int(gateway.uid)} -o ! -gid {int(gateway.gid)} \\) -print0; }}")


def prune_aside_command(gateway: GatewaySettings, keep: int) -> str:
    """Keep the newest `keep` `<dir>.pre-restore-<stamp>` dirs (old state and secrets do not pile
    up). They sit in the data dir's parent, root's, and `rm -r` never follows a link in them."""
    pattern = f"{shlex.quote(gateway.host_data_dir + '.pre-restore-')}{ASIDE_STAMP_GLOB}"
    return (f"for old in {pattern}; do [ -d \"$old\" ] && [ ! -L \"$old\" ] && printf '%s\\n' \"$old\"; done "
            f"| sort -r | tail -n +{int(keep) + 1} | while IFS= read -r old; do rm -rf -- \"$old\"; done")


def audit_command(record) -> str:
    """Append one record to the host's audit log, in the release engineer's format and way."""
    from hermes_infra.release.audit import append_command

    return append_command(record)


# ---------------------------------------------------------------------- archive contents
@dataclass
class Inventory:
    """What a data dir archive holds, computed on the control machine."""

    files: dict[str, dict] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    others: dict[str, str] = field(default_factory=dict)
    sqlite: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _member_name(name: str) -> str:
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p not in (".", "")]
    return "/".join(parts)


def check_member(member: tarfile.TarInfo, link_dirs: set[str], regular: set[str] | None = None) -> str | None:
    """Why a member must not be unpacked into a data dir (None: it may). A hard link to a regular
    file earlier in the archive is allowed: it is stored and unpacked as a copy of that file."""
    name = member.name
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return f"{name!r} is an absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return f"{name!r} climbs out with '..'"
    clean_name = _member_name(name)
    for i in range(1, len(clean_name.split("/"))):
        if "/".join(clean_name.split("/")[:i]) in link_dirs:
            return f"{name!r} lies under a symbolic link in the archive"
    if member.islnk():
        if regular is not None and _member_name(member.linkname) in regular:
            return None
        return f"{name!r} is a hard link to {member.linkname!r}, which is no regular file before it in the archive"
    if member.ischr() or member.isblk():
        return f"{name!r} is a device node"
    if not (member.isfile() or member.isdir() or member.issym() or member.isfifo()):
        return f"{name!r} has an unknown type"
    return None


SQLITE_SECONDS = 120
"""Time for one database's checks on the control machine; a crafted file that makes them crawl
is reported as not checked instead of hanging the backup."""
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _scratch_name(name: str) -> str:
    """A fixed-length name for a copy in the scratch dir (a long nested path would not fit in
    255 bytes), keeping a database's `-wal`/`-shm` beside it."""
    for suffix in SQLITE_SIDE_FILES:
        if name.endswith(suffix):
            return hashlib.sha256(name[: -len(suffix)].encode("utf-8", "surrogateescape")).hexdigest() + suffix
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()


def _is_virtual(sql: str | None) -> bool:
    return bool(sql) and " ".join(sql.split()).upper().startswith("CREATE VIRTUAL TABLE")


def _open_read_only(path: Path) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        # A WAL database without its -shm cannot be opened read-only: the private copy never changes.
        return sqlite3.connect(f"{uri}&immutable=1", uri=True)


def sqlite_summary(path: Path, seconds: float | None = None) -> dict:
    """Integrity and row counts of one database: a private copy on the control machine (with its
    `-wal` beside it, so committed rows not yet checkpointed count), opened read-only, its schema
    untrusted (no virtual table is read: their modules run code on what the file says), every
    cell's size checked, the whole bounded in time."""
    budget = SQLITE_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + budget
    try:
        conn = _open_read_only(path)
        try:
            conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 100)
            if hasattr(conn, "setconfig") and hasattr(sqlite3, "SQLITE_DBCONFIG_DEFENSIVE"):
                conn.setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, True)
            conn.execute("PRAGMA trusted_schema=OFF")
            conn.execute("PRAGMA cell_size_check=ON")
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            tables = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table' "
                                  "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
            counts = {}
            for table, sql in tables:
                if _is_virtual(sql):
                    counts[table] = "virtual table (not read)"
                    continue
                quoted = '"' + table.replace('"', '""') + '"'
                try:
                    counts[table] = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
                except sqlite3.DatabaseError as error:
                    counts[table] = f"unreadable: {clean(error, 200)}"
            return {"integrity": integrity, "tables": counts}
        finally:
            conn.close()
    except sqlite3.DatabaseError as error:
        if time.monotonic() > deadline:
            return {"integrity": f"not checked: gave up after {budget:.0f}s", "tables": {}}
        return {"integrity": f"cannot open: {clean(error, 200)}", "tables": {}}


def _trailing_data(archive: tarfile.TarFile) -> bool:
    """Whether anything but end-of-archive zeros follows where Python's reading stopped (a damaged
    header ends Python's iteration silently; GNU tar skips it and reads on)."""
    stream = archive.fileobj
    stream.seek(archive.offset)
    while block := stream.read(1 << 16):
        if block.strip(b"\0"):
            return True
    return False


def inventory_of(data_tar: Path, repack: BinaryIO | None = None) -> Inventory:
    """Check every member and hash every file of a data dir archive (gzip'd tar). With `repack`,
    also write there a fresh gzip'd tar of exactly the members checked (new headers, hard links
    as copies, no setuid/setgid bit): what a restore uploads, so the host's tar never parses
    a header Python did not."""
    found = Inventory()
    link_dirs: set[str] = set()
    databases: list[str] = []
    regular: set[str] = set()
    out = tarfile.open(fileobj=repack, mode="w:gz", format=tarfile.PAX_FORMAT) if repack is not None else None
    try:
        with tempfile.TemporaryDirectory(prefix="hermes-infra-sqlite-") as scratch, \
                tarfile.open(data_tar, "r:gz") as archive:
            os.chmod(scratch, 0o700)
            for member in archive:
                problem = check_member(member, link_dirs, regular)
                name = _member_name(member.name)
                if problem:
                    found.problems.append(problem)
                    continue
                if not name:
                    continue
                mode = f"{member.mode & 0o7777:04o}"
                fresh = tarfile.TarInfo(name)
                fresh.mode, fresh.mtime = member.mode & 0o1777, int(member.mtime)
                if member.isdir():
                    found.dirs.append(name)
                    fresh.type = tarfile.DIRTYPE
                elif member.issym():
                    found.links[name] = member.linkname
                    link_dirs.add(name)
                    fresh.type, fresh.linkname = tarfile.SYMTYPE, member.linkname
                elif member.isfifo():
                    found.others[name] = "fifo"
                    fresh.type = tarfile.FIFOTYPE
                else:
                    _hash_file(archive, member, name, Path(scratch), found, databases, mode)
                    regular.add(name)
                    fresh.size = found.files[name]["size"]
                    if out is not None:
                        out.addfile(fresh, archive.extractfile(member))
                    continue
                if out is not None:
                    out.addfile(fresh)
            if _trailing_data(archive):
                found.problems.append(f"the archive goes on after a damaged header (after {len(found.files)} "
                                      "files): its later members cannot be checked")
            for name in databases:
                found.sqlite[name] = sqlite_summary(Path(scratch) / _scratch_name(name))
    finally:
        if out is not None:
            out.close()
    return found


def _hash_file(archive: tarfile.TarFile, member: tarfile.TarInfo, name: str, scratch: Path, found: Inventory,
               databases: list[str], mode: str) -> None:
    digest, size, head = hashlib.sha256(), 0, b""
    source = archive.extractfile(member)
    keep = None
    try:
        while chunk := source.read(1 << 20):
            if size == 0:
                head = chunk[:16]
                if head == SQLITE_MAGIC or name.endswith(SQLITE_SIDE_FILES):
                    keep = open(scratch / _scratch_name(name), "wb")
            digest.update(chunk)
            size += len(chunk)
            if keep is not None:
                keep.write(chunk)
    finally:
        if keep is not None:
            keep.close()
    if head == SQLITE_MAGIC:
        databases.append(name)
    found.files[name] = {"sha256": digest.hexdigest(), "size": size, "mode": mode}


@dataclass
class Backup:
    path: Path
    manifest: dict

    @property
    def profile(self) -> str:
        return self.manifest["profile"]


def read_plain_archive(path: Path, profile: str | None) -> tuple[dict, bytes]:
    """A scheduled backup from a host (`<profile>_<time>.tar.gz`, `.sha256` beside it): the
    manifest is made from the archive itself (checksum verified when the `.sha256` is there)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists() and sidecar.read_text().split()[:1] != [digest]:
        raise DayTwoError(f"{path} does not match {sidecar.name} (damaged or altered)")
    name = profile or path.name.split("_", 1)[0]
    found = inventory_of(path)
    created = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ({"schema": SCHEMA, "created": created, "host": "scheduled backup", "profile": name,
             "data_sha256": digest, "data_bytes": len(data), "files": found.files, "sqlite": found.sqlite,
             "problems": found.problems}, data)


def read_backup(path: str | Path, profile: str | None = None) -> tuple[dict, bytes]:
    """(manifest, data archive bytes) of a backup file, checksum verified."""
    path = Path(path)
    if path.name.endswith(".tar.gz"):
        return read_plain_archive(path, profile)
    try:
        with tarfile.open(path, "r:") as outer:
            names = outer.getnames()
            if sorted(names) != sorted([MANIFEST, DATA]):
                raise DayTwoError(f"{path} is not a hermes-infra backup (it holds {names[:5]})")
            manifest = json.loads(outer.extractfile(MANIFEST).read())
            data = outer.extractfile(DATA).read()
    except (tarfile.TarError, OSError, json.JSONDecodeError) as error:
        raise DayTwoError(f"{path} cannot be read as a hermes-infra backup: {error}") from None
    if manifest.get("schema") != SCHEMA:
        raise DayTwoError(f"{path}: unknown backup schema {manifest.get('schema')!r}")
    if hashlib.sha256(data).hexdigest() != manifest.get("data_sha256"):
        raise DayTwoError(f"{path}: {DATA} does not match the checksum in its manifest (damaged or altered)")
    return manifest, data


def write_backup(out_dir: Path, host: str, gateway: GatewaySettings, data_tmp: Path, manifest: dict) -> Path:
    stamp = manifest["created"].replace(":", "").replace("-", "")
    safe_host = "".join(c if c.isalnum() or c in "._-" else "_" for c in host)
    final = out_dir / f"{safe_host}_{gateway.name}_{stamp}{SUFFIX}"
    partial = final.with_name(final.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:", format=tarfile.PAX_FORMAT) as outer:
        text = json.dumps(manifest, indent=2, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode, info.mtime = len(text), 0o600, int(time.time())
        outer.addfile(info, io.BytesIO(text))
        info = tarfile.TarInfo(DATA)
        info.size, info.mode, info.mtime = data_tmp.stat().st_size, 0o600, int(time.time())
        with open(data_tmp, "rb") as data:
            outer.addfile(info, data)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, final)
    return final


def prepare_out_dir(out_dir: str | Path) -> Path:
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


# ---------------------------------------------------------------------------- backup
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(remote: Remote, settings: HostSettings, gateway: GatewaySettings, result: str, message: str,
            archive: str = "", size: int = 0) -> None:
    """The run's result on the host (`manual_record_path`); `message` is a fixed text, never the host's."""
    remote.run(record_command(settings, gateway, {
        "profile": gateway.name, "kind": "manual", "result": result, "time": _now(), "archive": archive,
        "bytes": size, "message": message}))


def backup_gateway(host: HostTarget, gateway: GatewaySettings, remote: Remote, out_dir: Path,
                   say: Say = _say_default) -> Backup:
    """Back up one profile while its gateway runs (see `archive_command`). The result goes to the
    host's record whatever happens; a failed step, or a database copy failing its integrity check,
    is a failed backup (`DayTwoError`), never a good-looking one."""
    settings = host.settings
    started = time.monotonic()
    offsite_on = settings.scheduled_backups.offsite is not None
    say(f"{host.name}/{gateway.name}: copying {gateway.host_data_dir} online (the gateway keeps running)")
    fd, tmp_name = tempfile.mkstemp(prefix=".hermes-infra-", suffix=".tar.gz", dir=out_dir)
    data_tmp = Path(tmp_name)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as sink:
            def write(chunk: bytes) -> None:
                nonlocal size
                sink.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            result = remote.run(archive_command(gateway, settings.image.ref, keep_tar=offsite_on),
                                on_stdout=write)
        if result.rc not in (0, datatar.INTEGRITY_RC):
            why = datatar.describe_rc(result.rc)
            _record(remote, settings, gateway, "failed", why)
            raise DayTwoError(f"{host.name}/{gateway.name}: archiving {gateway.host_data_dir} failed "
                              f"({why}; exit {result.rc}): {clean(result.stderr, 1500)}")
    except BaseException:
        data_tmp.unlink(missing_ok=True)
        raise
    try:
        found = inventory_of(data_tmp)
        if found.problems:
            say(f"{host.name}/{gateway.name}: note: the data dir holds entries a restore will refuse: "
                + "; ".join(clean(p, 300) for p in found.problems[:5]))
        # Checked here again, on the copies the archive holds (not the live files), by the control machine.
        bad = {n: s["integrity"] for n, s in found.sqlite.items() if s["integrity"] != "ok"}
        manifest = {
            "schema": SCHEMA, "created": _now(),
            "host": host.name, "profile": gateway.name, "data_dir": gateway.host_data_dir,
            "uid": gateway.uid, "gid": gateway.gid, "image": settings.image.ref,
            "consistency": "online: each SQLite database copied with SQLite's backup API while the gateway ran",
            "downtime_seconds": 0,
            "left_out": {rule.pattern: rule.reason for rule in datatar.LEFT_OUT},
            "data_sha256": digest.hexdigest(), "data_bytes": size,
            "files": found.files, "links": found.links, "dirs": found.dirs, "others": found.others,
            "sqlite": found.sqlite, "problems": found.problems,
        }
        path = write_backup(out_dir, host.name, gateway, data_tmp, manifest)
    finally:
        data_tmp.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    tables = sum(len(s["tables"]) for s in found.sqlite.values())
    say(f"{host.name}/{gateway.name}: {path} ({size / 1e6:.1f} MB, {len(found.files)} files, "
        f"{len(found.sqlite)} SQLite databases with {tables} tables, {seconds:.1f}s)")
    if bad or result.rc == datatar.INTEGRITY_RC:
        why = datatar.REASONS[datatar.INTEGRITY_RC]
        if offsite_on:
            # A damaged database never goes off the host as a good snapshot.
            remote.run(f"rm -f -- {shlex.quote(offsite_tar_path(gateway))}")
        _record(remote, settings, gateway, "failed", why, path.name, size)
        remote.run(audit_command(audit_record("backup", settings, "failed", False, seconds,
                                              f"backup of {gateway.name}: {why}")))
        raise DayTwoError(f"{host.name}/{gateway.name}: {why}: {clean(bad, 1000) if bad else 'on the host'}. "
                          f"The archive is kept as {path} for inspection, but it is not a good backup. Fix: look at "
                          f"hermes-infra logs {host.name} --profile {gateway.name}; if the live database is damaged, "
                          "restore an earlier backup")
    _record(remote, settings, gateway, "success", "archived online, every database copy checked", path.name, size)
    remote.run(audit_command(audit_record("backup", settings, "ok", False, seconds,
                                          f"backup of {gateway.name} ({len(found.files)} files)")))
    if offsite_on:
        send_offsite(host, gateway, remote, say)
    return Backup(path, manifest)


def send_offsite(host: HostTarget, gateway: GatewaySettings, remote: Remote, say: Say) -> None:
    """The checked backup's tar to the off-host repository (`offsite.UPLOAD`, which records the
    result on the host); the tar is removed whatever happens. A failed upload fails the command."""
    from hermes_infra.plan import offsite

    kept = shlex.quote(offsite_tar_path(gateway))
    say(f"{host.name}/{gateway.name}: sending it to the off-host repository (restic)")
    sent = remote.run(f"{offsite.upload_command(gateway.name, 'manual', kept)}; rc=$?; rm -f -- {kept}; exit $rc")
    if sent.rc != 0:
        raise DayTwoError(f"{host.name}/{gateway.name}: the local backup is good, but the off-host upload failed: "
                          f"{clean(sent.stderr, 500)}. Fix: hermes-infra status {host.name} shows the recorded "
                          f"reason; restic's messages are in {offsite.record_dir(host.settings)}/{gateway.name}"
                          ".restic.log on the host")
    say(f"{host.name}/{gateway.name}: off-host snapshot made, pruned and checked")


def audit_record(command: str, settings: HostSettings, result: str, changed: bool, seconds: float,
                 message: str):
    """One line of the audit log (`hermes_infra.release.audit.AuditRecord`: the deploy's format)."""
    from hermes_infra.release.audit import AuditRecord

    return AuditRecord(command=command, result="success" if result == "ok" else "failed",
                       image=settings.image.ref, changed=(message,) if changed else (), seconds=seconds,
                       message=message)


def backup(hosts: list[HostTarget], profile: str | None, out_dir: str | Path, say: Say = _say_default,
           remote_for=open_remote) -> list[Backup]:
    """Back up each chosen profile of each host (one connection per host, hosts one after another)."""
    out = prepare_out_dir(out_dir)
    made = []
    for host in hosts:
        gateways = host.gateways(profile)
        remote = remote_for(host)
        try:
            with deploy_lock(host, remote, "backup"):
                for gateway in gateways:
                    made.append(backup_gateway(host, gateway, remote, out, say))
        finally:
            remote.close()
    return made


# --------------------------------------------------------------------------- restore
@dataclass
class RestoreResult:
    host: str
    profile: str
    deployed: bool
    moved_aside: str | None
    seconds: float
    files: int


def _decode(raw: bytes) -> str:
    # As tarfile decodes member names on POSIX, so the same bytes give the same name.
    return raw.decode("utf-8", "surrogateescape")


def compare_files(manifest: dict, verify_output: bytes, marker: str) -> list[str]:
    """What differs between the manifest and `verify_command`'s NUL-separated output."""
    records = verify_output.split(b"\0")
    try:
        split = records.index(marker.encode())
    except ValueError:
        return ["the check of the restored files did not finish"]
    found = {}
    for record in records[:split]:
        digest, sep, name = record.partition(b"  ")
        if sep and len(digest) == 64:
            found[_member_name(_decode(name))] = digest.decode("ascii", "replace")
    owners = [_member_name(_decode(r)) for r in records[split + 1:] if r]
    wanted = {name: info["sha256"] for name, info in manifest["files"].items()}

    def shown(name: str) -> str:
        return clean(repr(name), 300)

    problems = [f"{shown(name)}: missing after unpacking" for name in sorted(set(wanted) - set(found))]
    problems += [f"{shown(name)}: sha256 differs" for name in sorted(set(wanted) & set(found))
                 if wanted[name] != found[name]]
    problems += [f"{shown(name)}: not in the backup" for name in sorted(set(found) - set(wanted))]
    problems += [f"{shown(name) if name else '.'}: not owned by the data dir's owner" for name in owners]
    return problems


def manifest_mismatch(manifest: dict, found: Inventory) -> list[str]:
    """Files the manifest promises that the archive does not hold as it says (checked before
    anything on the host changes)."""
    wanted = {name: info.get("sha256") for name, info in (manifest.get("files") or {}).items()}
    have = {name: info["sha256"] for name, info in found.files.items()}
    problems = [f"{clean(repr(n), 300)}: in the manifest, not in the archive" for n in sorted(set(wanted) - set(have))]
    problems += [f"{clean(repr(n), 300)}: in the archive, not in the manifest" for n in sorted(set(have) - set(wanted))]
    problems += [f"{clean(repr(n), 300)}: sha256 differs from the manifest" for n in sorted(set(wanted) & set(have))
                 if wanted[n] != have[n]]
    return problems


def choose_gateway(host: HostTarget, manifest: dict, profile: str | None) -> GatewaySettings:
    name = profile or manifest["profile"]
    return host.gateways(name)[0]


def checked_archive(archive: str | Path, profile: str | None) -> tuple[dict, bytes, str]:
    """(manifest, re-packed data, its sha256) of a backup file, every member checked; raises
    before anything on a host changes when one is unsafe."""
    manifest, data = read_backup(archive, profile)
    problems = manifest.get("problems") or []
    # Only what Python checked travels, in headers Python wrote (GNU tar and tarfile disagree on
    # damaged or doubled headers): the upload is this re-packed archive, never the file's bytes.
    with tempfile.NamedTemporaryFile(suffix=".tar.gz") as check, tempfile.TemporaryFile() as normalized:
        check.write(data)
        check.flush()
        found = inventory_of(Path(check.name), repack=normalized)
        problems = found.problems or problems or manifest_mismatch(manifest, found)
        normalized.seek(0)
        data = normalized.read()
    if problems:
        raise DayTwoError(f"{archive}: refusing to restore: " + "; ".join(clean(p, 400) for p in problems[:10]))
    return manifest, data, hashlib.sha256(data).hexdigest()


def restore(host: HostTarget, archive: str | Path | None, *, profile: str | None = None, force: bool = False,
            say: Say = _say_default, remote_for=open_remote, deploy: Callable[[commands.Target], int] | None = None,
            fetch: Callable[[Remote], Path] | None = None) -> RestoreResult:
    """Restore one backup onto one host (see module doc). Refuses before any change when the data
    dir holds state and `force` is not given, or when the archive holds anything unsafe.

    `fetch` (instead of `archive`): brings the backup file to the control machine once the host
    is deployed (an off-host repository is reached from the host, with the host's credentials);
    it is checked the same way before the gateway is stopped."""
    started = time.monotonic()
    if archive is not None:
        manifest, data, data_sha256 = checked_archive(archive, profile)
        gateway = choose_gateway(host, manifest, profile)
    else:
        gateway = host.gateways(profile)[0] if profile else host.gateways()[0]
    settings = host.settings
    remote = remote_for(host)
    deployed = False
    try:
        probe = dict(line.split("=", 1) for line in remote.run(probe_command(settings, gateway)).text.split()
                     if "=" in line)
        datadir = probe.get("datadir", "missing")
        if datadir in ("symlink", "notdir"):
            raise DayTwoError(f"{host.name}: {gateway.host_data_dir} is a {datadir}; hermes-infra does not follow "
                              "or replace it. Fix: move it away, then restore again")
        if datadir == "full" and not force:
            raise DayTwoError(
                f"{host.name}: {gateway.host_data_dir} already holds a gateway's state; a restore would replace it. "
                f"Nothing was changed. Fix: back it up first (hermes-infra backup {host.name} --profile "
                f"{gateway.name}), then restore with --force (the old dir is kept as "
                f"{gateway.host_data_dir}.pre-restore-<time>)")
        if probe.get("compose") != "present" or probe.get("container") == "missing":
            if host.target is None:
                raise DayTwoError(f"{host.name}: the gateway is not deployed and no target to deploy it with")
            say(f"{host.name}: {gateway.service_name} is not deployed yet: deploying first (hermes-infra up)")
            code = (deploy or up)(host.target)
            if code != 0:
                raise DayTwoError(f"{host.name}: the deploy before the restore failed (exit {code}); nothing restored")
            deployed = True
        if fetch is not None:
            manifest, data, data_sha256 = checked_archive(fetch(remote), gateway.name)
        # After the deploy (which takes the lock itself), before the gateway is stopped.
        with deploy_lock(host, remote, "restore"):
            return _restore_locked(host, gateway, remote, manifest, data, data_sha256, datadir, deployed, started,
                                   say)
    finally:
        remote.close()


def _restore_locked(host: HostTarget, gateway: GatewaySettings, remote: Remote, manifest: dict, data: bytes,
                    data_sha256: str, datadir: str, deployed: bool, started: float, say: Say) -> RestoreResult:
    settings = host.settings
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = f"{gateway.host_data_dir}.pre-restore-{stamp}"
    say(f"{host.name}/{gateway.name}: stopping {gateway.service_name}")
    stopped = remote.run(stop_command(settings, gateway))
    if stopped.rc != 0:
        raise DayTwoError(f"{host.name}: could not stop {gateway.service_name}: {clean(stopped.text, 500)}")
    staged = f"{STAGE_DIR}/restore-{pysecrets.token_hex(8)}.tar.gz"
    uploaded = remote.run(upload_command(staged), stdin=data)
    if uploaded.rc != 0 or uploaded.text.strip() != data_sha256:
        raise DayTwoError(f"{host.name}: the upload arrived damaged or failed: {clean(uploaded.stderr, 300)}")
    say(f"{host.name}/{gateway.name}: unpacking {len(manifest['files'])} files into {gateway.host_data_dir} "
        f"as uid {gateway.uid}")
    unpacked = remote.run(unpack_command(gateway, staged, aside))
    remote.run(f"rm -f -- {shlex.quote(staged)}")
    if unpacked.rc != 0:
        raise DayTwoError(f"{host.name}: unpacking failed: {clean(unpacked.text + unpacked.stderr, 1500)}. "
                          f"The previous data dir, if any, is {aside}")
    moved_aside = aside if datadir == "full" else None
    marker = f"@@hermes-infra-owners-{pysecrets.token_hex(16)}"
    mismatch = compare_files(manifest, remote.run(verify_command(gateway, marker)).stdout, marker)
    if mismatch:
        raise DayTwoError(f"{host.name}: the restored files differ from the backup: {'; '.join(mismatch[:10])}")
    if datadir in ("missing", "empty"):
        # Nothing, or only what the deploy just made (a fresh key): not worth keeping.
        remote.run(f"rm -rf -- {shlex.quote(aside)}")
    remote.run(prune_aside_command(gateway, settings.backup_keep))
    say(f"{host.name}/{gateway.name}: every file matches its sha256; starting and waiting for the health gate")
    started_gw = remote.run(start_command(settings, gateway))
    if started_gw.rc != 0:
        raise DayTwoError(f"{host.name}: restored, but the gateway is not healthy:\n"
                          f"{clean(started_gw.text + started_gw.stderr, 3000)}")
    seconds = time.monotonic() - started
    # The manifest is whatever the archive says (a backup file can be edited): cleaned.
    origin = f"{clean(manifest.get('host'), 200)}/{clean(manifest.get('profile'), 80)}"
    created = clean(manifest.get("created"), 40)
    remote.run(audit_command(audit_record("restore", settings, "ok", True, seconds,
                                          f"restore of {origin} ({created}) into {gateway.name}")))
    say(f"{host.name}/{gateway.name}: restored {origin} from {created} in {seconds:.1f}s"
        + (f"; the previous data dir is kept as {moved_aside}" if moved_aside else ""))
    if gateway.api.key is not None:
        say(f"note: the settings set api.key for {gateway.name}; the next `up` replaces the restored key with it")
    return RestoreResult(host.name, gateway.name, deployed, moved_aside, seconds, len(manifest["files"]))

