"""`hermes-infra hermes TARGET [--profile P] -- ARGS`: the Hermes CLI, run the right way.

`hermes ARGS` runs in a one-off container of the gateway's own service
(`docker compose run --rm --no-deps SERVICE ARGS`): same image, same data dir mounted at
/opt/data, same environment, the image's own user (uid 10000: the registry-free image has
`USER 10000:10000`, the official one drops to `hermes` itself), never root, so nothing it
writes breaks the gateway. No ports are published (`run` publishes none), the running
gateway is not touched. When the operator's terminal is a TTY the command runs through
`ssh -t` with a TTY end to end, so `hermes gateway setup` (the WeChat QR login) works from a
laptop; otherwise stdout is streamed back. Afterwards, files left in the data dir by anyone
but the owner are given back to it (`safeio.chown_foreign_script`).

What Hermes picks up live and what needs a restart:
- `pairing approve|revoke|clear-pending`: live (the gateway reads the pairing store on each
  message); `cron`, `doctor` (without `--fix`), `status`, `logs`, `config get|show`, `sessions`,
  `version` change nothing the gateway reads at start (`LIVE`, an allow-list);
- anything else (`config set|unset|edit`, `setup`, `gateway setup`, `model`, `auth`, `login`,
  `tools`, `import`, a command this list does not know): may change what Hermes reads at start;
  hermes-infra says so, and `--restart` restarts the gateway and waits for the health gate (and
  says why when it does not). Keys hermes-infra manages (settings) are put back by the next `up`.
- `status` runs in its one-off container, so Hermes reports the gateway "stopped": a note says so.
- `gateway` with anything but `setup` or `status`, and `update`, are refused: two gateways on
  one data dir fight over it (`restart` instead), and an image does not update itself. Hermes's
  global options are read with their values (`-p work update` is `update`); an unknown option is
  read both ways. Without a TTY, Hermes's output is cleaned like `logs` (chat users chose names).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hermes_infra.host import safeio
from hermes_infra.daytwo.lifecycle import LineFilter, compose_base, restart
from hermes_infra.daytwo.remote import DayTwoError, HostTarget, Remote, clean, clean_lines, open_remote, ssh_argv
from hermes_infra.settings.schema import GatewaySettings, HostSettings

# What Hermes picks up without a restart, or what changes nothing: an allow-list. Any other
# command may change what the gateway reads only at start (`config unset` was missing from the
# old list of commands that do, so `--restart` skipped it without a word), so it gets the note
# and `--restart` restarts after it.
LIVE = (("pairing",), ("cron",), ("doctor",), ("status",), ("logs",), ("config", "get"), ("config", "show"),
        ("version",), ("--version",), ("sessions",), ("gateway", "status"))
LIVE_UNLESS = {("doctor",): "--fix"}
"""A live command that changes config with this option (`doctor --fix` may rewrite config.yaml)."""
STATUS_COMMANDS = (("status",), ("gateway", "status"))
PAIRING_CHANGES = (("pairing", "approve"), ("pairing", "revoke"), ("pairing", "clear-pending"))
# What an audit record names of a Hermes command: only words from these lists, never an argument
# (`config set KEY VALUE`, `auth add TOKEN`: a value may be a secret).
AUDIT_COMMANDS = frozenset({"config", "setup", "gateway", "model", "auth", "login", "logout", "tools", "import",
                            "plugins", "pairing", "cron", "doctor", "sessions", "skills", "mcp", "memory", "backup"})
AUDIT_VERBS = frozenset({"set", "unset", "edit", "migrate", "setup", "approve", "revoke", "clear-pending", "add",
                         "remove", "pause", "resume", "run", "enable", "disable", "install", "uninstall", "reset",
                         "delete", "login", "logout"})
# Hermes's global options that take a value (`hermes -p work pairing list`): the word after
# them is that value, not the command. An option not listed here may take one or not: both
# readings are checked, and a command is refused when either reading is refused.
VALUE_OPTIONS = frozenset({"-p", "--profile", "-m", "--model", "--provider", "-t", "--toolsets", "-r", "--resume",
                           "-q", "--query", "-s", "--skills"})
FLAG_OPTIONS = frozenset({"-c", "--continue", "-v", "--verbose", "--version", "-h", "--help", "-w", "--worktree",
                          "--yolo"})
GATEWAY_ALLOWED = ("setup", "status")
"""`hermes gateway` alone, `gateway run` and the service verbs start or manage a second gateway
on the same data dir; only these run in a one-off container."""
REFUSED_WHY = {
    "gateway": "it would start a second gateway on the same data dir (only `gateway setup` and `gateway status` "
               "run here). Fix: hermes-infra restart TARGET",
    "update": "Hermes cannot update itself in Docker. Fix: pin a new image in the settings and hermes-infra up",
}


def _command_starts(args: Sequence[str], start: int = 0) -> set[int]:
    """Every index at which the Hermes subcommand may start, reading global options both ways
    when it is not known whether one takes a value."""
    starts: set[int] = set()
    i = start
    while i < len(args):
        arg = args[i]
        if arg == "--":
            starts.add(i + 1)
            return starts
        if not arg.startswith("-") or arg == "-":
            starts.add(i)
            return starts
        if "=" in arg or arg in FLAG_OPTIONS:
            i += 1
        elif arg in VALUE_OPTIONS:
            i += 2
        else:  # unknown: a flag, or an option whose value is the next word
            starts |= _command_starts(args, i + 2)
            i += 1
    return starts


def refusal(args: Sequence[str]) -> str | None:
    """Why `hermes ARGS` is not run here (None: it may run)."""
    for start in _command_starts(args):
        command = args[start] if start < len(args) else None
        if command == "update":
            return REFUSED_WHY["update"]
        if command == "gateway":
            action = args[start + 1] if start + 1 < len(args) else None
            if action not in GATEWAY_ALLOWED:
                return REFUSED_WHY["gateway"]
    return None


def _readings(args: Sequence[str]) -> list[tuple[str, ...]]:
    """The command words (options left out) for each place the subcommand may start: a global
    option's value (`-p work config set ...`) is never read as the command."""
    return [tuple(a for a in args[start:] if not a.startswith("-")) for start in sorted(_command_starts(args))]


