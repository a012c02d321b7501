"""pyinfra driven through its API, in this process: what `pyinfra INVENTORY deploy.py` does
(pyinfra_cli/cli.py `_main`, pyinfra 3.10), step by step in the same order, with the deploy lock
taken between connecting and loading the deploy, over the connections pyinfra opened.

One process and one SSH connection per host: no second Python start, no second handshake, and
the settings (`--data`, secrets included) never leave this process's memory. pyinfra's own
arguments (`--diff`, `-v`, `--serial`, `--limit` ...) are parsed by pyinfra's own command line
definition, so they mean what they mean to `pyinfra`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import click
import gevent
import pyinfra
from pyinfra import logger
from pyinfra.api import Config
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.api.output import set_echo, set_formatter
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_config, ctx_inventory
from pyinfra_cli import cli as pyinfra_cli
from pyinfra_cli.inventory import make_inventory
from pyinfra_cli.log import LogHandler
from pyinfra_cli.prints import print_meta, print_results

from hermes_infra.commands import DEPLOY_FILE, SHOW_DIFF_ATTRIBUTE, Target
from hermes_infra.host.sshchannel import exchange
from hermes_infra.release.remote import Result

CHANGES_NOTE = """
    Detected changes may not include every change pyinfra will execute.
    Hidden side effects of operations may alter behaviour of future operations,
    this will be shown in the results. The remote state will always be updated
    to reflect the state defined by the input operations."""


class PyinfraArgsError(ValueError):
    """pyinfra's arguments given after `--` do not parse; the message is click's."""


def pyinfra_params(target: Target, *, dry: bool, extra: list[str]) -> dict:
    """pyinfra's options for this run, parsed by pyinfra's own click command (nothing runs)."""
    argv = [*target.pyinfra_args(), str(DEPLOY_FILE), "--dry" if dry else "-y", *extra]
    try:
        params = dict(pyinfra_cli.cli.make_context("pyinfra", argv).params)
    except click.ClickException as error:
        raise PyinfraArgsError(f"pyinfra arguments {shlex.join(extra)!r}: {error.format_message()}") from None
    # In memory only: a process's arguments are readable by every user of the machine.
    params["data"] = (*(f"{key}={value}" for key, value in target.data.items()), *params["data"])
    return params


def _setup_output(params: dict) -> None:
    """What pyinfra_cli/main.py and `_main` set up before anything is printed, once a process."""
    pyinfra.is_cli = True
    set_formatter(click.style)
    set_echo(click.echo)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)
    if not any(isinstance(handler, LogHandler) for handler in logger.handlers):
        pyinfra_cli._setup_log_level(params["debug"], params["debug_all"])
    else:
        logger.setLevel(logging.DEBUG if params["debug"] or params["debug_all"] else logging.INFO)


class PyinfraRun:
    """One pyinfra run: `connect()`, then `deploy()` (changes, unless `--dry`), `disconnect()`."""

    def __init__(self, target: Target, *, dry: bool = False, extra: list[str] | None = None):
        self.target = target
        self.dry = dry
        self.params = pyinfra_params(target, dry=dry, extra=list(extra or []))
        self.state = None

    def connect(self):
        """Load the inventory and connect to every host in the limit; returns pyinfra's State."""
        p = self.params
        _setup_output(p)
        state = pyinfra_cli._setup_state(p["verbosity"], p["yes"])
        state.cwd = self.target.cwd
        # `up --dry` shows every managed file's change (masked), not only pyinfra's summary.
        setattr(state, SHOW_DIFF_ATTRIBUTE, self.dry)
        self.state = state
        config = Config()
        ctx_config.set(config)
        config = pyinfra_cli._set_config(
            config, p["config_filename"], p["sudo"], p["sudo_user"], p["use_sudo_password"], p["use_sudo_login"],
            p["same_sudo_password"], p["su_user"], p["dzdo"], p["dzdo_user"], p["parallel"], p["shell_executable"],
            p["fail_percent"], p["yes"], p["diff"], p["retry"], p["retry_delay"])
        override_data = pyinfra_cli._set_override_data(p["data"], p["ssh_user"], p["ssh_key"], p["ssh_key_password"],
                                                       p["ssh_port"], p["ssh_password"])
        if not p["yes"]:
            pyinfra_cli._set_fail_prompts(state, config)
        logger.info("--> Loading inventory...")
        inventory = make_inventory(p["inventory"], cwd=state.cwd, override_data=override_data,
                                   group_data_directories=p["group_data"])
        ctx_inventory.set(inventory)
        limit = pyinfra_cli._apply_inventory_limit(inventory, p["limit"])
        limit = pyinfra_cli._apply_inventory_exclude(inventory, limit, p["exclude"])
        state.init(inventory, config, initial_limit=limit)
        self.config = config
        logger.info("--> Connecting to hosts...")
        state.set_stage(StateStage.Connect)
        connect_all(state)
        return state

    def deploy(self) -> int:
        """Load the deploy file (facts are read here), show or skip change detection, run it
        unless `--dry`, print the results table. Returns the exit code pyinfra's CLI would."""
        p, state = self.params, self.state
        state.set_stage(StateStage.Prepare)
        logger.info("--> Preparing operation files...")
        pyinfra_cli._prepare_deploy_operations(state, self.config, [str(DEPLOY_FILE)])
        if p["yes"]:
            logger.info("--> Skipping change detection")
        else:
            logger.info("--> Detected changes:")
            print_meta(state)
            click.echo(CHANGES_NOTE, err=True)
        if not self.dry:
            logger.info("--> Beginning operation run...")
            state.set_stage(StateStage.Execute)
            run_ops(state, serial=p["serial"], no_wait=p["no_wait"])
            logger.info("--> Results:")
            state.set_stage(StateStage.Disconnect)
            print_results(state)
        return 1 if state.failed_hosts else 0

    def stop(self) -> None:
        """End every greenlet still running an operation (after a Ctrl-C in the main one)."""
        if self.state is not None:
            self.state.pool.kill(block=True, timeout=10)

    def disconnect(self) -> None:
        if self.state is not None and self.state.initialised:
            logger.info("--> Disconnecting from hosts...")
            disconnect_all(self.state)


