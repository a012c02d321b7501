"""`hermes-infra try`: the whole product on a disposable local VM, with no VPS needed.

Builds (or reuses) the VM image and a registry-free Hermes image, boots a VM, deploys into
it with the same deploy as any VPS, runs the compliance checks, and ends with something to
use: the API forwarded to a free port on 127.0.0.1 (QEMU's user network forwards the VM's
loopback-bound port) and a `curl` line that works as printed. The key never reaches the
terminal or a process argument: it is read as the data dir's owner into a 0600 header file
on this machine that curl reads with `-H @FILE`.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from hermes_infra import commands
from hermes_infra.release.up import up

API_PORT = 8642
PROXY_PORT = 18642
"""The VM's port that QEMU forwards: QEMU's user network delivers to the VM's NIC address, and the
gateway is published on the VM's 127.0.0.1 only (as on a VPS), so a socket-activated
`systemd-socket-proxyd` in the VM relays PROXY_PORT to 127.0.0.1:8642. Nothing but QEMU's
forward (bound to this machine's 127.0.0.1) reaches the VM's NIC."""
PROXY_UNITS = {
    "hermes-try-api.socket": f"""[Unit]
Description=hermes-infra try: relay for the forwarded API port (local VM only)

[Socket]
ListenStream={PROXY_PORT}

[Install]
WantedBy=sockets.target
""",
    "hermes-try-api.service": f"""[Unit]
Description=hermes-infra try: relay to the gateway API on 127.0.0.1:{API_PORT}
Requires=hermes-try-api.socket

[Service]
ExecStart=/usr/lib/systemd/systemd-socket-proxyd 127.0.0.1:{API_PORT}
DynamicUser=yes
PrivateTmp=yes
""",
}


def local_image_dir(version: str = "0.19.0") -> Path:
    """Where `hermes-infra image build --version VERSION` caches its image (not built here)."""
    from hermes_infra.images import build as imagebuild

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
    from hermes_infra.images import build as imagebuild
    from hermes_infra.localvm import ensure_vm

    started = time.monotonic()
    say("building or reusing the Hermes image (from PyPI, no registry)")
    built = imagebuild.build_image(log=lambda msg: print(f"    {msg}", file=sys.stderr))
    say(f"image {built.ref} ready ({time.monotonic() - started:.0f}s)")
    say(f"booting or reusing local VM '{name}' (QEMU; first run builds the VM image)")
    vm = ensure_vm(name, forwards=[PROXY_PORT])
    say(f"VM up, SSH on 127.0.0.1:{vm.ssh_port}, API forwarded to 127.0.0.1:{vm.host_port(PROXY_PORT)} "
        f"({time.monotonic() - started:.0f}s)")
    target = local_target(vm, built.archive.parent)
    code = up(target)
    if code != 0:
        say(f"deploy failed (exit {code}); the VM is kept for inspection: "
            f"ssh -i {vm.state.key_path} -p {vm.ssh_port} root@127.0.0.1")
        return code
    if check:
        from hermes_infra.checks import runner

        say("running the compliance checks")
        code = runner.run_checks([target], reports=["text"])
    _, data = vm.pyinfra_host()
    expose_api(vm)
    api = f"http://127.0.0.1:{vm.host_port(PROXY_PORT)}"
    header = write_key_header(vm)
    answer = probe(api, header)
    say(f"done in {time.monotonic() - started:.0f}s")
    print(usage_text(name, vm, data, api, header, answer, up_args=target.shown_cli_args()))
    return code


def proxy_script() -> str:
    import shlex

    parts = [f"printf '%s' {shlex.quote(text)} > /etc/systemd/system/{unit}" for unit, text in PROXY_UNITS.items()]
    return " && ".join(parts + ["systemctl daemon-reload", "systemctl enable --now hermes-try-api.socket"])


def expose_api(vm) -> None:
    result = vm.ssh(proxy_script(), timeout=120)
    if result.rc != 0:
        say(f"could not start the API relay in the VM: {result.stderr.strip()[:300]}")


def write_key_header(vm, data_dir: str = "/root/.hermes", uid: int = 10000, gid: int = 10000) -> Path:
    """`Authorization: Bearer <key>` from the VM's `.env` (read as its owner, never followed) into
    a 0600 file next to the VM's state; the key is never printed."""
    from hermes_infra.host.hostfacts import DataDirRequest, key_header_script

    result = vm.ssh(key_header_script(DataDirRequest("hermes", data_dir, uid, gid)), timeout=60)
    path = Path(vm.directory) / "api-key.header"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(result.stdout.strip() + "\n")
    os.chmod(path, 0o600)
    return path


def probe(api: str, header: Path, timeout: float = 60) -> str:
    """What the forwarded API answers on /v1/models with the key (retried: the first request
    through a fresh forward can be reset)."""
    import urllib.error
    import urllib.request

    key_line = header.read_text().strip()
    name, _, value = key_line.partition(": ")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{api}/v1/models", headers={name: value})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return f"{response.status}"
        except urllib.error.HTTPError as error:
            return f"{error.code}"
        except OSError as error:
            last = str(error)
            time.sleep(2)
    return last


PROVIDER_FILE = "~/.config/hermes-infra/try"


def local_inventory_note(name: str) -> str:
    """inventory/local.py names the VM `try` and group_data/local.py holds try's settings: from the
    repository's directory it is the same target, shorter (another VM name is not in it)."""
    if name != "try":
        return ""
    return ("\n              or, from the repository's directory, the same target as an inventory: "
            "inventory/local.py\n              (its settings: group_data/local.py), e.g. hermes-infra status inventory/local.py")


def shown_target(up_args: list[str]) -> str:
    """The try VM's target as the deploy ran it (connection and try's settings), quoted to paste."""
    return " ".join(shlex.quote(arg) for arg in up_args) if up_args else "<the try VM's target>"


def provider_steps(up_args: list[str]) -> str:
    """How to give the try VM a model provider: the key in a 0600 group-data file (a key in
    `--data` would sit in `ps` for the whole run), the same deploy with `--group-data`. Printed
    from column 0 so the heredoc can be pasted as it is."""
    up = shown_target(up_args)
    model = '{"provider": "custom", "default": "MODEL", "base_url": "http://10.0.0.5:8000/v1", "api_key": "KEY"}'
    return f"""mkdir -p {PROVIDER_FILE} && chmod 700 {PROVIDER_FILE}
cat > {PROVIDER_FILE}/all.py <<'PY'
gateways = [{{"name": "hermes", "config": {{"model": {model}}}}}]
PY
chmod 600 {PROVIDER_FILE}/all.py
hermes-infra up {up} --group-data {PROVIDER_FILE}"""


def usage_text(name: str, vm, data: dict, api: str, header: Path, answer: str, up_args: list[str] | None = None) -> str:
    ssh = f"ssh -i {data['ssh_key']} -p {vm.ssh_port} -o StrictHostKeyChecking=no root@127.0.0.1"
    target = shown_target(up_args or [])
    return f"""
Hermes gateway running in local VM '{name}' (GET /v1/models with the key just answered {answer}).
  API:        {api}   (forwarded from the VM's 127.0.0.1:{API_PORT}; only this machine reaches it)
  Try it:     curl -H @{header} {api}/v1/models
  Chat:       alive is not ready: without a model provider every chat answers 500. Set one
              (the key in a 0600 file, never on the command line, where `ps` shows it; a named
              provider instead: {{"provider": "openrouter", "default": "MODEL", "api_key": "KEY"}};
              where each provider's key goes: "The model provider" in the README):
{provider_steps(up_args or [])}
              then:
              curl -H @{header} -H 'Content-Type: application/json' {api}/v1/chat/completions \\
                -d '{{"model": "hermes-agent", "messages": [{{"role": "user", "content": "Hello"}}]}}'
  API key:    in {header} (0600) and in /root/.hermes/.env on the VM; never printed
  Day two:    the same target as the deploy, with try's own settings (Debian's Docker packages, the
              local image archive, swap): without them `check` fails twice and `up` would swap the
              Docker packages and pull an image the VM cannot reach.
              hermes-infra status {target}
              hermes-infra check {target}
              hermes-infra smoke {target}   (one real chat turn: costs tokens)
              (also: logs, restart, pairing, hermes, backup, with the same target){local_inventory_note(name)}
  Redeploy:   hermes-infra up {target}
  SSH:        {ssh}
  Remove:     hermes-infra try --destroy{'' if name == 'try' else ' --name ' + name}
"""


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
