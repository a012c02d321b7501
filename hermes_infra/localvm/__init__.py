"""A disposable local Debian 13 VM: the embedded default target of hermes-infra.

`hermes-infra try` and the end-to-end tests need a real Debian host with systemd, SSH and
room for Docker, on machines that may have no Docker engine and no working KVM. This
package builds a cached base image with debootstrap (no VM needed to build it) and boots
copy-on-write VMs from it under QEMU (KVM when it truly works, TCG otherwise), reachable
only on 127.0.0.1.

    from hermes_infra.localvm import ensure_vm, disposable_vm

    vm = ensure_vm("try", forwards=[8642])      # reused while alive
    host, data = vm.pyinfra_host()              # pyinfra inventory entry
    with disposable_vm(forwards=[8642]) as vm:  # tests: always destroyed
        rc, out, err = vm.ssh("systemctl is-system-running --wait")
"""
from hermes_infra.localvm.accel import Accel, detect_accel
from hermes_infra.localvm.errors import (
    ImageBuildError,
    LocalVMError,
    VMBootError,
    VMNotFound,
)
from hermes_infra.localvm.image import BaseImage, ensure_image, find_image, images_dir
from hermes_infra.localvm.lifecycle import (
    destroy_leftover_vms,
    disposable_vm,
    ensure_vm,
    prune_images,
)
from hermes_infra.localvm.ports import free_port, free_ports
from hermes_infra.localvm.qemu import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MB,
    QemuSpec,
    qemu_command,
)
from hermes_infra.localvm.recipe import BASE_PACKAGES, ImageRecipe, recipe_hash
from hermes_infra.localvm.ssh import SSHConnection, SSHResult
from hermes_infra.localvm.state import VMState
from hermes_infra.localvm.vm import LocalVM, list_vms, vms_dir

__all__ = [
    "Accel",
    "BASE_PACKAGES",
    "BaseImage",
    "DEFAULT_CPUS",
    "DEFAULT_MEMORY_MB",
    "ImageBuildError",
    "ImageRecipe",
    "LocalVM",
    "LocalVMError",
    "QemuSpec",
    "SSHConnection",
    "SSHResult",
    "VMBootError",
    "VMNotFound",
    "VMState",
    "destroy_leftover_vms",
    "detect_accel",
    "disposable_vm",
    "ensure_image",
    "ensure_vm",
    "find_image",
    "free_port",
    "free_ports",
    "images_dir",
    "list_vms",
    "prune_images",
    "qemu_command",
    "recipe_hash",
    "vms_dir",
]
