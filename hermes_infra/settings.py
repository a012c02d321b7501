"""Every setting hermes-infra understands, its default and its meaning, in one place.

The models are read from pyinfra data (``group_data/*.py``, host data, ``--data``),
validated before any host is touched, and are the single source for the deploy, the
compose template, the compliance checks and the README's settings reference.

Each top-level field of :class:`HostSettings` is one pyinfra data variable of the same
name (``docker = {...}``, ``swap = {...}``, ``gateways = [...]``); dictionaries from
group data, host data and ``--data`` are merged key by key, lists replace each other.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from hermes_infra.sizes import format_bytes, parse_size

GIB = 1024**3
MIB = 1024**2

# Values Hermes itself refuses as API_SERVER_KEY (it then silently does not start the API).
PLACEHOLDER_KEYS = frozenset(
    {"changeme", "change-me", "change_me", "dummy", "none", "null", "secret", "password",
     "your-api-key", "your_api_key", "xxx", "test", "example", "placeholder", "apikey"}
)
# Longer keys that are still somebody's example, not a secret.
PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "placeholder", "your-api-key", "your_api_key",
                     "replace-me", "replace_me", "example", "dummy")
MIN_API_KEY_LENGTH = 16
SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,38}$")
# Env keys whose values identify a messaging bot: two gateways sharing one fight over it.
BOT_TOKEN_KEY = re.compile(r"^[A-Z0-9_]*(TOKEN|WEBHOOK_SECRET|APP_SECRET)$|^[A-Z0-9_]+_ACCOUNT_ID$")
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1", "localhost")
PUBLIC_ADDRESSES = ("0.0.0.0", "::", "")
PLATFORMS = (
    "TELEGRAM", "DISCORD", "WHATSAPP", "SLACK", "SIGNAL", "EMAIL", "SMS", "MATTERMOST", "MATRIX",
    "DINGTALK", "FEISHU", "WECOM", "WECOM_CALLBACK", "WEIXIN", "BLUEBUBBLES", "QQ",
)


class Settings(BaseModel):
    """Base: unknown keys are refused (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


def check_api_key(value: str, setting: str) -> str:
    """Apply Hermes's own key rules, so a weak key fails here instead of silently on the host."""
    if len(value) < MIN_API_KEY_LENGTH:
        raise ValueError(
            f"{setting} is {len(value)} characters long; Hermes needs at least {MIN_API_KEY_LENGTH} "
            "or the API server silently does not start. Fix: use a longer key, or leave it unset and "
            "hermes-infra generates one on the host"
        )
    lowered = value.strip().lower()
    if lowered in PLACEHOLDER_KEYS or any(word in lowered for word in PLACEHOLDER_WORDS) or len(set(lowered)) <= 2:
        raise ValueError(
            f"{setting} is a placeholder value, which Hermes refuses. "
            "Fix: use a random key (e.g. `openssl rand -hex 24`) or leave it unset"
        )
    return value


class DockerSettings(Settings):
    install_source: Literal["official", "distro"] = "official"
    """Where Docker comes from: `official` = Docker's apt repository (deb822 source with
    `Signed-By`, packages docker-ce + docker-compose-plugin); `distro` = Debian's own
    `docker.io` + `docker-compose` (compose v2 from Debian 13 on)."""

    version: str | None = None
    """Pin the engine package version (apt version string, e.g. `5:27.3.1-1~debian.13~trixie`);
    unset installs the newest the source offers and never upgrades an installed engine."""

    official_repo_url: str = "https://download.docker.com/linux/debian"
    """Base URL of Docker's apt repository (point it at an internal mirror if you have one)."""

    log_max_size: str = "10m"
    """`log-opts.max-size` of the json-file log driver: the size at which a container log rotates."""

    log_max_file: int = Field(3, ge=1, le=100)
    """`log-opts.max-file`: how many rotated log files Docker keeps per container."""

    live_restore: bool = True
    """Keep containers running while dockerd restarts (daemon.json `live-restore`)."""

    userland_proxy: bool | None = None
    """daemon.json `userland-proxy`; unset leaves Docker's default (on)."""

    registry_mirrors: list[str] = []
    """daemon.json `registry-mirrors`: pull-through mirrors for Docker Hub (`https://...`)."""

    daemon_options: dict[str, Any] = {}
    """Extra daemon.json keys, merged over the ones above (they win)."""

    users: list[str] = []
    """Login users added to the `docker` group (root-equivalent: only trusted admins)."""

    bridge_gateway_ip: str = "172.17.0.1"
    """Address of the default bridge (`docker0`) on the host: where `host.docker.internal`
    (`host-gateway`) points, so the API is published there for companion containers."""

    @field_validator("registry_mirrors")
    @classmethod
    def _mirror_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^https?://[^\s/]+", url):
                raise ValueError(f"registry mirror {url!r} is not a URL. Fix: write it as https://mirror.example.com")
        return value

    @field_validator("log_max_size")
    @classmethod
    def _log_size(cls, value: str) -> str:
        if not re.fullmatch(r"\d+[kmg]", value):
            raise ValueError(f"{value!r} is not a Docker log size. Fix: a number and k, m or g, e.g. '10m'")
        return value

    @field_validator("bridge_gateway_ip")
    @classmethod
    def _bridge_ip(cls, value: str) -> str:
        ipaddress.IPv4Address(value)
        return value

    def daemon_json(self) -> dict[str, Any]:
        """The daemon.json content these settings stand for."""
        options: dict[str, Any] = {
            "log-driver": "json-file",
            "log-opts": {"max-size": self.log_max_size, "max-file": str(self.log_max_file)},
            "live-restore": self.live_restore,
        }
        if self.registry_mirrors:
            options["registry-mirrors"] = list(self.registry_mirrors)
        if self.userland_proxy is not None:
            options["userland-proxy"] = self.userland_proxy
        options.update(self.daemon_options)
        return options


class SwapSettings(Settings):
    size: str = "2G"
    """Size of the swap file (`512M`, `2G`, `4G`); `0` means no swap file is managed.
    A changed size resizes the file (swapoff, recreate, swapon)."""

    path: str = "/swapfile"
    """Where the swap file lives (an absolute path on a local, non-CoW filesystem)."""

    swappiness: int = Field(10, ge=0, le=100)
    """`vm.swappiness`, persisted in /etc/sysctl.d/: low values keep the gateway in RAM and
    use swap as an OOM safety net."""

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or value.rstrip("/") in ("", "/etc", "/usr", "/var", "/root"):
            raise ValueError(f"{value!r} is not a usable swap file path. Fix: an absolute file path such as /swapfile")
        return value

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)