def _is(words: tuple[str, ...], prefixes) -> bool:
    return any(words[:len(p)] == p for p in prefixes)


def _live(words: tuple[str, ...], args: Sequence[str]) -> bool:
    if not _is(words, LIVE):
        return False
    return not any(_is(words, (prefix,)) and option in args for prefix, option in LIVE_UNLESS.items())


def _starts(args: Sequence[str], prefixes) -> bool:
    return any(_is(words, prefixes) for words in _readings(args))


def check_args(args: Sequence[str]) -> None:
    if not args:
        raise DayTwoError("no Hermes command given. Fix: hermes-infra hermes TARGET -- pairing list")
    why = refusal(args)
    if why:
        raise DayTwoError(f"`hermes {clean(shlex.join(args), 300)}` is not run by hermes-infra: {why}")


def needs_restart(args: Sequence[str]) -> bool:
    """True unless every reading of `args` is a command known to be live (see LIVE)."""
    return any(not _live(words, args) for words in _readings(args))


def changes_something(args: Sequence[str]) -> bool:
    """Worth an audit record: it may change config, or it changes who may talk to the agent."""
    return needs_restart(args) or _starts(args, PAIRING_CHANGES)


def audit_name(args: Sequence[str]) -> str:
    """`hermes config unset`, `hermes pairing approve`: the command's words from allow-lists only."""
    for words in _readings(args):
        if words and words[0] in AUDIT_COMMANDS:
            verb = [words[1]] if len(words) > 1 and words[1] in AUDIT_VERBS else []
            return " ".join(["hermes", words[0], *verb])
    return "hermes (a command hermes-infra does not name)"


def _audit(host: HostTarget, gateway: GatewaySettings, args: Sequence[str], rc: int, seconds: float,
           remote: Remote, say: Callable[[str], None]) -> None:
    from hermes_infra.release import audit

    record = audit.AuditRecord(command="hermes", result="success" if rc == 0 else "failed",
                               changed=(f"{audit_name(args)} on {gateway.name}",), seconds=seconds,
                               message=f"{gateway.name}: {audit_name(args)} (exit {rc})")
    if not audit.write_quietly(remote, record):
        say(f"{host.name}: warning: `{audit_name(args)}` was not written to {audit.AUDIT_PATH}")


def hermes_command(settings: HostSettings, gateway: GatewaySettings, args: Sequence[str], tty: bool) -> str:
    """Shell text for the host: the one-off container, then the data dir's files given back."""
    run = [*(["-T"] if not tty else []), gateway.service_name, *args]
    fix = safeio.chown_foreign_script(gateway.host_data_dir, gateway.uid, gateway.gid)
    return (f"{compose_base(settings)} run --rm --no-deps {shlex.join(run)}; rc=$?; "
            f"( {fix} ) >/dev/null 2>&1; exit $rc")


@dataclass
class HermesRun:
    host: str
    profile: str
    rc: int


