"""The two ways the rest of hermes-infra gets a VM.

- `ensure_vm("try")`: the long-lived VM of `hermes-infra try`, reused across runs while it
  is alive, so the second `try` skips the image build and the boot.
- `disposable_vm()`: a context manager for tests that destroys its VM on every way out
  (exception, KeyboardInterrupt), with an atexit net for anything still left when the
  interpreter exits (e.g. a generator-based fixture that was never finalised).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from hermes_infra.localvm.accel import Accel
from hermes_infra.localvm.errors import LocalVMError
from hermes_infra.localvm.image import BaseImage, ensure_image, images_dir
from hermes_infra.localvm.qemu import DEFAULT_CPUS, DEFAULT_MEMORY_MB
from hermes_infra.localvm.recipe import ImageRecipe, recipe_hash
from hermes_infra.localvm.vm import (
    DEFAULT_SSH_TIMEOUT,
    LocalVM,
    list_vms,
    vm_dir,
    vm_lock,
)

log = logging.getLogger(__name__)


def ensure_vm(
    name: str = "try",
    *,
    recipe: ImageRecipe | None = None,
    image: BaseImage | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    cpus: int = DEFAULT_CPUS,
    forwards: Iterable[int] = (),
    accel: Accel | None = None,
    ssh_timeout: float = DEFAULT_SSH_TIMEOUT,
) -> LocalVM:
    """A running, SSH-reachable VM called `name`: reused if alive, else built and booted.

    A reused VM keeps its size; missing `forwards` are added to it at runtime. A VM whose
    QEMU is gone (host reboot, crash) is replaced by a fresh one from the cached image.
    """
    forwards = list(forwards)
    with vm_lock(name):
        if (vm_dir(name) / "state.json").exists():
            with contextlib.suppress(LocalVMError):
                vm = LocalVM.load(name)
                if vm.is_running():
                    for port in forwards:
                        vm.add_forward(port)
                    vm.wait_for_ssh(ssh_timeout)
                    log.info("reusing running VM %s", name)
                    return vm
        image = image or ensure_image(recipe)
        vm = LocalVM.boot(name, image, memory_mb=memory_mb, cpus=cpus, forwards=forwards,
                          accel=accel, replace=True)
    try:
        vm.wait_for_ssh(ssh_timeout)
    except BaseException:
        vm.destroy()
        raise
    return vm


_live_lock = threading.Lock()
_live: dict[str, LocalVM] = {}
_atexit_registered = False


def _track(vm: LocalVM) -> None:
    global _atexit_registered
    with _live_lock:
        _live[vm.name] = vm
        if not _atexit_registered:
            atexit.register(destroy_leftover_vms)
            _atexit_registered = True


def _untrack(vm: LocalVM) -> None:
    with _live_lock:
        _live.pop(vm.name, None)


def destroy_leftover_vms() -> None:
    """Destroy every disposable VM this process started and has not destroyed yet."""
    with _live_lock:
        leftovers = list(_live.values())
        _live.clear()
    for vm in leftovers:
        with contextlib.suppress(Exception):
            vm.destroy()


@contextlib.contextmanager
def disposable_vm(
    prefix: str = "test",
    *,
    recipe: ImageRecipe | None = None,
    image: BaseImage | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    cpus: int = DEFAULT_CPUS,
    forwards: Iterable[int] = (),
    accel: Accel | None = None,
    ssh_timeout: float = DEFAULT_SSH_TIMEOUT,
    disk: Path | None = None,
) -> Iterator[LocalVM]:
    """Boot a fresh VM (unique name `<prefix>-<pid>-<random>`), yield it SSH-ready, always destroy it.

    `disk`: start from a disk saved by `LocalVM.save_disk` instead of the bare base image."""
    image = image or ensure_image(recipe)
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    vm = LocalVM.boot(name, image, memory_mb=memory_mb, cpus=cpus, forwards=forwards, accel=accel, disk=disk)
    _track(vm)
    try:
        vm.wait_for_ssh(ssh_timeout)
        yield vm
    finally:
        try:
            vm.destroy()
        finally:
            _untrack(vm)


def prune_images(keep: Iterable[ImageRecipe] = ()) -> list[Path]:
    """Delete cached base images other than those of `keep` (default: the default recipe).

    Images still backing a VM in the cache are kept: deleting a base under a live overlay
    would break that VM at its next boot. Returns the directories removed.
    """
    wanted = {recipe_hash(r) for r in (list(keep) or [ImageRecipe()])}
    wanted |= {vm.state.recipe_hash for vm in list_vms()}
    removed = []
    for entry in images_dir().iterdir():
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in wanted:
            shutil.rmtree(entry, ignore_errors=True)
            (images_dir() / f".{entry.name}.lock").unlink(missing_ok=True)
            removed.append(entry)
    return removed
