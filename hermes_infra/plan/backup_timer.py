"""Scheduled backups on the host, as a setting (`scheduled_backups.schedule`): a systemd timer
runs a root script that archives each profile's data dir and keeps the newest N.

The script does what `hermes-infra backup` does, with the gateway running: every SQLite
database is copied with SQLite's online backup API as the data dir's owner in a one-off
container of the gateway's image, the rest goes with `tar` as the owner from a directory
entered without following a link (`datatar.online_archive_script`; live and derived files left
out by `datatar.LEFT_OUT`). It writes `<backup_dir>/scheduled/<profile>/<profile>_<UTC
time>.tar.gz` with a `.sha256` and the copies' integrity and row counts (`.databases.json`)
beside it, 0600 in 0700 directories, root's. Every step's exit status is checked; an archive
is named, counted and rotated only when all of them passed and it reads back, and each run's
result is recorded (`last_run_path`). The script is written by hermes-infra outside any data
dir, holds no secret and never executes anything from a data dir. `hermes-infra restore TARGET
FILE.tar.gz --profile P` restores such an archive (after copying it to the control machine).
"""
from __future__ import annotations

import shlex

from hermes_infra.host import lockcommands as lock
from hermes_infra.host import safeio
from hermes_infra.plan import datatar, offsite
from hermes_infra.settings.schema import HostSettings

SCRIPT = "/usr/local/sbin/hermes-infra-backup"
SERVICE = "/etc/systemd/system/hermes-infra-backup.service"
TIMER = "/etc/systemd/system/hermes-infra-backup.timer"
TIMER_UNIT = "hermes-infra-backup.timer"
PATHS = (SCRIPT, SERVICE, TIMER)


LOCK_WAIT_SECONDS = 900
"""How long a scheduled run waits for a deploy holding the deploy lock before it gives up (and
records a skipped run): deploys take minutes; tomorrow's run comes anyway."""


def scheduled_dir(settings: HostSettings) -> str:
    return f"{settings.backup_dir.rstrip('/')}/scheduled"


def last_run_path(settings: HostSettings, profile: str) -> str:
    """Where the script records a profile's last run (root's, beside the profile's archives), as
    one JSON object: profile, kind (`scheduled`), result (`success`, `failed`, `skipped`), time,
    archive, bytes, message (a fixed text: the reason of a failure). `status` shows it, the
    alerts watchdog reads it."""
    return f"{scheduled_dir(settings)}/{profile}.last.json"


_PRELUDE = r"""now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
# record PROFILE RESULT MESSAGE [ARCHIVE [SIZE]]: the last run, replaced at once (rename). Every value is
# a fixed text of this script or a checked profile name: nothing from a data dir.
# SIZE is the archive's bytes (0 when none was kept).
record() {
  printf '{"archive": "%s", "bytes": %s, "kind": "scheduled", "message": "%s", "profile": "%s", "result": "%s", "time": "%s"}\n' \
    "${4:-}" "${5:-0}" "$3" "$1" "$2" "$(now)" > "$root/$1.last.json.new" && mv -f -- "$root/$1.last.json.new" "$root/$1.last.json"
}
fail() { status=1; echo "hermes-infra-backup: $1: $2" >&2; record "$1" failed "$2"; }"""

# info.json of the timer's lock, in the deploy's format (`lock.Holder.info`, keys sorted).
_LOCK_INFO = (r"""'{"heartbeat": "%s", "machine": "%s", "message": "scheduled backup (hermes-infra-backup.service)", """
              r""""pid": %s, "revision": null, "time": "%s", "who": "backup-timer@%s"}\n'""")
_HOLDER = "timer-$$"


def _lock_lines(profiles: str, lock_dir: str, wait: int) -> list[str]:
    """Take the deploy lock the way `hermes-infra up` does (its atomic mkdir, an info.json, a
    holder file the heartbeat touches), so a deploy and a scheduled backup never overlap; when a
    deploy keeps it past `wait` seconds, every profile's run is recorded as skipped."""
    info_line = f'"$(printf {_LOCK_INFO} "$(now)" "$machine" "$$" "$(now)" "$machine")"'
    return [
        "machine=$(uname -n | tr -cd 'A-Za-z0-9.-')",
        f"take_lock() {{ {lock.take_script(lock_dir, info_line, _HOLDER)}; }}",
        "locked=; waited=0",
        "while :; do case $(take_lock) in acquired*) locked=1; break ;; esac; "
        f'[ "$waited" -ge {int(wait)} ] && break; sleep 10; waited=$((waited + 10)); done',
        'if [ -z "$locked" ]; then',
        "  echo 'hermes-infra-backup: the deploy lock is held (a deploy, rollback or day-two command); "
        "nothing backed up' >&2",
        f"  for p in {profiles}; do record \"$p\" skipped 'the deploy lock was held; no backup made'; done; exit 1",
        "fi",
        f"( while sleep {lock.HEARTBEAT_SECONDS}; do {lock.heartbeat_script(lock_dir, _HOLDER)} | grep -q ok || exit; "
        "done ) >/dev/null 2>&1 & beat=$!",
        f"drop_lock() {{ kill \"$beat\" 2>/dev/null; {lock.release_script(lock_dir, _HOLDER)} >/dev/null; }}",
        "trap drop_lock EXIT",
        "trap 'exit 143' TERM INT HUP",
    ]


