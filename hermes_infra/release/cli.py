"""`hermes-infra rollout | lock | audit | rollback`: thin handlers over the release modules."""
from __future__ import annotations

import sys

from hermes_infra.host.cleantext import clean, clean_lines
from hermes_infra.release import audit, lock
from hermes_infra.release.remote import remotes_for


def _say(text: str) -> None:
    print(f"hermes-infra: {text}", file=sys.stderr, flush=True)


def _limit(args) -> list[str] | None:
    return list(args.limit) if getattr(args, "limit", None) else None


def cmd_rollout(args, make_target) -> int:
    from hermes_infra.commands import Target
    from hermes_infra.release.rollout import RolloutError, rollout

    target = make_target(args)
    green = None
    if args.require_green:
        green = Target(inventory=_environment_inventory(args.require_green), port=target.port, user=target.user,
                       key=target.key, sudo=target.sudo, group_data=target.group_data, cwd=target.cwd)
    try:
        report = rollout(target, batch=args.batch, pause=args.pause, checks=args.checks, require_green_target=green,
                         lock_wait=args.lock_wait, message=args.message)
    except (RolloutError, lock.LockError) as error:
        _say(str(error))
        _say("Nothing was deployed.")
        return 3
    print(report.table())
    if report.stopped_at is not None:
        _say(f"stopped at batch {report.stopped_at + 1}: later hosts were not touched")
    return report.exit_code


def _environment_inventory(name: str) -> str:
    """`staging` means inventory/staging.py (when it exists); a path is taken as is."""
    from pathlib import Path

    candidate = Path("inventory") / f"{name}.py"
    return str(candidate) if "/" not in name and not name.endswith(".py") and candidate.exists() else name


def lock_status(remotes) -> list[tuple[str, lock.LockState, str | None]]:
    rows = []
    for name, remote in remotes.items():
        result = remote.run(lock.status_command())
        state = lock.parse_state(result.stdout)
        rows.append((name, state, state.staleness(lock.Holder().machine, lock.pid_alive)))
    return rows


def cmd_lock(args, make_target) -> int:
    target = make_target(args)
    remotes = remotes_for(target, _limit(args))
    try:
        if args.lock_command == "status":
            code = 0
            for name, state, stale in lock_status(remotes):
                print(f"{name}: {state.describe()}" + (f" -- STALE: {stale}" if stale else ""))
                code = max(code, 1 if state.held else 0)
            return code
        if args.lock_command == "acquire":
            holder = lock.Holder(command="lock", message=args.message, manual=True)
            locks = lock.HostLocks(remotes, holder, release_hint="")
            for name, deploy_lock in locks.locks.items():
                state = deploy_lock.try_acquire()
                print(f"{name}: " + ("locked" if state is None else f"not locked: it is {state.describe()}"))
                _audit_lock(name, remotes[name], "lock acquire", state is None,
                            args.message if state is None else f"held: {state.describe()}")
            return 0 if all(l.held for l in locks.locks.values()) else 1
        for name, remote in remotes.items():
            result = remote.run(lock.force_release_command())
            state = lock.parse_state(result.stdout)
            print(f"{name}: " + (f"released (it was {state.describe()})" if state.held else "was not locked"))
            _audit_lock(name, remote, "lock release", result.rc == 0,
                        f"it was {state.describe()}" if state.held else "was not locked")
        return 0
    finally:
        for remote in remotes.values():
            remote.close()


def _audit_lock(name: str, remote, command: str, ok: bool, message: str | None) -> None:
    """A manual lock or release is a change to who may deploy: the audit log has it."""
    record = audit.AuditRecord(command=command, result="success" if ok else "failed", message=message)
    if not audit.write_quietly(remote, record):
        _say(f"{name}: warning: `{command}` was not written to {audit.AUDIT_PATH}")


def cmd_audit(args, make_target) -> int:
    import json

    remotes = remotes_for(make_target(args), _limit(args))
    try:
        for name, remote in remotes.items():
            records = audit.tail(remote, args.lines)
            if args.json:
                for record in records:
                    print(json.dumps({"host": name, **record}))
            else:
                print(audit.format_records(name, records))
    finally:
        for remote in remotes.values():
            remote.close()
    return 0


