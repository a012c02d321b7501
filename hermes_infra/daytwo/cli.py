"""Day-two commands on the `hermes-infra` command line: a thin layer over the functions of
`hermes_infra.daytwo` (each callable and testable on its own).

    hermes-infra status   TARGET [--json] [--html PATH] [--databases]
    hermes-infra smoke    TARGET [--profile P] [--message TEXT] [--timeout S] [--json]   (costs tokens)
    hermes-infra logs     TARGET [--profile P] [-f] [-n N] [--since T] [--grep RE]
    hermes-infra restart  TARGET [--profile P]
    hermes-infra hermes   TARGET [--profile P] [--restart] [--tty|--no-tty] -- ARGS...
    hermes-infra pairing  list|approve|revoke|clear-pending TARGET [PLATFORM CODE|USER] [--profile P]
    hermes-infra doctor   TARGET [--profile P] [--fix]
    hermes-infra backup   TARGET [--profile P] [-o DIR]   (on a schedule: the setting scheduled_backups)
    hermes-infra backup   list TARGET [--profile P] [--all-hosts]   (the off-host repository's snapshots)
    hermes-infra restore  TARGET ARCHIVE [--profile P] [--force]
    hermes-infra restore  TARGET --from offsite[:SNAPSHOT] [--profile P] [--force]
"""
from __future__ import annotations

import sys
from pathlib import Path

from hermes_infra.daytwo.remote import DayTwoError

PROFILE_HELP = "only this profile (gateway name in the settings; default: every profile of the host)"


def smoke_default_message() -> str:
    from hermes_infra.daytwo.smoke import DEFAULT_MESSAGE

    return DEFAULT_MESSAGE


def _guard(func):
    def run(args) -> int:
        try:
            return func(args)
        except DayTwoError as error:
            print(f"hermes-infra: {error}", file=sys.stderr)
            return 2
    return run