def _reason_lines() -> list[str]:
    """`why` from the archive step's exit code: fixed texts (`datatar.REASONS`), never tar's words."""
    cases = [f"    {rc}) why={shlex.quote(text)} ;;" for rc, text in sorted(datatar.REASONS.items())]
    return ['  case "$rc" in', "    0) ;;", *cases, "    *) why=\"the archive step failed (exit $rc)\" ;;", "  esac"]


def _profile_lines(settings: HostSettings, gateway, keep: int) -> list[str]:
    name = shlex.quote(gateway.name)
    dest = f'"$root"/{name}'
    archive = datatar.online_archive_script(gateway.host_data_dir, gateway.uid, gateway.gid, gateway.name,
                                            gateway.service_name, settings.image.ref, '"$w"')
    return [
        f"# profile {gateway.name}",
        f"mkdir -p {dest} && chmod 0700 {dest} || exit 1",
        f"stamp=$(date -u +%Y%m%dT%H%M%SZ); out={dest}/{name}_$stamp.tar.gz; base=${{out##*/}}; why=; size=",
        f"( {safeio.chown_foreign_script(gateway.host_data_dir, gateway.uid, gateway.gid)} ) >/dev/null 2>&1",
        # The gateway keeps running: its databases are copied online (datatar.online_archive_script).
        f'if w=$(mktemp -d "$root/.work-{gateway.name}.XXXXXX"); then',
        f'  ( {archive} ) > "$out.partial"; rc=$?',
        *_reason_lines(),
        # Read back before it gets its name: only verified archives are named, so count and rotate.
        "  if [ -z \"$why\" ] && ! tar -tzf \"$out.partial\" >/dev/null 2>&1; then why='the archive does not read back'; fi",
        '  if [ -z "$why" ] && ! ( cd "${out%/*}" && mv -f -- "$w/databases.json" "$base.databases.json" && '
        'mv -- "$base.partial" "$base" && sha256sum -- "$base" > "$base.sha256.new" && '
        'mv -f -- "$base.sha256.new" "$base.sha256" ); then why=\'the archive could not be stored\'; fi',
        f"else w=; why={shlex.quote(datatar.REASONS[datatar.WORK_DIR_RC])}; fi",
        'if [ -n "$why" ]; then',
        f'  rm -f -- "$out.partial" "$out.databases.json"; fail {name} "$why"',
        "else",
        '  size=$(stat -c %s -- "$out" 2>/dev/null)',
        f"  record {name} success 'archived online, every database copy checked, read back' \"$base\" \"$size\"",
        # Rotation only after a verified success: a failed run never deletes a good archive.
        f"  ls -1t {dest}/*.tar.gz 2>/dev/null | tail -n +{int(keep) + 1} | while IFS= read -r old; do "
        'rm -f -- "$old" "$old.sha256" "$old.databases.json"; done',
        *_offsite_lines(settings, gateway),
        "fi",
        # The work dir held the uncompressed tar until the upload was done with it.
        'if [ -n "$w" ]; then rm -rf -- "$w"; fi',
    ]


def _offsite_lines(settings: HostSettings, gateway) -> list[str]:
    """Only a verified, stored archive goes off the host: its uncompressed tar (`$w/data.tar`,
    root's, in the root-only work dir), which restic deduplicates run after run. A failed upload
    fails the run (the upload records why)."""
    if settings.scheduled_backups.offsite is None:
        return []
    return [f"  {offsite.upload_command(gateway.name, 'scheduled', chr(34) + '$w/data.tar' + chr(34))} || status=1"]


def script_text(settings: HostSettings, keep: int, lock_dir: str = lock.LOCK_DIR,
                lock_wait: int = LOCK_WAIT_SECONDS) -> str:
    """The root script the timer runs: the deploy lock, then each profile archived, read back,
    named, rotated and recorded (`last_run_path`); exit 1 when any profile failed or was
    skipped, so systemd marks the run failed."""
    profiles = " ".join(shlex.quote(g.name) for g in settings.gateways)
    lines = ["#!/bin/sh", "# Managed by hermes-infra (setting scheduled_backups): replaced by each deploy.",
             "# Archives each gateway's data dir as its owner, keeps the newest archives. No secrets here.",
             "umask 077", "status=0", f"root={shlex.quote(scheduled_dir(settings))}",
             'mkdir -p "$root" && chmod 0700 "$root" || exit 1', _PRELUDE]
    lines += _lock_lines(profiles, lock_dir, lock_wait)
    # Work dirs of a run that was killed (under the lock, no other run can be using one).
    lines.append('rm -rf -- "$root"/.work-*')
    for gateway in settings.gateways:
        lines += _profile_lines(settings, gateway, keep)
    lines.append("exit $status")
    return "\n".join(lines) + "\n"


def units(calendar: str) -> dict[str, str]:
    return {
        SERVICE: ("[Unit]\nDescription=hermes-infra: back up the Hermes data dirs\nAfter=docker.service\n\n"
                  f"[Service]\nType=oneshot\nExecStart={SCRIPT}\nNice=10\nIOSchedulingClass=idle\n"),
        TIMER: ("[Unit]\nDescription=hermes-infra: scheduled backups of the Hermes data dirs\n\n"
                f"[Timer]\nOnCalendar={calendar}\nPersistent=true\nRandomizedDelaySec=15min\n\n"
                "[Install]\nWantedBy=timers.target\n"),
    }
