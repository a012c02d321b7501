"""Getting the Hermes image onto the host: pulled (optionally through a mirror), or a
`docker save` archive from the control machine streamed into `docker load` over the deploy's
SSH connection (hosts that cannot reach Docker Hub)."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, deploy, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.connectors.util import make_unix_command_for_host
from pyinfra.operations import files

from hermes_infra.plan.hostplan import ImagePlan, Writer
from hermes_infra.host.sshchannel import exchange

# Read by pyinfra's own command runner, not by the shell command.
_RUNNER_ARGUMENTS = {"_stdin", "_get_pty", "_timeout", "_success_exit_codes"}


@dataclass(frozen=True)
class StreamedArchive:
    """What `load_streamed` needs; the sudo/su arguments (a password among them, maybe) stay
    out of the repr that pyinfra prints for a function command."""

    path: str
    arguments: dict = field(repr=False)


def load_streamed(state, host, archive: StreamedArchive) -> bool:
    """Send the archive through one new channel of the deploy's SSH connection into `docker
    load`: sending and loading overlap (the guest decompresses while the rest is in flight), and
    no copy of hundreds of MB is left on the host's disk."""
    command = make_unix_command_for_host(state, host, StringCommand("docker", "load", "-q"), **archive.arguments)
    with open(archive.path, "rb") as stream:
        result = exchange(host.connector.client.get_transport(), command.get_raw_value(), stdin=stream)
    if result.rc != 0:
        logger.error(f"{host.print_prefix}docker load of {archive.path} failed (exit {result.rc}): "
                     f"{result.stderr.strip()[-2000:] or result.text.strip()[-2000:]}")
        return False
    return True


@operation()
def image_present(plan: ImagePlan, writer: Writer):
    """The host has `plan.ref`, and for archives exactly the archive's layers."""
    ref = shlex.quote(plan.ref)
    if plan.present:
        host.noop(f"{plan.ref} is present" + (" with the archive's layers" if plan.source == "archive" else ""))
        return
    if plan.source == "pull":
        if plan.pull_ref:
            mirrored = shlex.quote(plan.pull_ref)
            yield f"docker pull -q {mirrored} && docker tag {mirrored} {ref}"
        else:
            yield f"docker pull -q {ref}"
        return
    cache_dir = shlex.quote(plan.cache_dir)
    if isinstance(host.connector, SSHConnector):
        arguments = {key: value for key, value in (host.current_op_global_arguments or {}).items()
                     if key in CONNECTOR_ARGUMENT_KEYS and key not in _RUNNER_ARGUMENTS}
        yield FunctionCommand(load_streamed, (StreamedArchive(plan.archive_path, arguments),), {})
        yield from _tagged(plan)
        # Archives that earlier versions uploaded and kept: images are hundreds of MB.
        yield f"if [ -d {cache_dir} ]; then find {cache_dir} -maxdepth 1 -type f -name '*.tar' -delete; fi"
        return
    # Other connectors (@local, @docker) have no channel to stream into: upload, then load.
    yield f"install -d -m 0700 {cache_dir}"
    # files.put skips the upload when the host already has a file with this checksum.
    yield from files.put._inner(src=plan.archive_path, dest=plan.remote_archive, mode="0600")
    yield f"docker load -q -i {shlex.quote(plan.remote_archive)}"
    yield from _tagged(plan)
    # Keep only the archive just loaded.
    yield (f"find {cache_dir} -maxdepth 1 -type f "
           f"! -name {shlex.quote(plan.remote_archive.rsplit('/', 1)[1])} -delete")


def _tagged(plan: ImagePlan):
    if plan.archive_ref and plan.archive_ref != plan.ref:
        yield f"docker tag {shlex.quote(plan.archive_ref)} {shlex.quote(plan.ref)}"


@deploy("Hermes image")
def image(plan: ImagePlan, writer: Writer):
    image_present(name=f"Image {plan.ref} ({plan.source})", plan=plan, writer=writer)
