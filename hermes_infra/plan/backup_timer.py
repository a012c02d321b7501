"""Scheduled backups on the host, as a setting (`scheduled_backups.schedule`): a systemd timer
runs a root script that archives each profile's data dir and keeps the newest N.

The script does what `hermes-infra backup` does (stop for a consistent copy, `tar` as the data
dir's owner from a directory entered without following a link, start again; Docker's health
check and restart policy watch the gateway from there), writing
`<backup_dir>/scheduled/<profile>/<profile>_<UTC time>.tar.gz` with a `.sha256` beside it, 0600
in 0700 directories, root's. It is written by hermes-infra outside any data dir, holds no
secret and never executes anything from a data dir. `hermes-infra restore TARGET FILE.tar.gz
--profile P` restores such an archive (after copying it to the control machine).
"""
from __future__ import annotations

import shlex

from hermes_infra.host import safeio
from hermes_infra.plan import compose
from hermes_infra.settings.schema import HostSettings

SCRIPT = "/usr/local/sbin/hermes-infra-backup"
SERVICE = "/etc/systemd/system/hermes-infra-backup.service"
TIMER = "/etc/systemd/system/hermes-infra-backup.timer"
TIMER_UNIT = "hermes-infra-backup.timer"
PATHS = (SCRIPT, SERVICE, TIMER)


def scheduled_dir(settings: HostSettings) -> str:
    return f"{settings.backup_dir.rstrip('/')}/scheduled"


def script_text(settings: HostSettings, keep: int) -> str:
    compose_base = compose.compose_command(settings.project_dir, compose.MAIN_PROJECT)
    lines = ["#!/bin/sh", "# Managed by hermes-infra (setting scheduled_backups): replaced by each deploy.",
             "# Archives each gateway's data dir as its owner, keeps the newest archives. No secrets here.",
             "umask 077", "status=0", f"root={shlex.quote(scheduled_dir(settings))}",
             'mkdir -p "$root" && chmod 0700 "$root" || exit 1']
    for gateway in settings.gateways:
        service = shlex.quote(gateway.service_name)
        dest = f'"$root"/{shlex.quote(gateway.name)}'
        tar = f"{safeio.as_owner(gateway.uid, gateway.gid)} tar --numeric-owner --no-acls --no-xattrs -cf - ."
        lines += [
            f"# profile {gateway.name}",
            f"mkdir -p {dest} && chmod 0700 {dest} || exit 1",
            f"stamp=$(date -u +%Y%m%dT%H%M%SZ); out={dest}/{shlex.quote(gateway.name)}_$stamp.tar.gz",
            f"running=$(docker inspect --format '{{{{.State.Running}}}}' {service} 2>/dev/null)",
            f'[ "$running" = true ] && ( {compose_base} stop -t {int(gateway.stop_grace_seconds)} {service} )',
            f"( {safeio.chown_foreign_script(gateway.host_data_dir, gateway.uid, gateway.gid)} ) >/dev/null 2>&1",
            f'if ( {safeio.enter(gateway.host_data_dir)} && {tar} ) | gzip -1 > "$out.partial"; then '
            'mv "$out.partial" "$out" && ( cd "$(dirname "$out")" && sha256sum "$(basename "$out")" > "$out.sha256" ); '
            f'else rm -f "$out.partial"; status=1; echo "backup of {gateway.name} failed" >&2; fi',
            f'[ "$running" = true ] && ( {compose_base} start {service} )',
            f"ls -1t {dest}/*.tar.gz 2>/dev/null | tail -n +{int(keep) + 1} | while read -r old; do "
            'rm -f -- "$old" "$old.sha256"; done',
        ]
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
