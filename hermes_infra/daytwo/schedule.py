"""Scheduled backups on the host: a systemd timer that archives each profile's data dir and
keeps the newest N (`hermes-infra backup TARGET --schedule daily --keep 7`).

The host runs the same steps as `hermes-infra backup` (stop for a consistent copy, `tar` as the
data dir's owner from a directory entered without following a link, start; Docker's health
check and restart policy watch the gateway from there), writing `<backup_dir>/scheduled/<profile>/<profile>_<UTC time>.tar.gz` with a
`.sha256` beside it, 0600 in 0700 directories, root's. The script is written by hermes-infra
outside any data dir, holds no secret, and never executes anything from a data dir.
`hermes-infra restore TARGET FILE.tar.gz --profile P` restores such an archive (after copying
it to the control machine, e.g. with scp).
"""
from __future__ import annotations

import base64
import re
import shlex

from hermes_infra import safeio
from hermes_infra.daytwo.lifecycle import compose_base
from hermes_infra.daytwo.remote import DayTwoError, HostTarget, clean, open_remote
from hermes_infra.settings import HostSettings

SCRIPT = "/usr/local/sbin/hermes-infra-backup"
SERVICE = "/etc/systemd/system/hermes-infra-backup.service"
TIMER = "/etc/systemd/system/hermes-infra-backup.timer"
CALENDAR = re.compile(r"^[A-Za-z0-9:*,./~ -]{1,100}$")


def scheduled_dir(settings: HostSettings) -> str:
    return f"{settings.backup_dir.rstrip('/')}/scheduled"


def script_text(settings: HostSettings, profiles: list[str], keep: int) -> str:
    lines = ["#!/bin/sh", "# Managed by hermes-infra (hermes-infra backup --schedule): replaced on the next schedule.",
             "# Archives each gateway's data dir as its owner, keeps the newest archives. No secrets here.",
             "umask 077", "status=0", f"root={shlex.quote(scheduled_dir(settings))}",
             'mkdir -p "$root" && chmod 0700 "$root" || exit 1']
    for gateway in settings.gateways:
        if gateway.name not in profiles:
            continue
        service = shlex.quote(gateway.service_name)
        dest = f'"$root"/{shlex.quote(gateway.name)}'
        tar = f"{safeio.as_owner(gateway.uid, gateway.gid)} tar --numeric-owner --no-acls --no-xattrs -cf - ."
        lines += [
            f"# profile {gateway.name}",
            f"mkdir -p {dest} && chmod 0700 {dest} || exit 1",
            f"stamp=$(date -u +%Y%m%dT%H%M%SZ); out={dest}/{shlex.quote(gateway.name)}_$stamp.tar.gz",
            f"running=$(docker inspect --format '{{{{.State.Running}}}}' {service} 2>/dev/null)",
            f'[ "$running" = true ] && ( {compose_base(settings)} stop -t {int(gateway.stop_grace_seconds)} {service} )',
            f"( {safeio.chown_foreign_script(gateway.host_data_dir, gateway.uid, gateway.gid)} ) >/dev/null 2>&1",
            f'if ( {safeio.enter(gateway.host_data_dir)} && {tar} ) | gzip -1 > "$out.partial"; then '
            'mv "$out.partial" "$out" && ( cd "$(dirname "$out")" && sha256sum "$(basename "$out")" > "$out.sha256" ); '
            f'else rm -f "$out.partial"; status=1; echo "backup of {gateway.name} failed" >&2; fi',
            f'[ "$running" = true ] && ( {compose_base(settings)} start {service} )',
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


def _put(path: str, text: str, mode: str) -> str:
    encoded = base64.b64encode(text.encode()).decode()
    return (f"printf %s {encoded} | base64 -d > {shlex.quote(path)}.tmp && chmod {mode} {shlex.quote(path)}.tmp && "
            f"mv -f {shlex.quote(path)}.tmp {shlex.quote(path)}")


def install_command(settings: HostSettings, profiles: list[str], calendar: str, keep: int) -> str:
    if not CALENDAR.match(calendar):
        raise DayTwoError(f"--schedule {calendar!r} is not a systemd calendar expression. "
                          "Fix: daily, weekly, hourly or e.g. '*-*-* 03:30'")
    steps = [f"systemd-analyze calendar {shlex.quote(calendar)} >/dev/null",
             _put(SCRIPT, script_text(settings, profiles, keep), "0700")]
    steps += [_put(path, text, "0644") for path, text in units(calendar).items()]
    steps += ["systemctl daemon-reload", "systemctl enable --now hermes-infra-backup.timer",
              "systemctl list-timers hermes-infra-backup.timer --no-pager | sed -n 2p"]
    return " && ".join(steps)


def remove_command() -> str:
    return (f"systemctl disable --now hermes-infra-backup.timer 2>/dev/null; rm -f {SERVICE} {TIMER} {SCRIPT}; "
            "systemctl daemon-reload")


def schedule(hosts: list[HostTarget], profile: str | None, calendar: str | None, keep: int, say=print,
             remote_for=open_remote) -> int:
    """Install (calendar given) or remove (None) the backup timer on every host."""
    code = 0
    for host in hosts:
        profiles = [g.name for g in host.gateways(profile)]
        command = remove_command() if calendar is None else install_command(host.settings, profiles, calendar, keep)
        remote = remote_for(host)
        try:
            result = remote.run(command, timeout=120)
        finally:
            remote.close()
        if result.rc != 0:
            code = 1
            say(f"{host.name}: FAILED: {clean(result.text + result.stderr, 600)}")
        elif calendar is None:
            say(f"{host.name}: scheduled backups removed (archives in {scheduled_dir(host.settings)} are kept)")
        else:
            say(f"{host.name}: backups of {', '.join(profiles)} {calendar}, newest {keep} kept in "
                f"{scheduled_dir(host.settings)}; next: {clean(result.text.strip(), 200)}")
    return code
