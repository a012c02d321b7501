"""Every setting hermes-infra understands, its default and its meaning, in one place.

The models are read from pyinfra data (``group_data/*.py``, host data, ``--data``),
validated before any host is touched, and are the single source for the deploy, the
compose template, the compliance checks and the README's settings reference.

Each top-level field of :class:`HostSettings` is one pyinfra data variable of the same
name (``docker = {...}``, ``swap = {...}``, ``gateways = [...]``); dictionaries from
group data, host data and ``--data`` are merged key by key, lists replace each other.

Validation rules that hold for every model here:

* unknown names are refused at every level (``extra="forbid"``; the top level is checked in
  :mod:`hermes_infra.settings.loading`), so a typo never silently falls back to a default;
* no value that ends up in a ``.env`` file, an env file or a compose file may hold a control
  character (:data:`NoControlChars`, :data:`SafeText`), and variable names are
  ``[A-Za-z_][A-Za-z0-9_]*`` (:data:`EnvNames`);
* host paths are absolute, normalized (what the model stores) and never a system directory
  (:func:`check_host_path`);
* a message names the problem and the fix, and never repeats a secret value.
"""
from __future__ import annotations

import difflib
import functools
import ipaddress
import posixpath
import re
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hermes_infra.settings import gatewayenv, topology
from hermes_infra.settings.sizes import parse_size

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
# Characters an API key may not hold, so its `.env` line is canonical and unquoted.
API_KEY_FORBIDDEN = frozenset("'\"#\\$`")
SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,38}$")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1", "localhost")
PUBLIC_ADDRESSES = ("0.0.0.0", "::", "")
PLATFORMS = (
    "TELEGRAM", "DISCORD", "WHATSAPP", "SLACK", "SIGNAL", "EMAIL", "SMS", "MATTERMOST", "MATRIX",
    "DINGTALK", "FEISHU", "WECOM", "WECOM_CALLBACK", "WEIXIN", "BLUEBUBBLES", "QQ",
)
DEFAULT_SSH_PORT = 22

# The image every gateway runs unless image.ref says otherwise (upstream tags: X.Y.Z,
# latest/stable, main; the old vYYYY.M.D tags are gone).
DEFAULT_IMAGE = "nousresearch/hermes-agent:0.23.3"
# Tags that move: a ref using one of them (and no digest) is not pinned.
UNPINNED_TAGS = frozenset({"latest", "stable", "main"})


# ----------------------------------------------------------------------------- text values
_CHARACTER_NAMES = {"\n": "a newline (\\n)", "\r": "a carriage return (\\r)", "\t": "a tab (\\t)",
                    "\x00": "a NUL byte (\\x00)", "\x1b": "an escape character (\\x1b)", "\x7f": "a DEL character (\\x7f)"}


def control_character(text: str) -> str | None:
    """The first control character (< 0x20 or 0x7f) in `text`, or None."""
    for char in text:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return char
    return None


def describe_character(char: str) -> str:
    return _CHARACTER_NAMES.get(char, f"the control character 0x{ord(char):02x}")


def _escaped(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii")


def _no_control_chars(value: Any) -> Any:
    """Refuse a control character anywhere in a text value, a list of them, or a dict's keys and
    values (SecretStr included). Such a value would end up in a `.env` line, an env file or a
    compose file and change what it means: a newline starts a new variable.

    The error carries `item` (the path below the field, e.g. `[2]` or `.MY_KEY`) so the message
    names the exact setting; the value itself is never put in the message (it may be secret).
    """

    def walk(item: Any, where: str) -> None:
        if isinstance(item, Mapping):
            for key, sub in item.items():
                if isinstance(key, str) and (char := control_character(key)):
                    raise PydanticCustomError(
                        "control_character",
                        "the name {name} contains {character}, which would break the .env, env file or compose "
                        "file it is written to. Fix: remove it",
                        {"item": where, "name": repr(key), "character": describe_character(char)})
                walk(sub, f"{where}.{_escaped(str(key))}")
            return
        if isinstance(item, (list, tuple)):
            for index, sub in enumerate(item):
                walk(sub, f"{where}[{index}]")
            return
        text = item.get_secret_value() if isinstance(item, SecretStr) else item
        if isinstance(text, str) and (char := control_character(text)):
            raise PydanticCustomError(
                "control_character",
                "contains {character}, which would break the .env, env file or compose file it is written to. "
                "Fix: remove it",
                {"item": where, "character": describe_character(char)})

    walk(value, "")
    return value


def _env_names(value: Any) -> Any:
    """Refuse a variable name (a str, or a dict's keys) that is not `[A-Za-z_][A-Za-z0-9_]*`:
    compose and `.env` parsers would read something else than what was meant."""
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, Mapping) else []
    for name in names:
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise PydanticCustomError(
                "env_name",
                "{name} is not a valid variable name. Fix: letters, digits and '_', not starting with a digit "
                "(e.g. MY_VARIABLE)",
                {"name": repr(name)})
    return value


