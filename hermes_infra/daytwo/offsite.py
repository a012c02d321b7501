"""`hermes-infra backup list TARGET` and `hermes-infra restore NEW_TARGET --from offsite[:SNAPSHOT]`:
the off-host restic repository (setting `scheduled_backups.offsite`), read through the host.

Both run restic on the host through its wrapper (`offsite.RESTIC`: the repository, password and
credentials come from the root 0600 env file the deploy wrote, never from a command line), so
the control machine never holds the repository's secrets outside the settings. A restore onto a
fresh host deploys it first (the settings give it the same repository), then streams the
snapshot's tar (`restic dump`) to the control machine, where it goes through exactly the checks
of any other restore (`backup.checked_archive`: every member checked and re-packed), and then
the same stop, unpack as the owner, sha256 verification, start and health gate.

Everything restic answers is data: parsed as JSON, each field checked, cleaned before it is shown.
"""
from __future__ import annotations

import gzip
import json
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hermes_infra.daytwo import backup as backup_module
from hermes_infra.daytwo.remote import DayTwoError, HostTarget, Remote, clean, open_remote
from hermes_infra.plan import offsite
from hermes_infra.settings.schema import HostSettings

FROM_OFFSITE = re.compile(r"offsite(?::([0-9a-f]{8,64}|latest))?")
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,38}")
SNAPSHOT_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@dataclass(frozen=True)
class Snapshot:
    id: str
    time: str
    host: str
    profile: str
    source: str
    bytes: int | None

    @property
    def short_id(self) -> str:
        return self.id[:8]


def _require(settings: HostSettings, name: str) -> None:
    if settings.scheduled_backups.offsite is None:
        raise DayTwoError(f"{name}: its settings have no scheduled_backups.offsite, so there is no off-host "
                          "repository to read. Fix: set scheduled_backups.offsite (repository, password, "
                          "credentials) for this host, then hermes-infra up")


def snapshots_command(host_filter: str | None = None) -> str:
    where = f" --host {shlex.quote(host_filter)}" if host_filter else ""
    return f"{offsite.RESTIC} snapshots --json --tag {offsite.TAG}{where} 2>/dev/null"


def _tag(tags: list, key: str) -> str | None:
    for tag in tags:
        if isinstance(tag, str) and tag.startswith(key + "="):
            return tag[len(key) + 1:]
    return None


def parse_snapshots(text: str) -> list[Snapshot]:
    """restic's `snapshots --json`, field by field: an entry that is not what hermes-infra wrote
    (no hex id, no time, no profile tag that is a profile name) is left out."""
    try:
        entries = json.loads(text or "[]")
    except json.JSONDecodeError:
        raise DayTwoError("restic's list of snapshots is not JSON") from None
    found = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        sid, when, tags = entry.get("id"), entry.get("time"), entry.get("tags") or []
        if not isinstance(sid, str) or not offsite.SNAPSHOT_ID.fullmatch(sid) or not isinstance(when, str) \
                or not SNAPSHOT_TIME.match(when) or not isinstance(tags, list):
            continue
        profile = _tag(tags, "profile")
        if profile is None or not PROFILE_NAME.fullmatch(profile):
            continue
        summary = entry.get("summary") if isinstance(entry.get("summary"), dict) else {}
        size = summary.get("total_bytes_processed")
        found.append(Snapshot(id=sid, time=when[:19] + "Z", host=clean(entry.get("hostname"), 120),
                              profile=profile, source=clean(_tag(tags, "source") or "-", 20),
                              bytes=size if isinstance(size, int) and not isinstance(size, bool) else None))
    return sorted(found, key=lambda s: s.time)


def list_snapshots(host: HostTarget, remote_for=open_remote, all_hosts: bool = False) -> list[Snapshot]:
    """The repository's snapshots of this host (every host's with `all_hosts`), oldest first."""
    _require(host.settings, host.name)
    remote = remote_for(host)
    try:
        result = remote.run(snapshots_command(None if all_hosts else offsite.restic_host(host.name)), timeout=600)
    finally:
        remote.close()
    if result.rc != 0:
        raise DayTwoError(f"{host.name}: restic could not list the repository's snapshots (exit {result.rc}). Fix: "
                          f"hermes-infra up {host.name} (it installs restic and its settings), check the repository's "
                          "address and credentials")
    return parse_snapshots(result.text)


def render_snapshots(snapshots: list[Snapshot]) -> str:
    from hermes_infra.daytwo.status import human_bytes

    rows = [("TIME", "ID", "HOST", "PROFILE", "SOURCE", "SIZE")]
    rows += [(s.time, s.short_id, s.host, s.profile, s.source, human_bytes(s.bytes)) for s in snapshots]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines) + "\n" + ("" if snapshots else "no snapshots\n")