def cmd_rollback(args, make_target) -> int:
    from hermes_infra.release import rollback

    target = make_target(args)
    if args.list:
        remotes = remotes_for(target, _limit(args))
        try:
            for name, remote in remotes.items():
                kept = remote.run(rollback.list_command()).stdout.split("\n")
                lines = [clean(line, 300) for line in kept if line]
                print(f"{name}: " + ("\n  " + "\n  ".join(lines) if lines else "no kept release"))
        finally:
            for remote in remotes.values():
                remote.close()
        return 0
    try:
        results = rollback.rollback(target, to=args.to, lock_wait=args.lock_wait, message=args.message,
                                    limit=_limit(args))
    except lock.LockError as error:
        _say(str(error))
        return 3
    for result in results:
        print(clean_lines(result.output.rstrip()))
        print(f"{result.host}: {'rolled back' if result.ok else 'ROLLBACK FAILED'} in {result.seconds:.0f}s")
    return 0 if results and all(r.ok for r in results) else 1


def add_commands(sub, add_target_options, make_target) -> None:
    back = sub.add_parser("rollback", help="back to the previous image and the snapshot taken before the upgrade")
    add_target_options(back)
    back.add_argument("--to", metavar="REVISION",
                      help="the revision to go back to, or a kept image id (default: the newest kept; see --list)")
    back.add_argument("--list", action="store_true", help="list the kept releases of each host")
    back.add_argument("--lock-wait", type=float, default=0, metavar="SECONDS", help="wait for a held deploy lock")
    back.add_argument("--message", "-m", help="a note for the lock and the audit log (no secrets)")
    back.add_argument("--limit", action="append", metavar="HOST", help="only these hosts (repeatable)")
    back.set_defaults(func=lambda args: cmd_rollback(args, make_target))

    rollout = sub.add_parser("rollout", help="deploy in batches: canary first, health-gated, stop at a failure")
    add_target_options(rollout)
    rollout.add_argument("--batch", default="1", help="hosts per batch after the canary: N or P%% (default 1)")
    rollout.add_argument("--pause", type=float, default=0, metavar="SECONDS", help="pause between batches")
    rollout.add_argument("--checks", action="store_true", help="also run the compliance checks on each batch")
    rollout.add_argument("--require-green", metavar="ENV",
                         help="refuse unless the same image is deployed and healthy on ENV (staging or an inventory)")
    rollout.add_argument("--lock-wait", type=float, default=0, metavar="SECONDS", help="wait for a held deploy lock")
    rollout.add_argument("--message", "-m", help="a note for the lock and the audit log (no secrets)")
    rollout.set_defaults(func=lambda args: cmd_rollout(args, make_target))

    locker = sub.add_parser("lock", help="the deploy lock of hosts: status, acquire, release")
    lock_sub = locker.add_subparsers(dest="lock_command", required=True)
    for name, text in (("status", "who holds the lock of each host"),
                       ("acquire", "take the lock by hand (deploys stop until `lock release`)"),
                       ("release", "release the lock (e.g. a stale one), whoever holds it")):
        parser = lock_sub.add_parser(name, help=text)
        add_target_options(parser)
        parser.add_argument("--limit", action="append", metavar="HOST", help="only these hosts (repeatable)")
        if name == "acquire":
            parser.add_argument("--message", "-m", help="why (shown to whoever tries to deploy)")
        parser.set_defaults(func=lambda args: cmd_lock(args, make_target))

    auditor = sub.add_parser("audit", help="the tail of each host's audit log")
    add_target_options(auditor)
    auditor.add_argument("-n", "--lines", type=int, default=20, help="records per host (default 20)")
    auditor.add_argument("--json", action="store_true", help="one JSON object per line")
    auditor.add_argument("--limit", action="append", metavar="HOST", help="only these hosts (repeatable)")
    auditor.set_defaults(func=lambda args: cmd_audit(args, make_target))