NoControlChars = AfterValidator(_no_control_chars)
"""Reusable check: `Annotated[<type>, NoControlChars]` refuses control characters in a text,
list or dict value (keys included). Used on every value written to `.env`, env or compose files."""

EnvNames = AfterValidator(_env_names)
"""Reusable check: `Annotated[<type>, EnvNames]` refuses a variable name (or dict keys) that is
not `[A-Za-z_][A-Za-z0-9_]*`."""

SafeText = Annotated[str, NoControlChars]
"""A text setting without control characters."""

EnvName = Annotated[str, EnvNames]
"""An environment variable name."""


class Settings(BaseModel):
    """Base: unknown keys are refused (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


def check_api_key(value: str, setting: str) -> str:
    """Apply Hermes's own key rules, so a weak key fails here instead of silently on the host.

    Also refuses what would make the `.env` line ambiguous (whitespace, control characters,
    quotes, `#`, `\\`, `$`, backquote). Messages never repeat the key.
    """
    fix_chars = ("Fix: use letters, digits, '-', '_', '.' (e.g. `openssl rand -hex 24`), or leave it unset and "
                 "hermes-infra generates one on the host")
    if any(char.isspace() for char in value) or control_character(value):
        raise ValueError(
            f"{setting} contains whitespace or a control character (value not shown), which a .env line cannot "
            f"hold unquoted. {fix_chars}"
        )
    if any(char in API_KEY_FORBIDDEN for char in value):
        raise ValueError(
            f"{setting} contains a quote, '#', '\\', '$' or '`' (value not shown), which .env parsers read "
            f"differently. {fix_chars}"
        )
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


# ----------------------------------------------------------------------------- host paths
# The directory and everything below it belongs to the kernel, the system or Docker.
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/run", "/boot", "/etc", "/usr", "/var/lib/docker")
# System directories that may hold a directory of ours, but never be one.
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/var", "/home", "/root", "/opt", "/srv",
    "/tmp", "/mnt", "/media", "/lost+found", "/var/lib", "/var/tmp", "/var/cache", "/var/log", "/var/backups",
    "/var/spool", "/var/mail", "/var/opt", "/var/local", "/var/www",
})
# World-writable: another local user could plant files or links in a data dir below them.
WORLD_WRITABLE_TREES = ("/tmp", "/var/tmp", "/dev/shm")
SWAP_FORBIDDEN_TREES = ("/proc", "/sys", "/dev", "/run", "/tmp")

PathKind = Literal["data", "dir", "swap"]


def is_within(path: str, directory: str) -> bool:
    """`path` is `directory` or below it (both normalized absolute paths)."""
    return path == directory or directory == "/" or path.startswith(directory.rstrip("/") + "/")


def normalize_path(value: str) -> str:
    """`/root/.hermes/`, `/root//.hermes` and `/root/x/../.hermes` all become `/root/.hermes`."""
    return posixpath.normpath(re.sub(r"/+", "/", value))


def check_host_path(value: str, kind: PathKind, example: str) -> str:
    """Validate and normalize a directory (`data`: a gateway data dir; `dir`: a directory
    hermes-infra owns) or the swap file (`swap`) on the host. Returns the normalized path."""
    if char := control_character(value):
        raise ValueError(f"{value!r} contains {describe_character(char)}. Fix: an absolute path such as {example}")
    if not value.startswith("/"):
        if kind == "data":
            raise ValueError(
                f"{value!r} is a relative path: in the compose file a volume source without a leading '/' is a "
                "Docker named volume, so the profile's state would live inside Docker, not in a host directory "
                f"hermes-infra manages and backs up. Fix: an absolute path such as {example}"
            )
        raise ValueError(f"{value!r} is not an absolute path. Fix: an absolute path such as {example}")
    path = normalize_path(value)
    if kind == "swap" and (value.endswith("/") or posixpath.basename(value) in (".", "..") or path in SYSTEM_DIRS
                           or path in SYSTEM_TREES):
        raise ValueError(
            f"{value!r} looks like a directory, but swap.path is the swap file itself. Fix: a file path such as {example}"
        )
    if path == "/":
        raise ValueError(f"{value!r} is the root directory. Fix: a directory of its own such as {example}")
    trees = SWAP_FORBIDDEN_TREES if kind == "swap" else SYSTEM_TREES
    for tree in trees:
        if is_within(path, tree):
            where = "is" if path == tree else "is under"
            raise ValueError(
                f"{value!r} {where} {tree}, which belongs to the kernel, the system or Docker: hermes-infra would "
                f"change its owner and mode. Fix: a path of its own such as {example}"
            )
    if path in SYSTEM_DIRS:
        raise ValueError(
            f"{value!r} is the system directory {path}, which hermes-infra would take over (owner, mode, "
            f"archives). Fix: a directory of its own below it, such as {example}"
        )
    if kind == "data":
        for tree in WORLD_WRITABLE_TREES:
            if is_within(path, tree):
                raise ValueError(
                    f"{value!r} is under the world-writable {tree}: any local user could plant files or links in the "
                    f"data dir, and it may be wiped at boot. Fix: a directory such as {example}"
                )
        if ":" in path or "," in path:
            raise ValueError(
                f"{value!r} contains ':' or ',', which splits the compose volume `{path}:/opt/data`. "
                f"Fix: a path without them, such as {example}"
            )
    return path


# ----------------------------------------------------------------------------- image references
# github.com/distribution/reference grammar.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"
IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*))"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?",
    re.ASCII,
)
IMAGE_REFERENCE_FORM = "[registry[:port]/]name[:tag][@sha256:<64 hex digits>]"


class ImageReference(NamedTuple):
    name: str
    """Registry and repository (`nousresearch/hermes-agent`, `mirror.example.com:5000/x/y`)."""
    tag: str | None
    digest: str | None

    @property
    def pinned(self) -> bool:
        """A digest, or a tag that does not move (not `latest`, `stable`, `main`)."""
        return self.digest is not None or (self.tag is not None and self.tag not in UNPINNED_TAGS)


def parse_image_reference(ref: str) -> ImageReference:
    """Split a Docker image reference; ValueError (naming the value and the fix) when malformed."""
    match = IMAGE_REFERENCE.fullmatch(ref) if isinstance(ref, str) else None
    domain = match.group("domain") if match else None
    # Docker reads a first component without '.' or ':' as a registry only when it has capitals:
    # `NousResearch/hermes-agent` would be pulled from a host named NousResearch.
    uppercase_repo = bool(domain) and not any(c in domain for c in ".:[") and domain != domain.lower()
    if match is None or uppercase_repo or len(match.group("name")) > 255:
        hints = []
        if isinstance(ref, str):
            first, _, rest = ref.split("@")[0].partition("/")
            repository = rest if rest and any(c in first for c in ".:[") or first == "localhost" else ref.split("@")[0]
            if "://" in ref:
                hints.append("no URL scheme")
            if ref != ref.strip() or any(char.isspace() for char in ref):
                hints.append("no whitespace")
            if any(char.isupper() for char in repository.rsplit(":", 1)[0]):
                hints.append("the repository name must be lowercase")
            if "@" in ref and not re.search(rf"@{_DIGEST}$", ref):
                hints.append("a digest is @sha256: followed by 64 lowercase hex digits")
        detail = f" ({'; '.join(hints)})" if hints else ""
        raise ValueError(
            f"{ref!r} is not a valid image reference{detail}. Fix: write it as {IMAGE_REFERENCE_FORM}, "
            f"e.g. {DEFAULT_IMAGE}"
        )
    return ImageReference(match.group("name"), match.group("tag"), match.group("digest"))


def unpinned_image_message(setting: str, ref: str, allow_setting: str = "image.allow_latest") -> str | None:
    """Why `ref` is not pinned, with the fix; None when it is pinned."""
    parsed = parse_image_reference(ref)
    if parsed.pinned:
        return None
    why = "has no tag and no digest, so Docker reads it as :latest" if parsed.tag is None else \
        f"uses the moving tag {parsed.tag!r}"
    example_tag = DEFAULT_IMAGE.rsplit(":", 1)[1] if parsed.name == DEFAULT_IMAGE.rsplit(":", 1)[0] else "<version>"
    return (
        f"{setting} is {ref!r}, which is not pinned (it {why}): every redeploy could silently run another "
        "version. "
        f"Fix: pin a tag such as {parsed.name}:{example_tag}, or a digest ({parsed.name}@sha256:<digest>, from "
        f"`docker buildx imagetools inspect {parsed.name}:<tag>`), or set {allow_setting}: true"
    )


# ----------------------------------------------------------------------------- time zones
TIMEZONE_PATTERN = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")


@functools.cache
def known_timezones() -> frozenset[str]:
    """IANA zone names this machine knows (empty when it has no tz database)."""
    try:
        return frozenset(zoneinfo.available_timezones())
    except Exception:  # noqa: BLE001 - a broken tz database must not break validation
        return frozenset()


def check_timezone(value: str) -> str:
    zones = known_timezones()
    if zones:
        if value in zones:
            return value
        by_lower = {zone.lower(): zone for zone in zones}
        guess = by_lower.get(value.lower()) or next(iter(difflib.get_close_matches(value, sorted(zones), 1, 0.6)), None)
        hint = f"; did you mean {guess!r}?" if guess else "."
        raise ValueError(
            f"{value!r} is not an IANA time zone{hint} Fix: a name such as Europe/Berlin, Asia/Shanghai or Etc/UTC "
            "(`timedatectl list-timezones` lists them)"
        )
    if not TIMEZONE_PATTERN.fullmatch(value):
        raise ValueError(f"{value!r} is not a time zone name. Fix: a name such as Europe/Berlin or Etc/UTC")
    return value


# ----------------------------------------------------------------------------- ports
class PortSpec(NamedTuple):
    """One companion port in compose short syntax `ADDR:HOST:CONTAINER[/proto]`."""

    address: str
    host_ports: tuple[int, ...]
    protocol: str


def _port_range(text: str, spec: str) -> tuple[int, ...]:
    match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", text)
    if match:
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if 1 <= first <= last <= 65535:
            return tuple(range(first, last + 1))
    raise ValueError(f"companion port {spec!r}: {text!r} is not a port (1-65535) or range. Fix: e.g. 127.0.0.1:3000:3000")


def parse_port_spec(spec: str) -> PortSpec:
    """Parse `ADDR:HOST:CONTAINER[/proto]`; the address is required (never every interface)."""
    body, _, protocol = spec.partition("/")
    protocol = protocol or "tcp"
    if protocol not in ("tcp", "udp", "sctp"):
        raise ValueError(f"companion port {spec!r} has protocol {protocol!r}. Fix: /tcp or /udp")
    if body.startswith("["):
        address, _, rest = body[1:].partition("]")
        parts = [address, *rest.removeprefix(":").split(":")] if rest.startswith(":") else [address]
    else:
        parts = body.split(":")
    if len(parts) < 3 or parts[0] in PUBLIC_ADDRESSES:
        raise ValueError(
            f"companion port {spec!r} would be published on every interface. "
            "Fix: name the address, e.g. 127.0.0.1:3000:3000"
        )
    if len(parts) > 3:
        raise ValueError(f"companion port {spec!r} is not ADDR:HOST:CONTAINER. Fix: e.g. 127.0.0.1:3000:3000")
    address, host, container = parts
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(
            f"companion port {spec!r}: {address!r} is not an IP address. Fix: e.g. 127.0.0.1:3000:3000"
        ) from None
    if parsed.is_unspecified:
        raise ValueError(
            f"companion port {spec!r} would be published on every interface. "
            "Fix: name the address, e.g. 127.0.0.1:3000:3000"
        )
    host_ports = _port_range(host, spec)
    container_ports = _port_range(container, spec)
    if len(container_ports) not in (1, len(host_ports)):
        raise ValueError(f"companion port {spec!r}: the two port ranges differ in size. Fix: ranges of equal length")
    return PortSpec(address, host_ports, protocol)


def _ip_or_localhost(address: str, setting: str) -> None:
    if address == "localhost":
        return
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{setting}: {address!r} is not an IP address. Fix: e.g. 127.0.0.1") from None


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

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+~:-]*", value):
            raise ValueError(
                f"{value!r} is not an apt version string. Fix: copy it from `apt-cache madison docker-ce`, "
                "e.g. 5:27.3.1-1~debian.13~trixie, or leave it unset"
            )
        return value

    @field_validator("official_repo_url")
    @classmethod
    def _repo_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an http(s) URL. Fix: e.g. https://download.docker.com/linux/debian")
        return value.rstrip("/")

    @field_validator("registry_mirrors")
    @classmethod
    def _mirror_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
                raise ValueError(f"registry mirror {url!r} is not a URL. Fix: write it as https://mirror.example.com")
        return value

    @field_validator("users")
    @classmethod
    def _users(cls, value: list[str]) -> list[str]:
        for user in value:
            if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
                raise ValueError(f"{user!r} is not a login user name. Fix: the user's name as in /etc/passwd, e.g. deploy")
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
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IPv4 address. Fix: the address of docker0 (`ip -4 addr show docker0`), "
                "usually 172.17.0.1"
            ) from None
        return value



class SwapSettings(Settings):
    size: str = "2G"
    """Size of the swap file (`512M`, `2G`, `4G`); `0` means no swap file is managed.
    A changed size resizes the file (swapoff, recreate, swapon)."""

    path: str = "/swapfile"
    """Where the swap file lives: an absolute file path on a local, non-CoW filesystem, not
    under /proc, /sys, /dev, /run or /tmp (stored normalized)."""

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
        return check_host_path(value, "swap", "/swapfile")

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)


class ImageSettings(Settings):
    ref: str = DEFAULT_IMAGE
    """Image every gateway runs: `[registry[:port]/]name[:tag][@sha256:<digest>]`. Pin a
    version tag you have tested (upstream publishes `X.Y.Z` tags) or a digest; an untagged
    ref or the moving tags `latest`, `stable` and `main` are refused unless `allow_latest`
    is set, because a redeploy would silently change the version."""

    source: Literal["pull", "archive"] = "pull"
    """How the image reaches the host: `pull` from its registry (or `pull_mirror`);
    `archive` streams `archive` from the control machine into `docker load` over the deploy's
    SSH connection (for hosts that cannot reach Docker Hub; build one with `hermes-infra image
    build`)."""

    archive: str | None = None
    """With `source: archive`: path on the control machine to a `docker save` archive, or to
    a directory made by `hermes-infra image build` (its image.json names ref and archive)."""

    pull_mirror: str | None = None
    """Registry host to pull through instead of Docker Hub (`mirror.example.com:5000`); the
    image is re-tagged to `ref` after the pull so the compose file stays the same."""

    allow_latest: bool = False
    """Accept an unpinned image (`ref` or a companion's `image` without a tag or digest, or
    tagged `latest`, `stable` or `main`): not recommended."""

    remote_cache_dir: str = "/var/cache/hermes-infra/images"
    """Where an archive is uploaded before `docker load` on hosts reached without SSH (`@local`,
    `@docker`); over SSH nothing is kept on disk, and `*.tar` archives left here by earlier
    versions are removed on the next load (absolute; stored normalized)."""

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        parse_image_reference(value)
        return value

    @field_validator("pull_mirror")
    @classmethod
    def _mirror(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(_DOMAIN, value, re.ASCII):
            raise ValueError(f"{value!r} is not a registry host. Fix: host[:port] without a scheme, e.g. mirror.example.com:5000")
        return value

    @field_validator("remote_cache_dir")
    @classmethod
    def _cache_dir(cls, value: str) -> str:
        return check_host_path(value, "dir", "/var/cache/hermes-infra/images")

    @model_validator(mode="after")
    def _checks(self) -> ImageSettings:
        problem = unpinned_image_message("image.ref", self.ref)
        if problem and not self.allow_latest:
            raise ValueError(problem)
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
    at least 16 characters, not a placeholder, no whitespace, quotes, `#`, `\\` or `$`; it
    replaces the key on the host."""

    model_name: Annotated[str, NoControlChars] = "hermes-agent"
    """`API_SERVER_MODEL_NAME`: the model id `/v1/models` serves and clients send."""

    cors_origins: Annotated[list[str], NoControlChars] = []
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
            _ip_or_localhost(address, "api.publish_addresses")
        return value