def run_unlocked(target: Target, *, dry: bool, extra: list[str] | None = None) -> int:
    """A run without the release protocol (`up --dry`): connect, show, disconnect."""
    run = PyinfraRun(target, dry=dry, extra=extra)
    try:
        with interrupts_to_main():
            run.connect()
            return run.deploy()
    except PyinfraError as error:
        logger.error(f"--> pyinfra error: {error}")
        return 1
    except KeyboardInterrupt:
        run.stop()
        click.echo("Exiting upon user request!", err=True)
        return 130
    finally:
        run.disconnect()


class PyinfraRemote:
    """A host pyinfra has connected: one command at a time on a new channel of the SSH
    transport its operations use (`sshchannel.exchange`), `sudo -n` around it with `--sudo`."""

    def __init__(self, host, sudo: bool = False):
        self.host = host
        self.name = host.name
        self.sudo = sudo

    def run(self, command: str, timeout: float = 120) -> Result:
        if self.sudo:
            command = f"sudo -n sh -c {shlex.quote(command)}"
        client = getattr(self.host.connector, "client", None)
        if client is not None:
            done = exchange(client.get_transport(), command, timeout=timeout)
            return Result(done.rc, done.text, done.stderr)
        if type(self.host.connector).__name__ == "LocalConnector":
            done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)
            return Result(done.returncode, done.stdout, done.stderr)
        raise RuntimeError(f"{self.name}: connector {type(self.host.connector).__name__} has no SSH client; "
                           "hermes-infra locks and audits hosts over SSH (or @local)")

    def close(self) -> None:
        """pyinfra closes the connection (`PyinfraRun.disconnect`)."""


INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def interrupts_to_main() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP become a KeyboardInterrupt in the main greenlet, which then
    stops the operations and releases the locks.

    A Python signal handler would raise in whichever greenlet runs when the signal lands: an SSH
    transport's, the lock heartbeat's or an operation's, which swallow it, and the deploy runs on
    (commit 2d4d3ee). gevent's signal handler runs in the hub instead, and throws into the main
    greenlet wherever it waits."""
    main = gevent.getcurrent()
    watchers = []
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.getsignal(signum) for signum in INTERRUPT_SIGNALS}
        watchers = [gevent.signal_handler(signum, gevent.kill, main, KeyboardInterrupt)
                    for signum in INTERRUPT_SIGNALS]
    try:
        yield
    finally:
        for watcher in watchers:
            watcher.cancel()
        if watchers:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def output_to(stream) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors too: pyinfra writes through click
    and logging) into `stream`, a file with a descriptor; `None` leaves them alone."""
    if stream is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


__all__ = ["PyinfraArgsError", "PyinfraRemote", "PyinfraRun", "interrupts_to_main", "output_to", "run_unlocked"]
