"""Off-host backups (setting `scheduled_backups.offsite`): every backup, scheduled and manual,
also sent to a restic repository, as files for the host: pure, from settings only.

What is sent is the archive's *uncompressed* tar (`datatar.online_archive_script` writes it
as `data.tar` before gzip: the database copies appended, the live files left out), piped to
`restic backup --stdin`. Measured with restic 0.14 on a 20 MB data dir (a SQLite database and
300 session files), two runs with 400 new rows and one new session between them: the second run
of the plain tar added 4.9 MB, the second run of the `.tar.gz` 9.2 MB (all of it: gzip's output
changes after the first changed byte, so restic's content-defined chunks never repeat); after
two runs the tar's repository was 12.5 MB, the `.tar.gz`'s 19.5 MB, and the gap grows with every
run. The staged tree itself would deduplicate a little better still, but it would have to be
unpacked by root from a tar the agent's files fill (links, names), and the restore would lose
the one checked path it has now: a tar, checked member by member on the control machine.

On the host (root's, outside every data dir; what leaves the settings leaves the host):
- `/etc/hermes-infra/offsite/env` (0600): RESTIC_REPOSITORY (with a REST server's user and
  password in it), RESTIC_PASSWORD_FILE, RESTIC_CACHE_DIR, AWS_ACCESS_KEY_ID and
  AWS_SECRET_ACCESS_KEY; `/etc/hermes-infra/offsite/password` (0600); for SFTP the private key
  (0600) and the server's host keys (`known_hosts`, the only keys trusted);
- `/usr/local/sbin/hermes-infra-restic` (0700): restic with that environment (read from the
  file, never passed as an argument) and, for SFTP, the ssh command; every day-two command runs
  restic through it;
- `/usr/local/sbin/hermes-infra-offsite PROFILE SOURCE TAR` (0700): one upload (init on first
  use, backup tagged with host and profile, `forget --prune` to the retention, `check`, every
  `read_data_every_days` a `check --read-data-subset`), each step's exit status checked, the
  result recorded in `<backup_dir>/offsite/<profile>.last.json` (and the last good one in
  `<profile>.good.json`), root's 0600 in a 0700 dir. restic's own messages go to
  `<profile>.restic.log` beside them (0600), never to the journal or the terminal.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hermes_infra.settings.schema import HostSettings, OffsiteSettings

PACKAGE = "restic"
CONFIG_DIR = "/etc/hermes-infra/offsite"
ENV_FILE = f"{CONFIG_DIR}/env"
PASSWORD_FILE = f"{CONFIG_DIR}/password"
SSH_KEY = f"{CONFIG_DIR}/sftp_key"
KNOWN_HOSTS = f"{CONFIG_DIR}/known_hosts"
RESTIC = "/usr/local/sbin/hermes-infra-restic"
UPLOAD = "/usr/local/sbin/hermes-infra-offsite"
CACHE_DIR = "/var/cache/hermes-infra/restic"
PATHS = (ENV_FILE, PASSWORD_FILE, SSH_KEY, KNOWN_HOSTS, RESTIC, UPLOAD)
SECRET_PATHS = (ENV_FILE, PASSWORD_FILE, SSH_KEY)
TAG = "hermes-infra"
SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")
SOURCES = ("scheduled", "manual")


def restic_host(name: str) -> str:
    """The host name snapshots carry (`--host`, tag `host=`): the inventory's name for the host,
    reduced to what a restic tag may hold (no comma, no space)."""
    cleaned = re.sub(r"[^A-Za-z0-9._@-]", "_", name)[:120]
    return cleaned or "host"


def snapshot_filename(profile: str) -> str:
    """The one file of each snapshot (`--stdin-filename`): restored with `restic dump ID /<name>`."""
    return f"{profile}.tar"


def record_dir(settings: HostSettings) -> str:
    return f"{settings.backup_dir.rstrip('/')}/offsite"


def last_run_path(settings: HostSettings, profile: str) -> str:
    """The last upload of a profile: profile, kind `offsite`, source (scheduled, manual), result
    (success, failed), time, snapshot, bytes (the tar's), bytes_added (new in the repository),
    message (a fixed text)."""
    return f"{record_dir(settings)}/{profile}.last.json"


def good_path(settings: HostSettings, profile: str) -> str:
    """The last successful upload of a profile (the same format); `status` shows its time and size."""
    return f"{record_dir(settings)}/{profile}.good.json"


def log_path(settings: HostSettings, profile: str) -> str:
    """restic's messages of a profile's last upload (the upload script's `$log`, 0600): where a
    failed upload's alert and `status` send the operator."""
    return f"{record_dir(settings)}/{profile}.restic.log"


def _known_hosts_name(offsite: OffsiteSettings) -> str:
    repo = offsite.parsed
    return f"[{repo.host}]:{repo.port}" if repo.port and repo.port != 22 else repo.host


def env_text(offsite: OffsiteSettings) -> str:
    """The env file (secrets in clear: root 0600 only). Values shell-quoted: the wrapper reads it
    with `.` and nothing else ever does."""
    repo = offsite.parsed
    password = offsite.rest_password.get_secret_value() if offsite.rest_password else None
    values = {"RESTIC_REPOSITORY": repo.url(offsite.rest_username, password),
              "RESTIC_PASSWORD_FILE": PASSWORD_FILE, "RESTIC_CACHE_DIR": CACHE_DIR}
    if offsite.aws_access_key_id is not None and offsite.aws_secret_access_key is not None:
        values["AWS_ACCESS_KEY_ID"] = offsite.aws_access_key_id.get_secret_value()
        values["AWS_SECRET_ACCESS_KEY"] = offsite.aws_secret_access_key.get_secret_value()
    lines = ["# Managed by hermes-infra (setting scheduled_backups.offsite): secrets, root 0600."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def ssh_command(offsite: OffsiteSettings) -> str:
    """restic's `sftp.command`: only the settings' host keys trusted, only the settings' key used,
    never a prompt. Paths and names only: nothing secret."""
    repo = offsite.parsed
    return (f"ssh -i {SSH_KEY} -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes "
            f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={KNOWN_HOSTS} -o GlobalKnownHostsFile=/dev/null "
            f"-o ServerAliveInterval=30 -p {repo.port or 22} {repo.user}@{repo.host} -s sftp")


def wrapper_text(offsite: OffsiteSettings) -> str:
    options = ""
    if offsite.parsed.scheme == "sftp":
        options = f"-o {shlex.quote('sftp.command=' + ssh_command(offsite))} "
    return ("#!/bin/sh\n# Managed by hermes-infra (setting scheduled_backups.offsite): restic on the off-host\n"
            "# repository. The password and credentials come from the env file, never from arguments.\n"
            f"set -a; . {ENV_FILE} || exit 1; set +a\n"
            f"exec restic {options}\"$@\"\n")


def forget_arguments(offsite: OffsiteSettings) -> str:
    keep = [("--keep-daily", offsite.keep_daily), ("--keep-weekly", offsite.keep_weekly),
            ("--keep-monthly", offsite.keep_monthly)]
    return " ".join(f"{flag} {int(n)}" for flag, n in keep if n)


_UPLOAD_PRELUDE = r"""now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
# record RESULT MESSAGE [SNAPSHOT [ADDED [BYTES]]]: replaced at once (rename). Every value is a fixed text
# of this script, a checked profile name, or digits and hex parsed out of restic's summary.
record() {
  printf '{"bytes": %s, "bytes_added": %s, "kind": "offsite", "message": "%s", "profile": "%s", "result": "%s", "snapshot": "%s", "source": "%s", "time": "%s"}\n' \
    "${5:-0}" "${4:-0}" "$2" "$profile" "$1" "${3:-}" "$source" "$(now)" > "$records/$profile.last.json.new" \
    && mv -f -- "$records/$profile.last.json.new" "$records/$profile.last.json" || return 1
  if [ "$1" = success ]; then
    cp -- "$records/$profile.last.json" "$records/$profile.good.json.new" \
      && mv -f -- "$records/$profile.good.json.new" "$records/$profile.good.json"
  fi
}
fail() { echo "hermes-infra-offsite: $profile: $1 (restic's messages: $log)" >&2; record failed "$1" "${2:-}"; exit 1; }
# number KEY: the value of a numeric field of restic's JSON summary (digits only, else 0).
number() { v=$(printf '%s\n' "$summary" | sed -n "s/.*\"$1\":\([0-9]\{1,20\}\)[,}].*/\1/p" | head -n 1); echo "${v:-0}"; }"""


def upload_script_text(settings: HostSettings, host: str) -> str:
    """`hermes-infra-offsite PROFILE SOURCE TAR`: send one uncompressed data-dir tar (a file root
    wrote in a root-only dir), then prune and check; exit 0 only when every step passed."""
    offsite = settings.scheduled_backups.offsite
    assert offsite is not None
    name = restic_host(host)
    profiles = "|".join(shlex.quote(g.name) for g in settings.gateways)
    tags = f"--tag {TAG} --tag {shlex.quote('host=' + name)} --tag \"profile=$profile\" --tag \"source=$source\""
    every = int(offsite.read_data_every_days) * 86400
    lines = [
        "#!/bin/sh", "# Managed by hermes-infra (setting scheduled_backups.offsite): replaced by each deploy.",
        "# Sends one backup to the off-host restic repository. No secrets here (see the env file).",
        "umask 077", 'profile=${1:-}; source=${2:-}; tar=${3:-}',
        f'case "$profile" in {profiles}) ;; *) echo "hermes-infra-offsite: unknown profile" >&2; exit 2 ;; esac',
        f'case "$source" in {"|".join(SOURCES)}) ;; *) echo "hermes-infra-offsite: unknown source" >&2; exit 2 ;; esac',
        f"records={shlex.quote(record_dir(settings))}",
        'mkdir -p "$records" && chmod 0700 "$records" || exit 1',
        'log="$records/$profile.restic.log"; : > "$log" || exit 1',
        f"restic={RESTIC}", _UPLOAD_PRELUDE,
        f'[ -x "$restic" ] && [ -f {ENV_FILE} ] || fail "restic or its settings are missing on this host (deploy first)"',
        '[ -f "$tar" ] && [ ! -L "$tar" ] || fail "the archive to send is missing"',
        # A repository that does not answer `cat config` is created; a wrong password or an unreachable
        # server fails init too (a repository is never created over an existing one).
        '"$restic" cat config >/dev/null 2>>"$log" || "$restic" init >>"$log" 2>&1 '
        '|| fail "the repository could not be opened or created (password, credentials, network?)"',
        'out=$(mktemp "$records/.backup.XXXXXX") || fail "no temp file for restic'"'"'s summary"',
        f'"$restic" backup --json --host {shlex.quote(name)} {tags} --stdin --stdin-filename "$profile.tar" '
        '< "$tar" > "$out" 2>>"$log"; rc=$?',
        'summary=$(grep \'"message_type":"summary"\' "$out" | tail -n 1); rm -f -- "$out"',
        '[ "$rc" = 0 ] || fail "restic backup failed (exit $rc)"',
        "snap=$(printf '%s\\n' \"$summary\" | sed -n 's/.*\"snapshot_id\":\"\\([0-9a-f]\\{8,64\\}\\)\".*/\\1/p' | head -n 1)",
        '[ -n "$snap" ] || fail "restic backup reported no snapshot"',
        'added=$(number data_added); bytes=$(number total_bytes_processed)',
        f'"$restic" forget --host {shlex.quote(name)} --tag "{TAG},profile=$profile" --group-by host '
        f'{forget_arguments(offsite)} --prune >>"$log" 2>&1 '
        '|| fail "restic forget --prune failed (the snapshot was made)" "$snap"',
        '"$restic" check >>"$log" 2>&1 || fail "restic check found a problem in the repository" "$snap"',
        'stamp="$records/.read-data-checked"',
        f'if [ ! -f "$stamp" ] || [ $(( $(date +%s) - $(stat -c %Y -- "$stamp" 2>/dev/null || echo 0) )) -ge {every} ]; then',
        f'  "$restic" check --read-data-subset={int(offsite.read_data_percent)}% >>"$log" 2>&1 '
        f'|| fail "restic check --read-data-subset={int(offsite.read_data_percent)}% found damaged data" "$snap"',
        '  touch -- "$stamp"',
        "fi",
        'record success "sent, pruned and checked" "$snap" "$added" "$bytes" || exit 1',
    ]
    return "\n".join(lines) + "\n"


def files(settings: HostSettings, host: str) -> list[tuple[str, str, str, bool]]:
    """(path, content, mode, secret) of every offsite file the host should have; [] when unset."""
    offsite = settings.scheduled_backups.offsite
    if offsite is None:
        return []
    found = [(ENV_FILE, env_text(offsite), "0600", True),
             (PASSWORD_FILE, offsite.password.get_secret_value() + "\n", "0600", True),
             (RESTIC, wrapper_text(offsite), "0700", False),
             (UPLOAD, upload_script_text(settings, host), "0700", False)]
    if offsite.parsed.scheme == "sftp":
        found.append((SSH_KEY, offsite.private_key_text or "", "0600", True))
        known = _known_hosts_name(offsite)
        found.append((KNOWN_HOSTS, "".join(f"{known} {line}\n" for line in offsite.sftp_host_keys), "0644", False))
    return found


def upload_command(profile: str, source: str, tar: str) -> str:
    """The host command that sends one tar (`tar`: a shell word, already quoted when literal)."""
    assert source in SOURCES
    return f"{UPLOAD} {shlex.quote(profile)} {source} {tar}"


@dataclass(frozen=True)
class OffsitePlan:
    """The off-host backup's files and package when `scheduled_backups.offsite` is set; what to
    remove when it is not (the package stays: it may serve something else)."""

    wanted: bool
    files: tuple
    """RootFilePlan of each file (`files`), secret ones marked so."""
    present: tuple[str, ...]
    """Offsite files found on the host (removed when the setting is gone)."""
    package_missing: bool


def plan_offsite(settings: HostSettings, state, host: str, root_file: Callable[..., Any]) -> OffsitePlan:
    """`root_file(path, content, mode, secret)` builds a RootFilePlan against the host's facts."""
    wanted = settings.scheduled_backups.offsite is not None
    return OffsitePlan(
        wanted=wanted, files=tuple(root_file(*entry) for entry in files(settings, host)),
        present=tuple(p for p in PATHS if state.root_files.get(p) is not None),
        package_missing=wanted and state.packages.get(PACKAGE) != "installed")