class WeixinSettings(Settings):
    """Personal WeChat (iLink) login of one gateway; written to its `.env`."""

    token: Annotated[SecretStr | None, NoControlChars] = None
    """`WEIXIN_TOKEN` (normally written by the QR login; set only to restore a login)."""

    account_id: Annotated[str | None, NoControlChars] = None
    """`WEIXIN_ACCOUNT_ID`."""

    dm_policy: Literal["pairing", "allowlist", "open", "disabled"] = "pairing"
    """`WEIXIN_DM_POLICY`: who may talk to the bot in direct messages."""

    group_policy: Literal["disabled", "allowlist", "open"] = "disabled"
    """`WEIXIN_GROUP_POLICY` (group chats do not work for iLink bots; keep disabled)."""

    allowed_users: Annotated[list[str], NoControlChars] = []
    """`WEIXIN_ALLOWED_USERS`: user ids for the allowlist policy."""

    allow_all_users: bool = False
    """`WEIXIN_ALLOW_ALL_USERS`: required by Hermes for `dm_policy: open`."""

    home_channel: Annotated[str | None, NoControlChars] = None
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

    publish_address: Annotated[str, NoControlChars] = "127.0.0.1"
    """Host address the dashboard port is bound to; anything but loopback needs basic auth
    (exposed dashboards were used to plant SSH-key backdoors)."""

    basic_auth_username: Annotated[str | None, NoControlChars] = None
    """`HERMES_DASHBOARD_BASIC_AUTH_USERNAME`."""

    basic_auth_password_hash: Annotated[SecretStr | None, NoControlChars] = None
    """`HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH` (preferred over a clear password)."""

    @field_validator("publish_address")
    @classmethod
    def _address(cls, value: str) -> str:
        _ip_or_localhost(value, "dashboard.publish_address")
        return value

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


