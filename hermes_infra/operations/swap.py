"""The swap file: created, resized when its size setting changes, in fstab, swappiness persisted.

A 4 GB VPS without swap gets its gateway OOM-killed on the first large tool output; swap is
the safety net, swappiness keeps it a net rather than a working set.
"""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation

from hermes_infra.operations.files import root_file
from hermes_infra.plan.hostplan import SwapPlan, Writer, fstab_line


def create_commands(path: str, size_bytes: int) -> list[str]:
    quoted = shlex.quote(path)
    mib = size_bytes // (1024 * 1024)
    return [
        # fallocate is instant on ext4; dd is the fallback where fallocate makes holes
        # that swapon refuses (some filesystems).
        f"rm -f {quoted} && (fallocate -l {mib}M {quoted} || dd if=/dev/zero of={quoted} bs=1M count={mib} status=none)",
        f"chmod 600 {quoted} && chown 0:0 {quoted}",
        f"mkswap {quoted} >/dev/null",
        f"swapon {quoted}",
    ]


@operation()
def swap_file(plan: SwapPlan):
    """Ensure a swap file of exactly `plan.size_bytes` is active at `plan.path` and in fstab
    (a size of 0 removes a swap file hermes-infra created)."""
    path, size_bytes, state = plan.path, plan.size_bytes, plan.current
    quoted = shlex.quote(path)
    fstab_remove = f"awk -v p={shlex.quote(path)} '$1 != p' /etc/fstab > /etc/fstab.hermes-infra.new && mv -f /etc/fstab.hermes-infra.new /etc/fstab"
    if size_bytes == 0:
        if state["active"]:
            yield f"swapoff {quoted}"
        if state["size_bytes"] >= 0:
            yield f"rm -f {quoted}"
        if state["in_fstab"]:
            yield fstab_remove
        if state["size_bytes"] < 0 and not state["in_fstab"]:
            host.noop("no swap file is managed (swap.size is 0)")
        return
    acted = False
    if state["size_bytes"] != size_bytes:
        if state["active"]:
            yield f"swapoff {quoted}"
        yield from create_commands(path, size_bytes)
        acted = True
    elif not state["active"]:
        yield f"swapon {quoted} 2>/dev/null || (mkswap {quoted} >/dev/null && swapon {quoted})"
        acted = True
    if not state["in_fstab"]:
        yield f"echo {shlex.quote(fstab_line(path))} >> /etc/fstab"
        acted = True
    if not acted:
        host.noop(f"swap file {path} is active with the configured size")


@operation()
def swappiness(plan: SwapPlan):
    """The running kernel's vm.swappiness is the configured one (the file keeps it on reboot)."""
    if plan.current.get("swappiness") == plan.swappiness:
        host.noop(f"vm.swappiness is {plan.swappiness}")
        return
    yield f"sysctl -q -w vm.swappiness={int(plan.swappiness)}"


@deploy("Swap")
def swap(plan: SwapPlan, writer: Writer):
    swap_file(name=f"Swap file {plan.path} ({plan.size_bytes // (1024 * 1024)} MiB)", plan=plan)
    root_file(name=f"vm.swappiness = {plan.swappiness} persisted in {plan.sysctl_file.path}", file=plan.sysctl_file,
              writer=writer)
    swappiness(name=f"vm.swappiness = {plan.swappiness} now", plan=plan)
