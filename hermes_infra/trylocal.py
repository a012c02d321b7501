"""`hermes-infra try`: the whole product on a disposable local VM, with no VPS needed.

Builds (or reuses) the VM image and a registry-free Hermes image, boots a VM, deploys into
it with the same deploy as any VPS, runs the compliance checks, and prints how to reach it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from hermes_infra import commands

API_PORT = 8642


def local_image_dir(version: str = "0.19.0") -> Path:
    """Where `hermes-infra image build --version VERSION` caches its image (not built here)."""
    from hermes_infra import imagebuild

    return imagebuild.images_dir() / imagebuild.recipe_hash(version)


def local_target(vm, image_dir: Path) -> commands.Target:
    alias, data = vm.pyinfra_host()
    extra = {key: str(value) for key, value in data.items() if key not in ("ssh_port", "ssh_user", "ssh_key")}
    return commands.Target(
        inventory=alias, port=int(data["ssh_port"]), user=data.get("ssh_user", "root"), key=str(data["ssh_key"]),
        data={**extra, **commands.local_vm_data(str(image_dir))},
    )


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def run(name: str = "try", *, check: bool = True) -> int:
    from hermes_infra import imagebuild
    from hermes_infra.localvm import ensure_vm

    started = time.monotonic()
    say("building or reusing the Hermes image (from PyPI, no registry)")
    built = imagebuild.build_image(log=lambda msg: print(f"    {msg}", file=sys.stderr))
    say(f"image {built.ref} ready ({time.monotonic() - started:.0f}s)")
    say(f"booting or reusing local VM '{name}' (QEMU; first run builds the VM image)")
    vm = ensure_vm(name)
    say(f"VM up, SSH on 127.0.0.1:{vm.ssh_port} ({time.monotonic() - started:.0f}s)")
    target = local_target(vm, built.archive.parent)
    code = commands.up(target)
    if code != 0:
        say(f"deploy failed (exit {code}); the VM is kept for inspection: "
            f"ssh -i {vm.state.key_path} -p {vm.ssh_port} root@127.0.0.1")
        return code
    if check:
        from hermes_infra.checks import runner

        say("running the compliance checks")
        code = runner.run_checks([target], reports=["text"])
    _, data = vm.pyinfra_host()
    say(f"done in {time.monotonic() - started:.0f}s")
    print(f"""
Hermes gateway running in local VM '{name}'.
  SSH:        ssh -i {data['ssh_key']} -p {vm.ssh_port} -o StrictHostKeyChecking=no root@127.0.0.1
  API tunnel: ssh -i {data['ssh_key']} -p {vm.ssh_port} -o StrictHostKeyChecking=no -N -L {API_PORT}:127.0.0.1:{API_PORT} root@127.0.0.1
              then: curl http://127.0.0.1:{API_PORT}/health
  API key:    in /root/.hermes/.env on the VM (API_SERVER_KEY)
  Re-deploy:  pyinfra inventory/local.py deploy.py -y      Remove: hermes-infra try --destroy
""")
    return code


def destroy(name: str = "try") -> int:
    from hermes_infra.localvm import LocalVM, VMNotFound

    try:
        vm = LocalVM.load(name)
    except VMNotFound:
        say(f"no local VM named '{name}'")
        return 0
    vm.destroy()
    say(f"local VM '{name}' stopped and removed")
    return 0