def add_commands(sub, add_target_options, make_target) -> None:
    from hermes_infra.daytwo import remote

    def hosts(args):
        return remote.resolve(make_target(args))

    # ------------------------------------------------------------------ status
    def cmd_status(args) -> int:
        from hermes_infra.daytwo import status

        report = status.collect(hosts(args), databases=args.databases)
        sys.stdout.write(status.render_json(report) if args.json else status.render_text(report))
        if args.html:
            from hermes_infra.daytwo.report_html import render_status_html

            Path(args.html).parent.mkdir(parents=True, exist_ok=True)
            Path(args.html).write_text(render_status_html(report))
            print(f"status page: {args.html}", file=sys.stderr)
        return report.exit_code

    p = sub.add_parser("status", help="state, health, memory, restarts and last deploy of every gateway (read-only)",
                       description="One row per host and profile: container state, uptime, restarts, OOM kills, "
                       "image and Hermes version, memory against the limit, swap, /health and /health/detailed "
                       "readiness, last deploy from the audit log. One SSH connection per host, hosts in parallel. "
                       "Exit 0 when every gateway is running and answers /health.")
    add_target_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--html", metavar="PATH", help="also write a self-contained HTML page")
    p.add_argument("--databases", action="store_true",
                   help="also the SQLite library the image runs and each database's journal mode and "
                   "PRAGMA integrity_check (read in a one-off container of the gateway's image as its owner; "
                   "WAL mode on SQLite older than 3.51.3 is flagged: the WAL-reset bug)")
    p.set_defaults(func=_guard(cmd_status))

    # ------------------------------------------------------------------- smoke
    def cmd_smoke(args) -> int:
        from hermes_infra.daytwo import smoke

        results = smoke.smoke(hosts(args), args.profile, message=args.message, timeout=args.timeout)
        sys.stdout.write(smoke.render_json(results) if args.json else smoke.render_text(results))
        return smoke.exit_code(results)

    p = sub.add_parser("smoke", help="send one real chat turn through each gateway (costs tokens; opt-in)",
                       description="Send one chat message (POST /v1/chat/completions) through each chosen gateway "
                       "and print the HTTP code, the time to the first byte and in total (measured on the host), "
                       "and the answer's first characters. COSTS TOKENS: each gateway's model provider bills one "
                       "chat turn, so it never runs unless you run it. The key goes from the data dir's .env to "
                       "curl through a pipe, only to the running container's own address. Exit 0 when every "
                       "gateway answers 200 with a non-empty answer; otherwise each failure says what to check "
                       "(readiness, HI-API-005; the provider's key).")
    add_target_options(p)
    p.add_argument("--profile", help=PROFILE_HELP)
    p.add_argument("--message", default=smoke_default_message(),
                   help="the message to send (no secrets: it is a process argument on the host; "
                   "default: %(default)r)")
    p.add_argument("--timeout", type=int, default=120, metavar="SECONDS",
                   help="how long to wait for each answer (default 120)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_guard(cmd_smoke))

    # -------------------------------------------------------------------- logs
    def cmd_logs(args) -> int:
        from hermes_infra.daytwo import lifecycle

        options = lifecycle.LogOptions(follow=args.follow, lines=args.lines, since=args.since, grep=args.grep,
                                       timestamps=args.timestamps)
        return lifecycle.show_logs(hosts(args), args.profile, options)

    p = sub.add_parser("logs", help="the gateway's logs (docker logs), filtered and followed",
                       description="Print each chosen gateway's container log. With several hosts or profiles "
                       "every line is prefixed host/profile. --grep filters on this machine (Python regex).")
    add_target_options(p)
    p.add_argument("--profile", help=PROFILE_HELP)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    p.add_argument("-n", "--lines", type=int, default=100, help="lines from the end of each log (default 100)")
    p.add_argument("--since", help="only lines newer than this: 10m, 2h, 3d or 2026-11-20T08:00")
    p.add_argument("--grep", metavar="REGEX", help="only lines matching this regular expression")
    p.add_argument("-t", "--timestamps", action="store_true", help="show Docker's timestamps")
    p.set_defaults(func=_guard(cmd_logs))

    # ----------------------------------------------------------------- restart
    def cmd_restart(args) -> int:
        from hermes_infra.daytwo import lifecycle

        results = lifecycle.restart(hosts(args), args.profile)
        return 0 if results and all(r.ok for r in results) else 1

    p = sub.add_parser("restart", help="restart gateways and wait for the health gate",
                       description="Restart each chosen gateway (compose restart with its stop grace period, so "
                       "Hermes drains), host after host, then wait until /health answers 200 and /v1/models 401 "
                       "without the key and 200 with it. Stops at the first gateway that does not come back. "
                       "Use it after editing .env or config.yaml on the host.")
    add_target_options(p)
    p.add_argument("--profile", help=PROFILE_HELP)
    p.set_defaults(func=_guard(cmd_restart))

    # ------------------------------------------------------------------ hermes
    def run_hermes(args, hermes_args) -> int:
        from hermes_infra.daytwo import hermescli

        tty = None if args.tty is None else args.tty
        runs = hermescli.run_hermes(hosts(args), args.profile, hermes_args, tty=tty,
                                    restart_after=getattr(args, "restart", False))
        return max((r.rc for r in runs), default=0)

    def cmd_hermes(args) -> int:
        return run_hermes(args, list(getattr(args, "pyinfra_args", None) or []))

    def tty_options(parser) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--tty", dest="tty", action="store_true", default=None,
                           help="force a terminal (default: when this terminal is one)")
        group.add_argument("--no-tty", dest="tty", action="store_false", help="never allocate a terminal")

    p = sub.add_parser("hermes", help="run the Hermes CLI against a gateway's data dir, as its user (after --)",
                       description="Run `hermes ARGS` in a one-off container of the gateway's service (same image, "
                       "data dir, environment; the image's user, uid 10000, never root), with a terminal when "
                       "yours is one, so `hermes-infra hermes HOST -- gateway setup` does the WeChat QR login. "
                       "Pairing changes are live; after any command that may change config (config set|unset, setup, "
                       "model, auth, login, tools, ...), restart (or pass --restart). Hermes's own `status` runs "
                       "in that one-off container, so it reports the gateway as stopped: `hermes-infra status` "
                       "tells the gateway's state.",
                       epilog="Examples: hermes-infra hermes root@203.0.113.7 -- pairing list;  "
                       "hermes-infra hermes inventory/production.py --profile work -- cron list;  "
                       "hermes-infra hermes HOST --restart -- config set display.tool_progress off")
    add_target_options(p)
    p.add_argument("--profile", help=PROFILE_HELP)
    p.add_argument("--restart", action="store_true",
                   help="restart the gateway (health-gated) after a command that may change what Hermes reads at "
                   "start (every command but the live ones: pairing, cron, doctor, status, logs, config get)")
    tty_options(p)
    p.set_defaults(func=_guard(cmd_hermes))

    # ---------------------------------------------------------------- pairing
    def cmd_pairing(args) -> int:
        from hermes_infra.daytwo.hermescli import shortcut_args

        values = [v for v in (getattr(args, "platform", None), getattr(args, "value", None)) if v is not None]
        return run_hermes(args, shortcut_args(args.pairing_action, *values))

    p = sub.add_parser("pairing", help="list, approve and revoke DM pairing requests (hermes pairing ...)",
                       description="Shortcuts for `hermes pairing`: who asked to pair, approve a code, revoke a "
                       "user. The gateway picks approvals up on the next message; no restart.")
    pairing_sub = p.add_subparsers(dest="pairing_action", required=True)
    for action, helptext, extra in (
            ("list", "pending requests and approved users", ()),
            ("approve", "approve a pending code: pairing approve TARGET PLATFORM CODE", ("platform", "value")),
            ("revoke", "revoke a user: pairing revoke TARGET PLATFORM USER_ID", ("platform", "value")),
            ("clear-pending", "drop every pending request", ())):
        q = pairing_sub.add_parser(action, help=helptext, description=helptext)
        add_target_options(q)
        if extra:
            q.add_argument("platform", help="platform, e.g. weixin, telegram")
            q.add_argument("value", metavar="CODE" if action == "approve" else "USER_ID",
                           help="the pairing code" if action == "approve" else "the user id to revoke")
        q.add_argument("--profile", help=PROFILE_HELP)
        tty_options(q)
        q.set_defaults(func=_guard(cmd_pairing))

    def cmd_doctor(args) -> int:
        from hermes_infra.daytwo.hermescli import shortcut_args

        return run_hermes(args, shortcut_args("doctor", *(["--fix"] if args.fix else [])))

    p = sub.add_parser("doctor", help="hermes doctor on each gateway (as the container user)",
                       description="Run `hermes doctor` against each chosen gateway's data dir.")
    add_target_options(p)
    p.add_argument("--profile", help=PROFILE_HELP)
    p.add_argument("--fix", action="store_true", help="let hermes doctor fix what it can")
    tty_options(p)
    p.set_defaults(func=_guard(cmd_doctor))

    # ------------------------------------------------------------ backup/restore
    def cmd_backup(args) -> int:
        from hermes_infra.daytwo import backup

        if args.target == "list" and args.list_target:
            return backup_list(args)
        if args.list_target:
            raise DayTwoError(f"backup takes one TARGET (got {args.target!r} and {args.list_target!r}). Fix: "
                              "hermes-infra backup TARGET, or hermes-infra backup list TARGET")
        made = backup.backup(hosts(args), args.profile, args.output)
        for item in made:
            print(item.path)
        return 0 if made else 1

    p = sub.add_parser("backup", help="pull a consistent, checksummed archive of each data dir (0600)",
                       description="For each chosen profile, while the gateway keeps running: copy every SQLite "
                       "database with SQLite's online backup API and archive the rest of the data dir, both as "
                       "its owner, record the result on the host (shown by status), and write "
                       "DIR/<host>_<profile>_<time>.hermes-backup.tar (0600, in a 0700 dir) with a manifest of "
                       "every file's sha256 and every SQLite database's integrity and row counts. Secrets are "
                       "inside the archive only. Backups on a schedule, taken by the host itself: the setting "
                       "scheduled_backups.schedule (a systemd timer installed by the deploy).")
    add_target_options(p)
    p.add_argument("--profile", help=PROFILE_HELP)
    p.add_argument("-o", "--output", default="backups", metavar="DIR", help="where to write (default ./backups)")
    p.add_argument("list_target", nargs="?", metavar="TARGET",
                   help="with `backup list TARGET`: list the off-host repository's snapshots of that host "
                   "(time, id, host, profile, source, size; setting scheduled_backups.offsite)")
    p.add_argument("--all-hosts", action="store_true", help="with backup list: every host's snapshots in the repository")
    p.set_defaults(func=_guard(cmd_backup))

    def backup_list(args) -> int:
        from hermes_infra.daytwo import offsite

        args.target = args.list_target
        found = hosts(args)
        for host in found:
            snapshots = offsite.list_snapshots(host, all_hosts=args.all_hosts)
            if args.profile:
                snapshots = [s for s in snapshots if s.profile == args.profile]
            if len(found) > 1:
                print(f"{host.name}:")
            sys.stdout.write(offsite.render_snapshots(snapshots))
        return 0

    def cmd_restore(args) -> int:
        from hermes_infra.daytwo import backup

        found = hosts(args)
        if len(found) != 1:
            raise DayTwoError(f"restore goes to one host; the target names {len(found)}. Fix: user@host or "
                              "an inventory with --limit-style single host")
        if (args.archive is None) == (args.source is None):
            raise DayTwoError("restore needs one source: an ARCHIVE file or --from offsite[:SNAPSHOT]. Fix: give one "
                              "of them")
        if args.source is not None:
            from hermes_infra.daytwo import offsite

            offsite.restore_from_offsite(found[0], offsite.parse_from(args.source), profile=args.profile,
                                         force=args.force)
            return 0
        backup.restore(found[0], args.archive, profile=args.profile, force=args.force)
        return 0

    p = sub.add_parser("restore", help="restore a backup onto this host or a new one (deploys first if needed)",
                       description="Check the archive (checksums, no unsafe member), deploy the host if the "
                       "gateway is not there yet, stop the gateway, unpack as the data dir's owner into a fresh "
                       "0700 dir, verify every file's sha256, start, health gate (the restored API key answers). "
                       "A data dir that holds state is only replaced with --force (it is kept as "
                       "<dir>.pre-restore-<time>).")
    add_target_options(p)
    p.add_argument("archive", nargs="?", help="a .hermes-backup.tar file from hermes-infra backup (or a scheduled "
                   "<profile>_<time>.tar.gz copied from the host)")
    p.add_argument("--from", dest="source", metavar="offsite[:SNAPSHOT]",
                   help="restore from the off-host restic repository instead of a file (setting "
                   "scheduled_backups.offsite): the newest snapshot of the profile, or the one named by its id; "
                   "a fresh host is deployed first and reaches the repository with its own settings")
    p.add_argument("--profile", help="restore into this profile (default: the profile the backup came from)")
    p.add_argument("--force", action="store_true", help="replace a data dir that already holds state")
    p.set_defaults(func=_guard(cmd_restore))