def choose_snapshot(snapshots: list[Snapshot], profile: str, wanted: str | None) -> Snapshot:
    """The snapshot to restore: the one named (by id or its prefix), else the newest of the
    profile; refused when the newest could be from several hosts (which one is meant?)."""
    mine = [s for s in snapshots if s.profile == profile]
    if wanted not in (None, "latest"):
        chosen = [s for s in snapshots if s.id.startswith(wanted)]
        if len(chosen) != 1:
            raise DayTwoError(f"no single snapshot {wanted} in the repository ({len(chosen)} match). Fix: an id from "
                              "hermes-infra backup list TARGET --all-hosts")
        if chosen[0].profile != profile:
            raise DayTwoError(f"snapshot {wanted} is of profile {chosen[0].profile}, not {profile}. Fix: --profile "
                              f"{chosen[0].profile}, or a snapshot of {profile}")
        return chosen[0]
    if not mine:
        raise DayTwoError(f"the repository holds no snapshot of profile {profile}. Fix: hermes-infra backup list "
                          "TARGET --all-hosts shows what it holds")
    hosts = sorted({s.host for s in mine})
    if len(hosts) > 1:
        raise DayTwoError(f"the repository holds snapshots of {profile} from several hosts ({', '.join(hosts)}). "
                          f"Fix: name one: --from offsite:ID (hermes-infra backup list TARGET --all-hosts)")
    return mine[-1]


def dump_command(snapshot: Snapshot) -> str:
    name = offsite.snapshot_filename(snapshot.profile)
    return f"{offsite.RESTIC} dump {shlex.quote(snapshot.id)} {shlex.quote('/' + name)}"


def parse_from(value: str) -> str | None:
    """`offsite` or `offsite:SNAPSHOT` (an id, a prefix of 8+ hex digits, or `latest`)."""
    match = FROM_OFFSITE.fullmatch(value or "")
    if not match:
        raise DayTwoError(f"--from {value!r} is not offsite or offsite:SNAPSHOT. Fix: --from offsite (the newest) or "
                          "--from offsite:ID with an id from hermes-infra backup list TARGET")
    return match.group(1)


def fetcher(host: HostTarget, profile: str, wanted: str | None, workdir: Path, say=backup_module._say_default):
    """The `fetch` of `backup.restore`: list, choose, dump the snapshot's tar from the host into a
    private file here, gzip it as a backup file (`<profile>_offsite-<id>.tar.gz`)."""

    def fetch(remote: Remote) -> Path:
        if remote.run(probe_command()).text.strip() != "offsite=present":
            raise DayTwoError(f"{host.name}: restic and the off-host settings are not on the host (deployed before "
                              f"scheduled_backups.offsite was set?); nothing was changed. Fix: hermes-infra up "
                              f"{host.name}, then restore again")
        listed = remote.run(snapshots_command(), timeout=600)
        if listed.rc != 0:
            raise DayTwoError(f"{host.name}: restic could not list the repository (exit {listed.rc}); nothing was "
                              "changed. Fix: check scheduled_backups.offsite (repository, password, credentials)")
        snapshot = choose_snapshot(parse_snapshots(listed.text), profile, wanted)
        say(f"{host.name}/{profile}: fetching off-host snapshot {snapshot.short_id} of {snapshot.host}/"
            f"{snapshot.profile} from {snapshot.time}")
        raw = workdir / "snapshot.tar"
        with open(raw, "xb") as sink:
            result = remote.run(dump_command(snapshot), on_stdout=sink.write, timeout=4 * 3600)
        if result.rc != 0:
            raise DayTwoError(f"{host.name}: restic dump of snapshot {snapshot.short_id} failed (exit {result.rc}); "
                              "nothing was changed")
        packed = workdir / f"{profile}_offsite-{snapshot.short_id}.tar.gz"
        with open(raw, "rb") as source, gzip.open(packed, "xb", compresslevel=1) as target:
            shutil.copyfileobj(source, target, 1 << 20)
        raw.unlink()
        return packed

    return fetch


def probe_command() -> str:
    return f"[ -x {offsite.RESTIC} ] && [ -f {offsite.ENV_FILE} ] && echo offsite=present || echo offsite=missing"


def restore_from_offsite(host: HostTarget, wanted: str | None, *, profile: str | None = None, force: bool = False,
                         say=backup_module._say_default, remote_for=open_remote, deploy=None):
    """Restore a profile's data dir from the off-host repository alone (see module doc). A fresh
    host is deployed by `backup.restore` first (it probes the data dir before, so the deploy's
    seed files do not count as state), and the deploy installs restic and its settings."""
    _require(host.settings, host.name)
    gateway = host.gateways(profile)[0]
    with tempfile.TemporaryDirectory(prefix="hermes-infra-offsite-") as scratch:
        Path(scratch).chmod(0o700)
        return backup_module.restore(host, None, profile=gateway.name, force=force, say=say, remote_for=remote_for,
                                     deploy=deploy, fetch=fetcher(host, gateway.name, wanted, Path(scratch), say))