class ImageSettings(Settings):
    ref: str = "nousresearch/hermes-agent:v2026.9.14"
    """Image every gateway runs. Pin a tag you have tested; `latest` is refused unless
    `allow_latest` is set, because a redeploy would silently change the version."""

    source: Literal["pull", "archive"] = "pull"
    """How the image reaches the host: `pull` from its registry (or `pull_mirror`);
    `archive` uploads `archive` from the control machine and `docker load`s it (for hosts
    that cannot reach Docker Hub; build one with `hermes-infra image build`)."""

    archive: str | None = None
    """With `source: archive`: path on the control machine to a `docker save` archive, or to
    a directory made by `hermes-infra image build` (its image.json names ref and archive)."""

    pull_mirror: str | None = None
    """Registry host to pull through instead of Docker Hub (`mirror.example.com:5000`); the
    image is re-tagged to `ref` after the pull so the compose file stays the same."""

    allow_latest: bool = False
    """Accept a `:latest` or untagged `ref` (not recommended)."""

    remote_cache_dir: str = "/var/cache/hermes-infra/images"
    """Where uploaded image archives are kept on the host."""

    @model_validator(mode="after")
    def _checks(self) -> ImageSettings:
        ref = self.ref
        name_part = ref.rsplit("/", 1)[-1]
        untagged = ":" not in name_part and "@" not in ref
        if (untagged or ref.endswith(":latest")) and not self.allow_latest:
            raise ValueError(
                f"image.ref is {ref!r}, which is not pinned: every redeploy could run another version. "
                "Fix: pin a tag such as nousresearch/hermes-agent:v2026.9.14 (or set image.allow_latest: true)"
            )
        if self.source == "archive" and not self.archive:
            raise ValueError(
                "image.source is 'archive' but image.archive is not set. Fix: set image.archive to the "
                "directory printed by `hermes-infra image build`, or use image.source: pull"
            )
        return self


