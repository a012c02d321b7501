"""What the CLI does, as functions that can be called and tested on their own (Kamal-style).

Targets and inventories, and `validate`: every host's settings checked without connecting.
`up` (`release/up.py`) then hands the run to pyinfra with the packaged deploy file: the same
deploy that `pyinfra inventory/<env>.py deploy.py` runs.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hermes_infra.images.archive import ImageArchiveError, inspect_archive
from hermes_infra.settings.loading import SettingsError, collect, host_data_layers, settings_from_raw

PACKAGE_DIR = Path(__file__).parent
DEPLOY_FILE = PACKAGE_DIR / "deploy_file.py"
SHOW_DIFF_ENV = "HERMES_INFRA_SHOW_DIFF"
"""Set to show every managed file's diff (masked), as `up --dry` does, under plain `pyinfra`."""
SHOW_DIFF_ATTRIBUTE = "hermes_infra_show_diff"
"""Set on pyinfra's State by `up --dry`: the deploy prints what each managed file would become."""
REDACTED = "<redacted>"
# A value is secret by the name of its setting: api.key, weixin.token, model.api_key,
# dashboard.basic_auth_password_hash, ssh_password, FOO_TOKEN, ... Over-redacting costs nothing
# in an echoed command; a secret on the terminal costs the secret.
SECRET_NAME = re.compile(r"(?i)(key|token|secret|passw(or)?d|passphrase|hash|credentials?|auth|cookie|private)")
SECRET_MAPS = ("env", "secret_env")
"""Settings whose every value is a secret (`Annotated[dict[str, SecretStr], ...]`)."""


def _redacted_tree(value: object) -> object:
    if isinstance(value, dict):
        return {key: (REDACTED if isinstance(key, str) and SECRET_NAME.search(key)
                      else {k: REDACTED for k in item} if key in SECRET_MAPS and isinstance(item, dict)
                      else _redacted_tree(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted_tree(item) for item in value]
    return value


def redact_data_value(key: str, value: str) -> str:
    """A `--data KEY=VALUE` value fit to print: every secret in it replaced by `<redacted>`.
    The one function every echoed command goes through (`Target.cli_args`)."""
    from pyinfra_cli.util import parse_cli_arg

    if SECRET_NAME.search(key) or key in SECRET_MAPS:
        return REDACTED
    parsed = parse_cli_arg(value)
    if isinstance(parsed, (dict, list)):
        redacted = _redacted_tree(parsed)
        return value if redacted == parsed else json.dumps(redacted, separators=(",", ":"))
    return value


@dataclass
class Target:
    """Where to deploy: an inventory file, or one SSH target (`root@203.0.113.7`)."""

    inventory: str
    port: int | None = None
    user: str | None = None
    key: str | None = None
    sudo: bool = False
    data: dict[str, str] = field(default_factory=dict)
    group_data: list[str] = field(default_factory=list)
    cwd: str = field(default_factory=os.getcwd)

    def __post_init__(self) -> None:
        # `root@203.0.113.7`: pyinfra takes the user separately.
        if "@" in self.inventory and not Path(self.inventory).exists() and not self.inventory.startswith("@"):
            user, _, hostname = self.inventory.rpartition("@")
            self.user = self.user or user
            self.inventory = hostname

    def override_data(self) -> dict[str, object]:
        from pyinfra_cli.util import parse_cli_arg

        data: dict[str, object] = {key: parse_cli_arg(value) for key, value in self.data.items()}
        if self.port:
            data["ssh_port"] = self.port
        if self.user:
            data["ssh_user"] = self.user
        if self.key:
            data["ssh_key"] = self.key
        return data

    def _args(self, port_flag: str, key_flag: str) -> list[str]:
        args = []
        if self.port:
            args += [port_flag, str(self.port)]
        if self.key:
            args += [key_flag, self.key]
        if self.sudo:
            args.append("--sudo")
        for directory in self.group_data:
            args += ["--group-data", directory]
        return args

    def data_args(self, *, redacted: bool) -> list[str]:
        args = []
        for key, value in self.data.items():
            args += ["--data", f"{key}={redact_data_value(key, value) if redacted else value}"]
        return args

    def cli_args(self, *, redacted: bool = False) -> list[str]:
        """The same target as `hermes-infra` command line arguments (to run; `shown_cli_args` to
        print)."""
        inventory = self.inventory if not self.user or Path(self.inventory).exists() else f"{self.user}@{self.inventory}"
        return [inventory, *self._args("--port", "--key"), *self.data_args(redacted=redacted)]

    def shown_cli_args(self) -> list[str]:
        """`cli_args` for a command shown to the operator (a refusal's suggested command, a log):
        every secret in `--data` redacted."""
        return self.cli_args(redacted=True)

    def pyinfra_args(self) -> list[str]:
        """pyinfra's arguments without `--data` (the settings, secrets included, reach pyinfra in
        memory: `release/pyinfra_run.py`)."""
        user = ["--ssh-user", self.user] if self.user else []
        return [self.inventory, *user, *self._args("--ssh-port", "--ssh-key")]


def load_inventory(target: Target):
    """pyinfra's own inventory loading (group_data included), without connecting anywhere."""
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    with ctx_state.use(State(check_for_changes=False)):
        return make_inventory(target.inventory, override_data=target.override_data(), cwd=target.cwd,
                              group_data_directories=target.group_data or None)


def validate(target: Target) -> dict[str, object]:
    """Validate every host's settings; returns host name -> settings. Raises SettingsError."""
    problems, result = [], {}
    inventory = load_inventory(target)
    hosts = list(inventory)
    if not hosts:
        raise SettingsError(f"no hosts in {target.inventory!r}. Fix: name an inventory file or user@host")
    for host in hosts:
        try:
            settings = settings_from_raw(collect(host_data_layers(host)), source=f"host {host.name}")
            if settings.image.source == "archive":
                inspect_archive(settings.image.archive)
            result[host.name] = settings
        except (SettingsError, ImageArchiveError) as error:
            problems.append(str(error))
    if problems:
        raise SettingsError("\n".join(problems))
    return result


def local_vm_data(image_dir: str) -> dict[str, str]:
    """Settings for the local VM: Debian's Docker packages and the locally built image
    (the VM, like many real hosts, reaches Debian's mirror but not Docker Hub)."""
    meta = json.loads((Path(image_dir) / "image.json").read_text())
    return {
        "docker": json.dumps({"install_source": "distro"}),
        "image": json.dumps({"ref": meta["ref"], "source": "archive", "archive": str(image_dir)}),
        "swap": json.dumps({"size": "1G"}),
    }