def after_note(host: HostTarget, gateway: GatewaySettings, args: Sequence[str]) -> str | None:
    if needs_restart(args):
        return (f"note: Hermes reads what `hermes {clean(' '.join(args[:3]), 200)}` changes only at start. Restart "
                f"{gateway.service_name} now: hermes-infra restart {host.name} --profile {gateway.name} "
                "(or pass --restart). Settings hermes-infra manages are put back by the next `up`.")
    if _starts(args, (("pairing",),)):
        return "note: the gateway picks pairing changes up on the next message; no restart needed."
    return None


def one_off_note(host: HostTarget, gateway: GatewaySettings, args: Sequence[str]) -> str | None:
    """Hermes's own `status` looks for a gateway in its own container, and this one is a one-off
    beside the running gateway: what it says about the gateway is not the gateway's state."""
    if not _starts(args, STATUS_COMMANDS):
        return None
    return (f"note: this `hermes status` ran in a one-off container beside the gateway, so what it says about "
            f"the gateway (\"stopped\") is about that container, not {gateway.service_name}. The gateway's own "
            f"state: hermes-infra status {host.name}")


def run_hermes(hosts: list[HostTarget], profile: str | None, args: Sequence[str], *, tty: bool | None = None,
               restart_after: bool = False, say: Callable[[str], None] | None = None,
               write: Callable[[bytes], None] | None = None, err: Callable[[str], None] | None = None,
               remote_for=open_remote,
               interactive_runner=subprocess.call) -> list[HermesRun]:
    """`hermes ARGS` on each chosen profile (one host at a time). A TTY is used when `tty` (default:
    stdin and stdout are terminals) and exactly one profile is chosen."""
    check_args(args)
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    if write is None:
        def write(data: bytes) -> None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    err = err or (lambda text: sys.stderr.write(text))
    jobs = [(h, g) for h in hosts for g in h.gateways(profile)]
    if tty is None:
        tty = sys.stdin.isatty() and sys.stdout.isatty()
    if tty and len(jobs) > 1:
        raise DayTwoError("an interactive command goes to one gateway at a time, and this target names "
                          f"{len(jobs)}. Fix: one host and --profile NAME")
    runs = []
    for host, gateway in jobs:
        if len(jobs) > 1:
            say(f"==> {host.name}/{gateway.name}: hermes {shlex.join(args)}")
        command = hermes_command(host.settings, gateway, args, tty=bool(tty))
        started = time.monotonic()
        if tty:
            rc = interactive_runner(ssh_argv(host.connection, command, tty=True))
            if changes_something(args):
                remote = remote_for(host)
                try:
                    _audit(host, gateway, args, rc, time.monotonic() - started, remote, say)
                finally:
                    remote.close()
        else:
            remote: Remote = remote_for(host)
            # Without a terminal the output is data (`pairing list` shows names chat users chose):
            # cleaned line by line, like `logs`.
            lines = LineFilter(lambda line: write((line + "\n").encode()))
            try:
                result = remote.run(command, on_stdout=lines.feed)
                lines.flush()
                if changes_something(args):
                    _audit(host, gateway, args, result.rc, time.monotonic() - started, remote, say)
            finally:
                lines.flush()
                remote.close()
            rc = result.rc
            if result.stderr.strip():
                err(clean_lines(result.stderr) + "\n")
        runs.append(HermesRun(host.name, gateway.name, rc))
        if (note := one_off_note(host, gateway, args)) is not None:
            say(note)
        if restart_after:
            _restart_after(host, gateway, args, runs[-1], say, remote_for)
        elif rc == 0 and (note := after_note(host, gateway, args)) is not None:
            say(note)
    return runs


def _restart_after(host: HostTarget, gateway: GatewaySettings, args: Sequence[str], run: HermesRun,
                   say: Callable[[str], None], remote_for) -> None:
    """`--restart`: restart after a command that may change what Hermes reads at start; say why
    when it does not restart."""
    if not needs_restart(args):
        say(f"note: --restart: not restarting {gateway.service_name}: Hermes picks up "
            f"`hermes {clean(' '.join(args[:2]), 200)}` live (or it changes nothing).")
        return
    if run.rc != 0:
        say(f"note: --restart: not restarting {gateway.service_name}: hermes exited {run.rc}. Restart it "
            f"yourself once the change is made: hermes-infra restart {host.name} --profile {gateway.name}")
        return
    results = restart([host], gateway.name, say=say, remote_for=remote_for)
    if not all(r.ok for r in results):
        run.rc = 1


def shortcut_args(action: str, *values: str) -> list[str]:
    """The Hermes arguments behind `hermes-infra pairing ...` and `hermes-infra doctor`."""
    if action == "doctor":
        return ["doctor", *values]
    return ["pairing", action, *values]