# `.env` keys that other settings manage: setting them through `env` would be overridden or override.
API_ENV_KEYS = ("API_SERVER_KEY", "API_SERVER_PORT", "API_SERVER_HOST", "API_SERVER_ENABLED")


class GatewaySettings(Settings):
    """One Hermes gateway (a profile): its own container, data dir, API port, limits and `.env`."""

    name: str = "hermes"
    """Profile name: the compose service and container name (`hermes` or `hermes-<name>`) and
    the default data dir. Lowercase letters, digits, `-`, `_`."""

    data_dir: str | None = None
    """Host directory mounted at `/opt/data`. Unset: `/root/.hermes` for the profile named
    `hermes`, `/root/.hermes-<name>` for others. Absolute (a relative path would be a Docker
    named volume), stored normalized (`/root/.hermes/` is `/root/.hermes`), not a system
    directory, not under /tmp, /var/tmp or /dev/shm, and not inside another profile's data dir."""

    uid: int = Field(10000, ge=1)
    """Owner uid of the data dir: the image's `hermes` user (`HERMES_UID`)."""

    gid: int = Field(10000, ge=1)
    """Owner gid of the data dir (`HERMES_GID`)."""

    timezone: Annotated[str, NoControlChars] = "Etc/UTC"
    """`TZ` in the container: cron jobs and timestamps use it. An IANA name (`Europe/Berlin`)."""

    restart: Literal["unless-stopped", "always", "on-failure"] = "unless-stopped"
    """Compose restart policy (`no` is not offered: a gateway must come back after a crash)."""

    stop_grace_seconds: int = Field(60, ge=10, le=3600)
    """Seconds compose gives the container to stop before it is killed (`stop_grace_period`):
    Hermes needs up to ~18 s to disconnect WeChat cleanly and upstream's own units allow
    max(60, drain + 30); Docker's default of 10 s cuts it off."""

    limits: ResourceLimits = ResourceLimits()
    """Memory, CPU and process limits of the container."""

    api: ApiSettings = ApiSettings()
    """The OpenAI-compatible API server (port 8642 in the container)."""

    config: HermesConfig = HermesConfig()
    """Managed `config.yaml` keys."""

    weixin: WeixinSettings | None = None
    """Personal WeChat settings (unset: no WEIXIN_* key is managed)."""

    allowed_users: Annotated[dict[str, list[str]], NoControlChars] = {}
    """Per-platform allowlists: `{TELEGRAM: ["123"], GATEWAY: [...]}` -> `<PLATFORM>_ALLOWED_USERS`."""

    env: Annotated[dict[str, SecretStr], EnvNames, NoControlChars] = {}
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

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return check_host_path(value, "data", "/root/.hermes-<profile>")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

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
        for key in value:
            if key in API_ENV_KEYS:
                raise ValueError(f"env.{key} is managed through the api settings. Fix: use api.key / api.port instead")
        return value

    @property
    def service_name(self) -> str:
        return "hermes" if self.name == "hermes" else f"hermes-{self.name}"

    @property
    def host_data_dir(self) -> str:
        """The data dir on the host, normalized: `data_dir`, or the default for this profile."""
        if self.data_dir:
            return self.data_dir
        return "/root/.hermes" if self.name == "hermes" else f"/root/.hermes-{self.name}"