class ResourceLimits(Settings):
    memory: str | None = None
    """Container memory limit (`mem_limit`, e.g. `3584M`, `3.5G`). Unset: derived from the
    host's RAM, leaving headroom for the OS and Docker (RAM x 7/8, at least 512 MiB kept)."""

    cpus: float | None = Field(None, gt=0)
    """CPU limit (`cpus`). Unset: derived from the host's cores (cores x 5/8, at least 0.5),
    e.g. 2.5 on a 4-core host."""

    pids: int = Field(1024, ge=32)
    """Maximum number of processes in the container (`pids_limit`): stops fork bombs from tools."""

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and parse_size(value) < 256 * MIB:
            raise ValueError(f"{value!r} is below 256M; the gateway needs ~150 MB idle. Fix: at least 512M")
        return value


class ApiSettings(Settings):
    port: int = Field(8642, ge=1, le=65535)
    """Host port the API server is published on (the container always listens on 8642)."""

    publish_addresses: list[str] | None = None
    """Host addresses the port is bound to. Unset: `127.0.0.1`, plus the docker bridge address
    when a companion reaches this gateway through `host.docker.internal` (a port bound only to
    127.0.0.1 is unreachable from containers). `0.0.0.0` needs `allow_public`."""

    allow_public: bool = False
    """Allow publishing on all interfaces (`0.0.0.0`). Published ports bypass ufw: only do this
    behind a cloud firewall or a TLS proxy."""

    key: SecretStr | None = None
    """`API_SERVER_KEY`. Unset: generated once on the host and kept on every later run. Set:
    at least 16 characters, not a placeholder; it replaces the key on the host."""

    model_name: str = "hermes-agent"
    """`API_SERVER_MODEL_NAME`: the model id `/v1/models` serves and clients send."""

    cors_origins: list[str] = []
    """`API_SERVER_CORS_ORIGINS`: browser origins allowed to call the API (others get 403)."""

    @field_validator("key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_api_key(value.get_secret_value(), "api.key")
        return value

    @field_validator("publish_addresses")
    @classmethod
    def _addresses(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("api.publish_addresses is empty, so the API would be unreachable. Fix: leave it unset")
        for address in value:
            if address == "localhost":
                continue
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address. Fix: e.g. 127.0.0.1") from None
        return value


class WeixinSettings(Settings):
    """Personal WeChat (iLink) login of one gateway; written to its `.env`."""

    token: SecretStr | None = None
    """`WEIXIN_TOKEN` (normally written by the QR login; set only to restore a login)."""

    account_id: str | None = None
    """`WEIXIN_ACCOUNT_ID`."""

    dm_policy: Literal["pairing", "allowlist", "open", "disabled"] = "pairing"
    """`WEIXIN_DM_POLICY`: who may talk to the bot in direct messages."""

    group_policy: Literal["disabled", "allowlist", "open"] = "disabled"
    """`WEIXIN_GROUP_POLICY` (group chats do not work for iLink bots; keep disabled)."""

    allowed_users: list[str] = []
    """`WEIXIN_ALLOWED_USERS`: user ids for the allowlist policy."""

    allow_all_users: bool = False
    """`WEIXIN_ALLOW_ALL_USERS`: required by Hermes for `dm_policy: open`."""

    home_channel: str | None = None
    """`WEIXIN_HOME_CHANNEL`: where cron results and notices are sent."""

    @model_validator(mode="after")
    def _open_needs_allow_all(self) -> WeixinSettings:
        if self.dm_policy == "open" and not self.allow_all_users:
            raise ValueError(
                "weixin.dm_policy is 'open' but weixin.allow_all_users is false; Hermes refuses to start. "
                "Fix: set allow_all_users: true, or use dm_policy: pairing / allowlist"
            )
        if self.dm_policy == "allowlist" and not self.allowed_users:
            raise ValueError(
                "weixin.dm_policy is 'allowlist' but weixin.allowed_users is empty, so nobody can talk to "
                "the bot. Fix: list the user ids in allowed_users"
            )
        return self

    def env(self) -> dict[str, str]:
        values = {"WEIXIN_DM_POLICY": self.dm_policy, "WEIXIN_GROUP_POLICY": self.group_policy}
        if self.token is not None:
            values["WEIXIN_TOKEN"] = self.token.get_secret_value()
        if self.account_id:
            values["WEIXIN_ACCOUNT_ID"] = self.account_id
        if self.allowed_users:
            values["WEIXIN_ALLOWED_USERS"] = ",".join(self.allowed_users)
        if self.allow_all_users:
            values["WEIXIN_ALLOW_ALL_USERS"] = "true"
        if self.home_channel:
            values["WEIXIN_HOME_CHANNEL"] = self.home_channel
        return values


class HermesConfig(Settings):
    """Keys of the gateway's `config.yaml` that hermes-infra manages; every other key is left alone."""

    tool_loop_hard_stop: bool = True
    """`tool_loop_guardrails.hard_stop_enabled`: stop a runaway tool loop instead of only warning
    (nobody watches an unattended server)."""

    allow_lazy_installs: bool = False
    """`security.allow_lazy_installs`: let the gateway pip-install packages into its own venv at
    run time. Off on servers: the image should not change under you."""

    tirith_enabled: bool = False
    """`security.tirith_enabled`: downloads a binary from GitHub on first start (fails on hosts
    without GitHub access)."""

    model: dict[str, Any] = {}
    """`model.*` keys, e.g. `{provider: custom, default: my-model, base_url: http://...:8000/v1}`.
    Put the provider's API key in `env`, not here."""

    extra: dict[str, Any] = {}
    """Any other keys, dotted (`display.tool_progress: false`)."""

    def managed(self) -> dict[str, Any]:
        """Dotted key -> value for everything this model manages."""
        values: dict[str, Any] = {
            "tool_loop_guardrails.hard_stop_enabled": self.tool_loop_hard_stop,
            "security.allow_lazy_installs": self.allow_lazy_installs,
            "security.tirith_enabled": self.tirith_enabled,
        }
        values.update({f"model.{key}": value for key, value in self.model.items()})
        values.update(self.extra)
        return values


class DashboardSettings(Settings):
    enabled: bool = False
    """Run the Hermes web dashboard (official image: `HERMES_DASHBOARD=1`)."""

    port: int = Field(9119, ge=1, le=65535)
    """Host port the dashboard is published on."""

    publish_address: str = "127.0.0.1"
    """Host address the dashboard port is bound to; anything but loopback needs basic auth
    (exposed dashboards were used to plant SSH-key backdoors)."""

    basic_auth_username: str | None = None
    """`HERMES_DASHBOARD_BASIC_AUTH_USERNAME`."""

    basic_auth_password_hash: SecretStr | None = None
    """`HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH` (preferred over a clear password)."""

    @model_validator(mode="after")
    def _auth_when_exposed(self) -> DashboardSettings:
        exposed = self.publish_address not in LOOPBACK_ADDRESSES
        if self.enabled and exposed and not (self.basic_auth_username and self.basic_auth_password_hash):
            raise ValueError(
                f"dashboard.publish_address is {self.publish_address!r} (not loopback) without basic auth; "
                "Hermes refuses to start it and it would be an open door. Fix: publish on 127.0.0.1 and use an "
                "SSH tunnel, or set basic_auth_username and basic_auth_password_hash"
            )
        return self


class GatewaySettings(Settings):
    """One Hermes gateway (a profile): its own container, data dir, API port, limits and `.env`."""

    name: str = "hermes"
    """Profile name: the compose service and container name (`hermes` or `hermes-<name>`) and
    the default data dir. Lowercase letters, digits, `-`, `_`."""

    data_dir: str | None = None
    """Host directory mounted at `/opt/data`. Unset: `/root/.hermes` for the profile named
    `hermes`, `/root/.hermes-<name>` for others."""

    uid: int = Field(10000, ge=1)
    """Owner uid of the data dir: the image's `hermes` user (`HERMES_UID`)."""

    gid: int = Field(10000, ge=1)
    """Owner gid of the data dir (`HERMES_GID`)."""

    timezone: str = "Etc/UTC"
    """`TZ` in the container: cron jobs and timestamps use it."""

    restart: Literal["unless-stopped", "always", "on-failure"] = "unless-stopped"
    """Compose restart policy (`no` is not offered: a gateway must come back after a crash)."""

    limits: ResourceLimits = ResourceLimits()
    """Memory, CPU and process limits of the container."""

    api: ApiSettings = ApiSettings()
    """The OpenAI-compatible API server (port 8642 in the container)."""

    config: HermesConfig = HermesConfig()
    """Managed `config.yaml` keys."""

    weixin: WeixinSettings | None = None
    """Personal WeChat settings (unset: no WEIXIN_* key is managed)."""

    allowed_users: dict[str, list[str]] = {}
    """Per-platform allowlists: `{TELEGRAM: ["123"], GATEWAY: [...]}` -> `<PLATFORM>_ALLOWED_USERS`."""

    env: dict[str, SecretStr] = {}
    """Other managed `.env` keys (provider API keys, bot tokens, ...). Values are secrets: never
    printed, never in the compose file. Keys the operator or Hermes add by hand are kept."""

    dashboard: DashboardSettings = DashboardSettings()
    """The web dashboard."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SAFE_NAME.match(value):
            raise ValueError(
                f"profile name {value!r} is not safe as a container and directory name. "
                "Fix: lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 39 characters"
            )
        return value

    @field_validator("allowed_users")
    @classmethod
    def _platforms(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for platform in value:
            if platform.upper() not in (*PLATFORMS, "GATEWAY"):
                raise ValueError(
                    f"allowed_users has unknown platform {platform!r}. Fix: one of {', '.join((*PLATFORMS, 'GATEWAY'))}"
                )
        return {platform.upper(): users for platform, users in value.items()}

    @field_validator("env")
    @classmethod
    def _env_keys(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key, secret in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"env key {key!r} is not a valid variable name. Fix: letters, digits and '_'")
            if "\n" in secret.get_secret_value():
                raise ValueError(f"env.{key} contains a newline, which a .env file cannot hold. Fix: remove it")
            if key in ("API_SERVER_KEY", "API_SERVER_PORT", "API_SERVER_HOST", "API_SERVER_ENABLED"):
                raise ValueError(f"env.{key} is managed through the api settings. Fix: use api.key / api.port instead")
        return value

    @property
    def service_name(self) -> str:
        return "hermes" if self.name == "hermes" else f"hermes-{self.name}"

    @property
    def host_data_dir(self) -> str:
        if self.data_dir:
            return self.data_dir
        return "/root/.hermes" if self.name == "hermes" else f"/root/.hermes-{self.name}"

    def managed_env(self) -> dict[str, str]:
        """Every `.env` key this profile manages, except the API key (decided on the host)."""
        values = {
            "API_SERVER_ENABLED": "true",
            "API_SERVER_HOST": "0.0.0.0",
            "API_SERVER_PORT": "8642",
            "API_SERVER_MODEL_NAME": self.api.model_name,
            "HERMES_SKIP_CONFIG_MIGRATION": "1",
        }
        if self.api.cors_origins:
            values["API_SERVER_CORS_ORIGINS"] = ",".join(self.api.cors_origins)
        if self.weixin is not None:
            values.update(self.weixin.env())
        for platform, users in self.allowed_users.items():
            values[f"{platform}_ALLOWED_USERS"] = ",".join(users)
        if self.dashboard.enabled:
            values.update({"HERMES_DASHBOARD": "1", "HERMES_DASHBOARD_HOST": "0.0.0.0",
                           "HERMES_DASHBOARD_PORT": "9119"})
            if self.dashboard.basic_auth_username:
                values["HERMES_DASHBOARD_BASIC_AUTH_USERNAME"] = self.dashboard.basic_auth_username
            if self.dashboard.basic_auth_password_hash is not None:
                values["HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH"] = (
                    self.dashboard.basic_auth_password_hash.get_secret_value())
        values.update({key: secret.get_secret_value() for key, secret in self.env.items()})
        return values

    def bot_tokens(self) -> dict[str, str]:
        """Env keys and values that identify a messaging bot (two gateways must never share one)."""
        return {key: value for key, value in self.managed_env().items() if BOT_TOKEN_KEY.match(key)}


class CompanionSettings(Settings):
    """A container beside the gateways that talks to one of them over the API (e.g. a WeChat hub)."""

    name: str
    """Service and container name."""

    image: str
    """Image of the companion (pinned like the gateway image)."""

    gateway: str | None = None
    """Name of the profile it talks to (unset: the first gateway)."""

    topology: Literal["host-gateway", "same-project"] = "host-gateway"
    """`same-project`: a service in the gateways' compose project, reaching
    `http://<gateway service>:8642/v1`. `host-gateway`: its own compose project, reaching
    `http://host.docker.internal:<port>/v1` through `extra_hosts: host-gateway`."""

    environment: dict[str, str] = {}
    """Plain (non-secret) environment variables."""

    secret_env: dict[str, SecretStr] = {}
    """Secret environment variables: written to a 0600 env file, never to the compose file."""

    api_base_url_env: str = "HERMES_API_BASE_URL"
    """Variable the companion reads the gateway's API base URL from."""

    api_key_env: str = "HERMES_API_KEY"
    """Variable the companion reads the gateway's API key from (always the gateway's own key)."""

    model_env: str = "HERMES_MODEL"
    """Variable the companion reads the model name from (always the gateway's served name)."""

    timeout_ms: int = Field(120000, ge=1000)
    """`HERMES_TIMEOUT_MS`: how long the companion waits for an answer."""

    auto_reply: bool = True
    """`AUTO_REPLY`: whether the hub answers incoming messages by itself."""

    ports: list[str] = []
    """Published ports in compose short syntax, with an explicit address (`127.0.0.1:3000:3000`)."""

    volumes: list[str] = []
    """Volumes in compose short syntax (`/root/wechat-hub:/data`)."""

    command: list[str] | None = None
    """Override the image's command."""

    entrypoint: list[str] | None = None
    """Override the image's entrypoint."""

    memory: str = "512M"
    """Memory limit of the companion."""

    cpus: float = Field(0.5, gt=0)
    """CPU limit of the companion."""

    restart: Literal["unless-stopped", "always", "on-failure"] = "unless-stopped"
    """Restart policy."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SAFE_NAME.match(value):
            raise ValueError(f"companion name {value!r} is not a safe container name. Fix: lowercase letters, digits, '-', '_'")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[str]) -> list[str]:
        for port in value:
            parts = port.split(":")
            if len(parts) < 3 or parts[0] in PUBLIC_ADDRESSES:
                raise ValueError(
                    f"companion port {port!r} would be published on every interface. "
                    "Fix: name the address, e.g. 127.0.0.1:3000:3000"
                )
        return value


class HealthSettings(Settings):
    timeout_seconds: int = Field(300, ge=10)
    """How long the deploy waits for `/health` to answer 200 before it fails with the log."""

    interval_seconds: float = Field(2, gt=0)
    """Pause between health probes."""


class HostSettings(Settings):
    """Everything hermes-infra manages on one host."""

    docker: DockerSettings = DockerSettings()
    """Docker engine, compose v2 and daemon.json."""

    swap: SwapSettings = SwapSettings()
    """The swap file."""

    image: ImageSettings = ImageSettings()
    """The Hermes image every gateway runs."""

    gateways: list[GatewaySettings] = [GatewaySettings()]
    """The gateways (profiles) on this host; each item is a GatewaySettings."""

    companions: list[CompanionSettings] = []
    """Companion containers (e.g. a WeChat hub); each item is a CompanionSettings."""

    health: HealthSettings = HealthSettings()
    """The health gate at the end of a deploy."""

    project_dir: str = "/opt/hermes"
    """Directory on the host holding the compose files and companion env files."""

    backup_dir: str = "/var/backups/hermes-infra"
    """Where files are copied before hermes-infra replaces them, and where the data dir of a
    removed profile is archived."""

    purge_removed_gateways: bool = False
    """When a profile disappears from `gateways`, also delete its data dir (after archiving it).
    Off: the data dir stays where it was."""

    @model_validator(mode="after")
    def _cross_checks(self) -> HostSettings:
        if not self.gateways:
            raise ValueError("gateways is empty. Fix: list at least one gateway (the default is one named 'hermes')")
        names = [g.name for g in self.gateways]
        duplicate = sorted({n for n in names if names.count(n) > 1})
        if duplicate:
            raise ValueError(f"gateways: profile name {duplicate[0]!r} is used twice. Fix: give each profile its own name")
        dirs = [g.host_data_dir for g in self.gateways]
        shared = sorted({d for d in dirs if dirs.count(d) > 1})
        if shared:
            raise ValueError(f"gateways: data dir {shared[0]!r} is used by two profiles. Fix: one data_dir per profile")
        self._check_ports()
        self._check_tokens()
        self._check_companions()
        return self

    def _check_ports(self) -> None:
        used: dict[int, str] = {}
        for gateway in self.gateways:
            ports = [(gateway.api.port, f"gateways[{gateway.name}].api.port")]
            if gateway.dashboard.enabled:
                ports.append((gateway.dashboard.port, f"gateways[{gateway.name}].dashboard.port"))
            for port, setting in ports:
                if port in used:
                    raise ValueError(
                        f"{setting} is {port}, already used by {used[port]}. Fix: give each profile its own host port"
                    )
                used[port] = setting
            for address in self.publish_addresses(gateway):
                if address in PUBLIC_ADDRESSES and not gateway.api.allow_public:
                    raise ValueError(
                        f"gateways[{gateway.name}].api.publish_addresses contains {address!r}, which publishes the API "
                        "on every interface (and bypasses ufw). Fix: use 127.0.0.1 (and the docker bridge address for "
                        "companions), or set api.allow_public: true behind a firewall"
                    )

    def _check_tokens(self) -> None:
        seen: dict[str, str] = {}
        for gateway in self.gateways:
            for key, value in gateway.bot_tokens().items():
                if value in seen:
                    raise ValueError(
                        f"gateways[{gateway.name}].{key} has the same value as {seen[value]}; two gateways "
                        "sharing a bot token fight over it and upstream refuses the second. Fix: one bot per profile"
                    )
                seen[value] = f"gateways[{gateway.name}].{key}"

    def _check_companions(self) -> None:
        names = {g.name for g in self.gateways} | {g.service_name for g in self.gateways}
        seen: set[str] = set()
        for companion in self.companions:
            if companion.name in names or companion.name in seen:
                raise ValueError(f"companions: name {companion.name!r} is already taken. Fix: pick another name")
            seen.add(companion.name)
            target = self.gateway_for(companion)
            if companion.topology == "host-gateway":
                reachable = [a for a in self.publish_addresses(target) if a not in LOOPBACK_ADDRESSES]
                if not reachable:
                    raise ValueError(
                        f"companions[{companion.name}] reaches gateway {target.name!r} through host.docker.internal, "
                        f"but gateways[{target.name}].api.publish_addresses is {target.api.publish_addresses}: a port "
                        "bound only to 127.0.0.1 cannot be reached from containers. Fix: add the docker bridge "
                        f"address {self.docker.bridge_gateway_ip!r}, or leave publish_addresses unset"
                    )

    def gateway_for(self, companion: CompanionSettings) -> GatewaySettings:
        if companion.gateway is None:
            return self.gateways[0]
        for gateway in self.gateways:
            if gateway.name == companion.gateway:
                return gateway
        raise ValueError(
            f"companions[{companion.name}].gateway is {companion.gateway!r}, which is not a profile. "
            f"Fix: one of {', '.join(g.name for g in self.gateways)}"
        )

    def publish_addresses(self, gateway: GatewaySettings) -> list[str]:
        """Host addresses the gateway's API port is bound to (explicit, or derived)."""
        if gateway.api.publish_addresses is not None:
            return list(gateway.api.publish_addresses)
        addresses = ["127.0.0.1"]
        if any(c.topology == "host-gateway" and self._targets(c, gateway) for c in self.companions):
            addresses.append(self.docker.bridge_gateway_ip)
        return addresses

    def _targets(self, companion: CompanionSettings, gateway: GatewaySettings) -> bool:
        return (companion.gateway or self.gateways[0].name) == gateway.name

    def companion_api_url(self, companion: CompanionSettings) -> str:
        gateway = self.gateway_for(companion)
        if companion.topology == "same-project":
            return f"http://{gateway.service_name}:8642/v1"
        return f"http://host.docker.internal:{gateway.api.port}/v1"


class HostResources(BaseModel):
    """What a host has, from facts: used to derive and bound the container limits."""

    memory_bytes: int
    cpus: int


class EffectiveLimits(BaseModel):
    memory_bytes: int
    cpus: float
    pids: int

    @property
    def memory(self) -> str:
        return format_bytes(self.memory_bytes)


def derive_limits(settings: HostSettings, resources: HostResources) -> dict[str, EffectiveLimits]:
    """Per-gateway limits: explicit ones are checked against the host, missing ones derived.

    Derived limits split what the host can give (RAM x 7/8 with at least 512 MiB left to the
    OS, cores x 5/8 with at least 0.5) evenly between the gateways that have no explicit limit.
    """
    ram = resources.memory_bytes
    available_memory = max(min(ram * 7 // 8, ram - 512 * MIB), 256 * MIB)
    available_cpus = max(round(resources.cpus * 5 / 8, 2), 0.5)
    explicit_memory = sum(parse_size(g.limits.memory) for g in settings.gateways if g.limits.memory)
    companion_memory = sum(parse_size(c.memory) for c in settings.companions)
    missing_memory = [g for g in settings.gateways if not g.limits.memory]
    missing_cpus = [g for g in settings.gateways if g.limits.cpus is None]

    for gateway in settings.gateways:
        if gateway.limits.memory and parse_size(gateway.limits.memory) > ram:
            raise ValueError(
                f"gateways[{gateway.name}].limits.memory is {gateway.limits.memory} but the host has only "
                f"{format_bytes(ram)} of RAM. Fix: at most {format_bytes(available_memory)}, or leave it unset"
            )
        if gateway.limits.cpus is not None and gateway.limits.cpus > resources.cpus:
            raise ValueError(
                f"gateways[{gateway.name}].limits.cpus is {gateway.limits.cpus} but the host has only "
                f"{resources.cpus} CPUs. Fix: at most {resources.cpus}, or leave it unset"
            )
    if explicit_memory + companion_memory > ram:
        raise ValueError(
            f"the memory limits of all gateways and companions add up to {format_bytes(explicit_memory + companion_memory)}, "
            f"more than the host's {format_bytes(ram)} of RAM. Fix: lower gateways[*].limits.memory"
        )
    share_memory = max((available_memory - explicit_memory) // max(len(missing_memory), 1), 256 * MIB)
    if missing_memory and available_memory - explicit_memory < 256 * MIB * len(missing_memory):
        raise ValueError(
            f"the host's {format_bytes(ram)} of RAM leaves no room for gateways "
            f"{', '.join(g.name for g in missing_memory)} after the explicit limits. Fix: set their limits.memory"
        )
    share_cpus = max(round(available_cpus / max(len(missing_cpus), 1), 2), 0.25)
    limits = {}
    for gateway in settings.gateways:
        memory = parse_size(gateway.limits.memory) if gateway.limits.memory else share_memory
        memory -= memory % MIB
        cpus = gateway.limits.cpus if gateway.limits.cpus is not None else share_cpus
        limits[gateway.name] = EffectiveLimits(memory_bytes=memory, cpus=cpus, pids=gateway.limits.pids)
    return limits
