"""`hermes-infra`: a thin command line over hermes_infra.commands and friends."""
from __future__ import annotations

# pyinfra runs in this process (`up`, `rollout`) on gevent: the standard library is patched
# before anything imports it, as pyinfra's own CLI does (pyinfra_cli/__init__.py), so no thread,
# socket or lock exists unpatched.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402

from hermes_infra import commands  # noqa: E402
from hermes_infra.settings.loading import SettingsError  # noqa: E402


def _target(args) -> commands.Target:
    data = {}
    for item in args.data or []:
        key, _, value = item.partition("=")
        data[key] = value
    return commands.Target(inventory=args.target, port=args.port, user=args.user, key=args.key,
                           sudo=args.sudo, data=data, group_data=args.group_data or [])


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="user@host (e.g. root@203.0.113.7) or an inventory file (inventory/production.py)")
    parser.add_argument("--port", type=int, help="SSH port")
    parser.add_argument("--user", help="SSH user (use --sudo when it is not root)")
    parser.add_argument("--key", help="SSH private key file")
    parser.add_argument("--sudo", action="store_true", help="run operations with sudo")
    parser.add_argument("--data", action="append", metavar="KEY=VALUE",
                        help="override a settings section, e.g. --data 'swap={\"size\": \"4G\"}'")
    parser.add_argument("--group-data", action="append", metavar="DIR", help="extra group_data directory")


def cmd_up(args) -> int:
    from hermes_infra.release.up import up

    return up(_target(args), dry=args.dry, extra=args.pyinfra_args, lock_wait=args.lock_wait,
                       message=args.message)


def cmd_validate(args) -> int:
    hosts = commands.validate(_target(args))
    for name in hosts:
        print(f"{name}: settings are valid")
    return 0


def cmd_image_build(args) -> int:
    from hermes_infra.images import build as imagebuild

    built = imagebuild.build_image(args.version, repo=args.repo, tag=args.tag, force=args.force,
                                   extra_packages=args.extra or (), log=lambda msg: print(msg, file=sys.stderr))
    print(f"ref:      {built.ref}")
    print(f"image id: {built.image_id}")
    print(f"archive:  {built.archive} ({built.size_bytes / 1e6:.0f} MB)")
    if built.sqlite_version:
        print(f"sqlite:   {built.sqlite_version}")
    print(f"use it:   image = {{\"ref\": \"{built.ref}\", \"source\": \"archive\", \"archive\": \"{built.archive.parent}\"}}")
    return 0


def cmd_try(args) -> int:
    from hermes_infra import trylocal

    if args.destroy:
        return trylocal.destroy(args.name)
    return trylocal.run(args.name, check=not args.no_check)


def cmd_check(args) -> int:
    from hermes_infra.checks import cli as checks_cli

    return checks_cli.run(args, _target(args))


# Each module has `add_commands(subparsers, add_target_options, make_target)`.
COMMAND_MODULES = ("hermes_infra.release.cli", "hermes_infra.daytwo.cli", "hermes_infra.daytwo.alerts")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hermes-infra", description=(
        "Take a Debian host to a running, verified Hermes Agent gateway in Docker, and check it."))
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="bootstrap or update hosts (idempotent)",
                        epilog="Options after `--` are passed to pyinfra, e.g. `-- --limit staging --diff`.")
    _add_target_options(up)
    up.add_argument("--dry", action="store_true", help="show what would change; change nothing")
    up.add_argument("--lock-wait", type=float, default=0, metavar="SECONDS",
                    help="wait up to SECONDS for another deploy's lock on a host (default: stop at once)")
    up.add_argument("--message", "-m", help="a note for the deploy lock and the audit log (no secrets)")
    up.set_defaults(func=cmd_up)

    validate = sub.add_parser("validate", help="validate the settings of hosts without connecting")
    _add_target_options(validate)
    validate.set_defaults(func=cmd_validate)

    image = sub.add_parser("image", help="Hermes images")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build a Hermes image archive from PyPI, no registry needed")
    build.add_argument("--version", default="0.19.0", help="hermes-agent version from PyPI")
    build.add_argument("--repo", default="hermes-agent", help="image repository name")
    build.add_argument("--tag", default=None, help="image tag (default <version>-local)")
    build.add_argument("--extra", action="append", help="extra pip package to install")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=cmd_image_build)

    trycmd = sub.add_parser("try", help="deploy into a disposable local VM and check it")
    trycmd.add_argument("--destroy", action="store_true", help="stop and remove the VM")
    trycmd.add_argument("--name", default="try", help="VM name")
    trycmd.add_argument("--no-check", action="store_true", help="skip the compliance checks")
    trycmd.set_defaults(func=cmd_try)

    check = sub.add_parser("check", help="compliance checks against live hosts")
    _add_target_options(check)
    check.add_argument("--report", action="append", default=[], metavar="FORMAT[=PATH]",
                       help="text, json=PATH, junit=PATH, html=PATH (repeatable)")
    check.add_argument("--waivers", help="waivers file (YAML)")
    check.set_defaults(func=cmd_check)

    # Commands that live with their own concern register themselves (Kamal-style: the CLI is a
    # thin layer; each module's commands are callable and testable without it).
    import importlib

    for module in COMMAND_MODULES:
        try:
            registrar = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if not (error.name and (module == error.name or module.startswith(error.name + "."))):
                raise
            continue
        registrar.add_commands(sub, _add_target_options, _target)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` goes to pyinfra untouched: `hermes-infra up HOST -- --limit web --diff`.
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(argv)
    args.pyinfra_args = passthrough
    try:
        return args.func(args)
    except SettingsError as error:
        print(f"hermes-infra: {error}", file=sys.stderr)
        print("Nothing was changed on any host.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