class CompanionSettings(Settings):
    """A container beside the gateways that talks to one of them over the API (e.g. a WeChat hub)."""

    name: str
    """Service and container name."""

    image: str
    """Image of the companion, pinned like the gateway image (a version tag or a digest;
    `latest`, `stable`, `main` or no tag need `image.allow_latest`)."""

    gateway: str | None = None
    """Name of the profile it talks to (unset: the first gateway)."""

    topology: Literal["host-gateway", "same-project"] = "host-gateway"
    """`same-project`: a service in the gateways' compose project, reaching
    `http://<gateway service>:8642/v1`. `host-gateway`: its own compose project, reaching
    `http://host.docker.internal:<port>/v1` through `extra_hosts: host-gateway`."""

    environment: Annotated[dict[str, str], EnvNames, NoControlChars] = {}
    """Plain (non-secret) environment variables. Not the gateway's key, model or URL variables
    (`api_key_env`, `model_env`, `api_base_url_env`), `HERMES_TIMEOUT_MS` or `AUTO_REPLY`:
    those come from settings."""

    secret_env: Annotated[dict[str, SecretStr], EnvNames, NoControlChars] = {}
    """Secret environment variables: written to a 0600 env file, never to the compose file.
    The same names as in `environment` are refused."""

    api_base_url_env: Annotated[str, EnvNames] = "HERMES_API_BASE_URL"
    """Variable the companion reads the gateway's API base URL from."""

    api_key_env: Annotated[str, EnvNames] = "HERMES_API_KEY"
    """Variable the companion reads the gateway's API key from (always the gateway's own key)."""

    model_env: Annotated[str, EnvNames] = "HERMES_MODEL"
    """Variable the companion reads the model name from (always the gateway's served name)."""

    timeout_ms: int = Field(120000, ge=1000)
    """`HERMES_TIMEOUT_MS`: how long the companion waits for an answer."""

    auto_reply: bool = True
    """`AUTO_REPLY`: whether the hub answers incoming messages by itself."""

    ports: Annotated[list[str], NoControlChars] = []
    """Published ports in compose short syntax, with an explicit address (`127.0.0.1:3000:3000`)."""

    volumes: Annotated[list[str], NoControlChars] = []
    """Volumes in compose short syntax (`/root/wechat-hub:/data`)."""

    command: Annotated[list[str] | None, NoControlChars] = None
    """Override the image's command."""

    entrypoint: Annotated[list[str] | None, NoControlChars] = None
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

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        parse_image_reference(value)
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
            parse_port_spec(port)
        return value

    @model_validator(mode="after")
    def _variables(self) -> CompanionSettings:
        """The gateway's key, model and URL variables and the settings-backed ones are set by
        hermes-infra; a companion setting them itself would fight the settings."""
        owned = {
            self.api_key_env: "its gateway's API key (gateways[].api.key; to read it from another variable, "
                              "set api_key_env)",
            self.model_env: "its gateway's served model name (gateways[].api.model_name; or rename the variable "
                            "with model_env)",
            self.api_base_url_env: "the gateway's API URL derived from topology (or rename the variable with "
                                   "api_base_url_env)",
            "HERMES_TIMEOUT_MS": "the setting timeout_ms",
            "AUTO_REPLY": "the setting auto_reply",
        }
        names = [self.api_base_url_env, self.api_key_env, self.model_env]
        if len(set(names)) != len(names):
            raise ValueError(
                f"companions[{self.name}]: api_base_url_env, api_key_env and model_env must be different variables "
                f"(they are {', '.join(names)}). Fix: give each its own name"
            )
        for field in ("environment", "secret_env"):
            for key in getattr(self, field):
                if key in owned:
                    raise ValueError(
                        f"companions[{self.name}].{field}.{key} is set by hermes-infra to {owned[key]}. "
                        f"Fix: remove {key} from {field} and use that setting instead"
                    )
        both = sorted(set(self.environment) & set(self.secret_env))
        if both:
            raise ValueError(
                f"companions[{self.name}]: {both[0]} is in both environment and secret_env, so one silently wins. "
                "Fix: keep it in one of them (secret_env for secrets)"
            )
        return self


class HealthSettings(Settings):
    timeout_seconds: int = Field(300, ge=10)
    """How long the deploy waits for `/health` to answer 200 before it fails with the log."""

    interval_seconds: float = Field(2, gt=0)
    """Pause between health probes."""


class ScheduledBackupSettings(Settings):
    schedule: str | None = None
    """When the host backs up each profile's data dir by itself: a systemd calendar expression
    (`daily`, `weekly`, `*-*-* 03:30`). The deploy installs a systemd timer that stops each
    gateway for a consistent copy (seconds), archives its data dir as its owner into
    `<backup_dir>/scheduled/<profile>/` (0600, with a `.sha256`) and starts it again. Unset: no
    timer (one installed earlier is removed; its archives stay)."""

    keep: int = Field(7, ge=1, le=1000)
    """Scheduled archives kept per profile; older ones are deleted."""

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"[A-Za-z0-9:*,./~ -]{1,100}", value) or not value.strip():
            raise ValueError(f"{value!r} is not a systemd calendar expression. Fix: daily, weekly, hourly or "
                             "e.g. '*-*-* 03:30' (see `man systemd.time`)")
        return value.strip()


class HostSettings(Settings):
    """Everything hermes-infra manages on one host.

    Every top-level pyinfra data variable must be one of these settings: an unknown name (a
    typo such as `gatways`) is refused rather than deployed as defaults. Always accepted:
    names starting with `_`, pyinfra's own data (`ssh_port`, `ssh_user`, `ssh_key`, ...,
    connector data and global arguments such as `_sudo`) and the names listed in
    `extra_data_names`."""

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

    scheduled_backups: ScheduledBackupSettings = ScheduledBackupSettings()
    """Backups the host takes by itself on a schedule (a systemd timer); off by default."""

    project_dir: str = "/opt/hermes"
    """Directory on the host holding the compose files and companion env files (absolute,
    stored normalized, not a system directory, not inside a data dir)."""

    backup_dir: str = "/var/backups/hermes-infra"
    """Where files are copied before hermes-infra replaces them, and where the data dir of a
    removed profile is archived (absolute, stored normalized, not a system directory, not
    inside a data dir)."""

    backup_keep: int = Field(5, ge=1, le=1000)
    """How many backups of each replaced file (and how many snapshots) are kept in
    `backup_dir`; older ones are deleted."""

    apt_lock_timeout_seconds: int = Field(600, ge=0)
    """How long a deploy waits for the apt/dpkg locks that unattended-upgrades or cloud-init
    hold on a fresh VPS before it gives up (0: do not wait)."""

    purge_removed_gateways: bool = False
    """When a profile disappears from `gateways`, also delete its data dir (after archiving it).
    Off: the data dir stays where it was."""

    extra_data_names: list[str] = []
    """Top-level pyinfra data names that are not hermes-infra settings but belong in your
    inventory (data for your own operations or connectors): listed here, they are accepted
    instead of refused as unknown settings."""

    @field_validator("project_dir")
    @classmethod
    def _project_dir(cls, value: str) -> str:
        return check_host_path(value, "dir", "/opt/hermes")

    @field_validator("backup_dir")
    @classmethod
    def _backup_dir(cls, value: str) -> str:
        return check_host_path(value, "dir", "/var/backups/hermes-infra")

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> HostSettings:
        if not self.gateways:
            raise ValueError("gateways is empty. Fix: list at least one gateway (the default is one named 'hermes')")
        names = [g.name for g in self.gateways]
        duplicate = sorted({n for n in names if names.count(n) > 1})
        if duplicate:
            raise ValueError(f"gateways: profile name {duplicate[0]!r} is used twice. Fix: give each profile its own name")
        ssh_port = (info.context or {}).get("ssh_port", DEFAULT_SSH_PORT) if info is not None else DEFAULT_SSH_PORT
        problems: list[str] = []
        self._check_dirs(problems)
        self._check_ports(problems, ssh_port)
        self._check_tokens(problems)
        self._check_companions(problems)
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))
        return self

    def _data_dir_setting(self, gateway: GatewaySettings) -> str:
        if gateway.data_dir:
            return f"gateways[{gateway.name}].data_dir"
        return f"gateways[{gateway.name}].data_dir (default {gateway.host_data_dir})"

    def _check_dirs(self, problems: list[str]) -> None:
        seen: list[tuple[GatewaySettings, str]] = []
        for gateway in self.gateways:
            path = gateway.host_data_dir
            for other, other_path in seen:
                if path == other_path:
                    problems.append(
                        f"gateways: data dir {path!r} is used by two profiles ({other.name} and {gateway.name}); two "
                        "gateways on one data dir corrupt its state. Fix: one data_dir per profile"
                    )
                elif is_within(path, other_path) or is_within(other_path, path):
                    inner, outer = (gateway, other) if is_within(path, other_path) else (other, gateway)
                    problems.append(
                        f"{self._data_dir_setting(inner)} {inner.host_data_dir!r} is inside "
                        f"{self._data_dir_setting(outer)} {outer.host_data_dir!r}: each container would see the "
                        f"other's state. Fix: separate directories, e.g. /root/.hermes-{inner.name}"
                    )
            seen.append((gateway, path))
        owned = [("project_dir", self.project_dir, "/opt/hermes"),
                 ("backup_dir", self.backup_dir, "/var/backups/hermes-infra"),
                 ("image.remote_cache_dir", self.image.remote_cache_dir, "/var/cache/hermes-infra/images")]
        for setting, directory, default in owned:
            for gateway, path in seen:
                if is_within(directory, path) or is_within(path, directory):
                    relation = "is" if directory == path else "is inside" if is_within(directory, path) else "contains"
                    problems.append(
                        f"{setting} {directory!r} {relation} {self._data_dir_setting(gateway)} {path!r}: the "
                        "container could rewrite hermes-infra's own files (or they would be archived and purged "
                        f"with the profile). Fix: keep {setting} outside every data dir (default {default})"
                    )

    def _check_ports(self, problems: list[str], ssh_port: int | None) -> None:
        ssh = "the host's SSH port"
        used: dict[tuple[str, int], str] = {}
        if ssh_port:
            used[("tcp", ssh_port)] = ssh

        def claim(protocol: str, port: int, setting: str) -> bool:
            owner = used.get((protocol, port))
            if owner is None:
                used[(protocol, port)] = setting
                return True
            if owner == ssh:
                problems.append(
                    f"{setting} is {port}, {ssh} (ssh_port): publishing it would take SSH away or fail. "
                    "Fix: pick another port"
                )
            else:
                problems.append(
                    f"{setting} is {port}, already used by {owner}. Fix: give each profile its own host port"
                )
            return False

        for gateway in self.gateways:
            claim("tcp", gateway.api.port, f"gateways[{gateway.name}].api.port")
            if gateway.dashboard.enabled:
                claim("tcp", gateway.dashboard.port, f"gateways[{gateway.name}].dashboard.port")
            for address in topology.publish_addresses(self, gateway):
                if address in PUBLIC_ADDRESSES and not gateway.api.allow_public:
                    problems.append(
                        f"gateways[{gateway.name}].api.publish_addresses contains {address!r}, which publishes the API "
                        "on every interface (and bypasses ufw). Fix: use 127.0.0.1 (and the docker bridge address for "
                        "companions), or set api.allow_public: true behind a firewall"
                    )
        for companion in self.companions:
            for index, spec in enumerate(companion.ports):
                parsed = parse_port_spec(spec)
                for port in parsed.host_ports:
                    if not claim(parsed.protocol, port, f"companions[{companion.name}].ports[{index}] (host port of {spec!r})"):
                        break

    def _check_tokens(self, problems: list[str]) -> None:
        seen: dict[str, str] = {}
        for gateway in self.gateways:
            for key, value in gatewayenv.bot_tokens(gateway).items():
                if value in seen:
                    problems.append(
                        f"gateways[{gateway.name}].{key} has the same value as {seen[value]}; two gateways "
                        "sharing a bot token fight over it and upstream refuses the second. Fix: one bot per profile"
                    )
                seen[value] = f"gateways[{gateway.name}].{key}"

    def _check_companions(self, problems: list[str]) -> None:
        names = {g.name for g in self.gateways} | {g.service_name for g in self.gateways}
        seen: set[str] = set()
        for companion in self.companions:
            if companion.name in names or companion.name in seen:
                problems.append(f"companions: name {companion.name!r} is already taken. Fix: pick another name")
            seen.add(companion.name)
            problem = unpinned_image_message(f"companions[{companion.name}].image", companion.image)
            if problem and not self.image.allow_latest:
                problems.append(problem)
            try:
                target = topology.gateway_for(self, companion)
            except ValueError as error:
                problems.append(str(error))
                continue
            if companion.topology == "host-gateway":
                reachable = [a for a in topology.publish_addresses(self, target) if a not in LOOPBACK_ADDRESSES]
                if not reachable:
                    problems.append(
                        f"companions[{companion.name}] reaches gateway {target.name!r} through host.docker.internal, "
                        f"but gateways[{target.name}].api.publish_addresses is {target.api.publish_addresses}: a port "
                        "bound only to 127.0.0.1 cannot be reached from containers. Fix: add the docker bridge "
                        f"address {self.docker.bridge_gateway_ip!r}, or leave publish_addresses unset"
                    )


