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

import contextvars
import datetime
import difflib
import functools
import ipaddress
import posixpath
import re
import shutil
import subprocess
import urllib.parse
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

from hermes_infra.settings import agentcode, providers
from hermes_infra.settings.sizes import parse_size_setting

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
PUBLIC_ADDRESSES = ("0.0.0.0", "::", "")
PLATFORMS = (
    "TELEGRAM", "DISCORD", "WHATSAPP", "SLACK", "SIGNAL", "EMAIL", "SMS", "MATTERMOST", "MATRIX",
    "DINGTALK", "FEISHU", "WECOM", "WECOM_CALLBACK", "WEIXIN", "BLUEBUBBLES", "QQ",
)
DEFAULT_SSH_PORT = 22

# The image every gateway runs unless image.ref says otherwise (upstream tags: X.Y.Z,
# latest/stable, main; the old vYYYY.M.D tags are gone).
DEFAULT_IMAGE = "nousresearch/hermes-agent:0.23.5"
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
    """Base: unknown keys are refused (a typo must not silently fall back to a default); values
    are strict (`true` is not a port, `"8642"` is not a number, `1.0` is not a whole number, an
    integer is not a text secret: pyinfra's `--data` already turns `8642` and `true` into
    numbers and bools, and JSON into lists and dicts); floats are finite (`inf` and `nan` are
    not limits or intervals); no text anywhere holds a control character."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True,
                              strict=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_line_text(self) -> Any:
        """Every text value of this model stays on one line: names end up in `.env` lines,
        compose files, shell scripts, logs and terminals. (Sub-models check their own; a
        field's own check, which says more, runs first.)"""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, BaseModel) or (isinstance(value, list) and value and isinstance(value[0], BaseModel)):
                continue
            try:
                _no_control_chars(value)
            except PydanticCustomError as error:
                context = dict(error.context or {})
                context["item"] = f".{name}{context.get('item', '')}"
                raise PydanticCustomError(error.type, error.message_template, context) from None
        return self


# Parts of a variable name that say its value is a credential.
SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD|PASSWD|PASS|PASSPHRASE|CREDENTIALS?|HASH)(_|$)")
# Whole values that are somebody's example, not a credential (compared lowercased, stripped).
PLACEHOLDER_VALUES = PLACEHOLDER_KEYS | frozenset(
    {"todo", "tbd", "fixme", "token", "key", "api-key", "api_key", "mytoken", "my-token", "my_token",
     "your-token", "your_token", "insert-token-here", "xxxx", "xxxxx", "...", "redacted", "hidden", "<hidden>",
     "***", "sk-...", "0000", "1234", "12345", "123456", "abc", "abc123", "foo", "bar", "foobar", "default"})
# Parts of a longer value that mark it as a template to fill in.
PLACEHOLDER_PARTS = (*PLACEHOLDER_WORDS, "your-token", "your_token", "your-key", "your_key", "your-secret",
                     "your_secret", "your-password", "your_password", "insert-", "insert_", "-here", "_here",
                     "...", "xxxxxxxx", "<", ">", "${", "{{", "todo", "fixme", "redacted")


def is_secret_name(name: str) -> bool:
    """`OPENAI_API_KEY`, `TELEGRAM_BOT_TOKEN`, `DB_PASSWORD`, `APP_SECRET`: a credential variable."""
    return bool(SECRET_NAME.search(name.upper()))


def check_secret_value(value: str, setting: str) -> str:
    """A credential that is an example value (`changeme`, `<your-token>`, `xxx...`, `${TOKEN}`) or
    empty would be deployed and fail on the host, or worse, work as a guessable secret. The
    message never repeats the value."""
    lowered = value.strip().lower()
    if not lowered:
        raise ValueError(f"{setting} is empty. Fix: set the real value, or remove the key")
    if (lowered in PLACEHOLDER_VALUES or any(part in lowered for part in PLACEHOLDER_PARTS)
            or len(set(lowered)) <= 2):
        raise ValueError(
            f"{setting} is a placeholder value (value not shown), not a credential. "
            "Fix: put the real secret there (from your secrets store), or remove the key"
        )
    return value


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
# Host paths are decided by policy: each kind of path setting may live only below the roots
# listed for it (where hermes-infra can own a directory without taking one over), never in a
# place that controls the host (below), never overlapping another path setting, and never
# with a character a shell, compose or Docker reads specially. An entry in `path_overrides`
# (path + reason) lifts the root and sensitive-place rules for that exact path.
PATH_CHARACTERS = re.compile(r"[A-Za-z0-9._/@+-]+")
PATH_CHARACTERS_TEXT = "letters, digits and . _ / @ + -"

PathKind = Literal["data", "swap", "project", "backup", "cache", "volume"]
_HOME = r"(?:/root|/home/[A-Za-z0-9._-]+)"
_BELOW = r"/[^/]+(?:/.*)?"
PATH_ROOTS: dict[str, tuple[tuple[str, str], ...]] = {
    "data": ((rf"{_HOME}{_BELOW}", "/root/<dir>, /home/<user>/<dir>"), (rf"/(?:srv|opt){_BELOW}", "/srv/<dir>, /opt/<dir>"),
             (r"/var/lib/hermes[^/]*(?:/.*)?", "/var/lib/hermes*")),
    "project": ((rf"/(?:opt|srv){_BELOW}", "/opt/<dir>, /srv/<dir>"), (rf"/root{_BELOW}", "/root/<dir>"),
                (r"/var/lib/hermes[^/]*(?:/.*)?", "/var/lib/hermes*")),
    "backup": ((r"/var/backups/hermes[^/]*(?:/.*)?", "/var/backups/hermes*"),
               (rf"(?:{_HOME}|/srv|/opt|/mnt){_BELOW}", "/root/<dir>, /home/<user>/<dir>, /srv/<dir>, /opt/<dir>, /mnt/<dir>"),
               (r"/var/lib/hermes[^/]*(?:/.*)?", "/var/lib/hermes*")),
    "cache": ((r"/var/cache/hermes[^/]*(?:/.*)?", "/var/cache/hermes*"), (r"/var/lib/hermes[^/]*(?:/.*)?", "/var/lib/hermes*"),
              (rf"/(?:srv|opt){_BELOW}", "/srv/<dir>, /opt/<dir>")),
    # The swap operation starts with `rm -f <path>`: only a file named for swap, in / or /var,
    # or below a directory hermes-infra or the operator owns.
    "swap": ((r"/(?:var/)?[^/]*swap[^/]*", "/swapfile, /swap.img, /var/swap"),
             (r"/(?:srv|opt|mnt|var/lib/hermes[^/]*)(?:/[^/]+)*/[^/]*swap[^/]*", "/srv, /opt, /mnt or /var/lib/hermes* .../<name with 'swap'>")),
    "volume": ((rf"(?:{_HOME}|/srv|/opt|/mnt){_BELOW}", "/root/<dir>, /home/<user>/<dir>, /srv/<dir>, /opt/<dir>, /mnt/<dir>"),
               (r"/var/lib/hermes[^/]*(?:/.*)?", "/var/lib/hermes*")),
}
PATH_EXAMPLES = {"data": "/root/.hermes-<profile>", "swap": "/swapfile", "project": "/opt/hermes",
                 "backup": "/var/backups/hermes-infra", "cache": "/var/cache/hermes-infra/images",
                 "volume": "/srv/<companion>"}

# Places that control the host: the system's configuration, anyone's SSH keys and login
# scripts, Docker's socket and state (root on the host), the kernel's trees, the programs.
SENSITIVE_TREES = (
    ("/etc", "the system's configuration"),
    ("/var/run", "runtime state and sockets (Docker's socket among them)"),
    ("/run", "runtime state and sockets (Docker's and containerd's among them)"),
    ("/var/lib/docker", "Docker's state (root on the host)"),
    ("/var/lib/containerd", "containerd's state (root on the host)"),
    ("/opt/containerd", "containerd's plugins"),
    ("/proc", "the kernel's process tree"), ("/sys", "the kernel's device tree"), ("/dev", "device nodes"),
    ("/boot", "the boot loader and kernels"), ("/lib/modules", "kernel modules"),
    ("/usr", "the installed programs"), ("/bin", "the installed programs"), ("/sbin", "the installed programs"),
    ("/tmp", "the world-writable /tmp (any user can plant links there, and it may be wiped at boot)"),
    ("/var/tmp", "the world-writable /var/tmp (any user can plant links there)"),
)
SENSITIVE_LIB = re.compile(r"/lib[^/]*(?:/.*)?")
# Entries of a home directory that run code or hold credentials when someone logs in.
SENSITIVE_HOME_ENTRIES = frozenset({
    ".ssh", ".gnupg", ".docker", ".aws", ".kube", ".config", ".local", ".bashrc", ".profile", ".bash_profile",
    ".bash_login", ".bash_logout", ".zshrc", ".zprofile", ".pam_environment", ".forward", ".netrc",
})


class PathOverride(NamedTuple):
    path: str
    reason: str


_PATH_OVERRIDES: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("path_overrides", default=frozenset())


def is_within(path: str, directory: str) -> bool:
    """`path` is `directory` or below it (both normalized absolute paths)."""
    return path == directory or directory == "/" or path.startswith(directory.rstrip("/") + "/")


def normalize_path(value: str) -> str:
    """`/root/.hermes/`, `/root//.hermes` and `/root/./.hermes` all become `/root/.hermes`."""
    return posixpath.normpath(re.sub(r"/+", "/", value)).replace("//", "/")


def sensitive_place(path: str) -> str | None:
    """Why `path` (normalized) is a place that controls the host, or None."""
    if path == "/":
        return "the host's root directory"
    for tree, why in SENSITIVE_TREES:
        if is_within(path, tree):
            return f"{'' if path == tree else 'under '}{tree}, {why}"
    if SENSITIVE_LIB.fullmatch(path):
        return f"under /{path.split('/')[1]}, the system's libraries"
    parts = path.split("/")
    home_entry = parts[2] if parts[1] == "root" and len(parts) > 2 else (
        parts[3] if parts[1] == "home" and len(parts) > 3 else None)
    if home_entry in SENSITIVE_HOME_ENTRIES or ".ssh" in parts:
        return f"in a home directory's {home_entry if home_entry in SENSITIVE_HOME_ENTRIES else '.ssh'} (login " \
               "scripts, keys or credentials: whoever writes there gets that user's access)"
    return None


def structural_path(value: str, setting: str, kind: PathKind) -> str:
    """Absolute, without `..`, only safe characters: the normalized path. Policy comes later."""
    example = PATH_EXAMPLES[kind]
    if not value.startswith("/"):
        if kind in ("data", "volume"):
            raise ValueError(
                f"{setting} {value!r} is a relative path: in the compose file a volume source without a leading '/' "
                "is a Docker named volume, so the state would live inside Docker, not in a host directory "
                f"hermes-infra manages and backs up. Fix: an absolute path such as {example}"
            )
        raise ValueError(f"{setting} {value!r} is not an absolute path. Fix: an absolute path such as {example}")
    if ".." in value.split("/"):
        raise ValueError(
            f"{setting} {value!r} contains '..', which the kernel resolves after following links (not the same "
            f"place as it reads). Fix: write the path without '..', e.g. {example}"
        )
    bad = next((char for char in value if not PATH_CHARACTERS.fullmatch(char)), None)
    if bad is not None:
        shown = describe_character(bad) if control_character(bad) else repr(bad)
        raise ValueError(
            f"{setting} {value!r} contains {shown}, which shells, compose volumes (':' and ',') or Docker read "
            f"specially. Fix: a path of {PATH_CHARACTERS_TEXT} only, e.g. {example}"
        )
    path = normalize_path(value)
    if kind == "swap" and (value.endswith("/") or value.endswith("/.") or path == "/"):
        raise ValueError(
            f"{setting} {value!r} looks like a directory, but it is the swap file itself. Fix: a file path such as "
            f"{example}"
        )
    return path


def path_policy(path: str, setting: str, kind: PathKind, overrides: frozenset[str] | None = None) -> None:
    """Refuse `path` (normalized) outside the roots of its kind or in a sensitive place,
    unless `path_overrides` lists it. The host root is never accepted."""
    example = PATH_EXAMPLES[kind]
    if path == "/":
        raise ValueError(f"{setting} '/' is the root directory. Fix: a directory of its own such as {example}")
    overrides = _PATH_OVERRIDES.get() if overrides is None else overrides
    if path in overrides:
        return
    escape = f"; or, if this is deliberate, add {{path: {path!r}, reason: '...'}} to path_overrides"
    why = sensitive_place(path)
    if why is not None:
        raise ValueError(
            f"{setting} {path!r} is {why}: hermes-infra would change its owner and mode, write or delete there, "
            f"or hand it to a container. Fix: a path of its own such as {example}{escape}"
        )
    roots = PATH_ROOTS[kind]
    if not any(re.fullmatch(pattern, path) for pattern, _ in roots):
        where = "; ".join(text for _, text in roots)
        what = {"swap": "the swap file", "volume": "a companion volume source", "data": "a data dir"}.get(
            kind, f"the {kind} directory")
        raise ValueError(
            f"{setting} {path!r} is outside where {what} may live ({where}), so hermes-infra could "
            f"take over (chown, chmod, archive, purge or remove) something that is not its own. Fix: a path "
            f"such as {example}{escape}"
        )


def check_host_path(value: str, kind: PathKind, example: str | None = None, setting: str = "the path") -> str:
    """Validate and normalize a host path of `kind`; returns the normalized path."""
    path = structural_path(value, setting, kind)
    path_policy(path, setting, kind)
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
        parsed = parse_address(address, f"companion port {spec!r}: address")
    except ValueError as error:
        raise ValueError(f"{error}; the whole spec is ADDR:HOST:CONTAINER, e.g. 127.0.0.1:3000:3000") from None
    if parsed.is_unspecified or (isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped
                                 and parsed.ipv4_mapped.is_unspecified):
        raise ValueError(
            f"companion port {spec!r} would be published on every interface. "
            "Fix: name the address, e.g. 127.0.0.1:3000:3000"
        )
    classify_address(str(parsed), f"companion port {spec!r}: address")
    host_ports = _port_range(host, spec)
    container_ports = _port_range(container, spec)
    if len(container_ports) not in (1, len(host_ports)):
        raise ValueError(f"companion port {spec!r}: the two port ranges differ in size. Fix: ranges of equal length")
    return PortSpec(str(parsed), host_ports, protocol)


# ----------------------------------------------------------------------------- addresses
DOCKER_BRIDGE_NETWORK = ipaddress.ip_network("172.17.0.0/16")
_IPV4_LIKE = re.compile(r"[0-9][0-9a-fA-FxX.]*")


class BindAddress(NamedTuple):
    """A parsed host address to bind a port to, and who can reach it."""

    address: str
    """Canonical text (`127.0.0.1`, `::1`, `::ffff:127.0.0.1`)."""
    reach: Literal["loopback", "bridge", "unspecified", "private", "link-local", "global"]


def parse_address(value: str, setting: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address in its canonical spelling (ValueError naming setting, value and fix).

    Short, octal and hex IPv4 forms (`127.1`, `0177.0.0.1`, `0x7f.0.0.1`, `0`) are refused:
    Docker, the kernel and `inet_aton` read them differently. So are brackets, zone ids and
    hostnames: Docker binds addresses, it does not resolve names."""
    fix = "Fix: an IP address such as 127.0.0.1"
    if value.startswith("[") or value.endswith("]"):
        raise ValueError(f"{setting} {value!r} has brackets. {fix} or ::1, written without brackets")
    if "%" in value:
        raise ValueError(f"{setting} {value!r} has a zone id (%...), which Docker does not bind to. {fix}")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        if _IPV4_LIKE.fullmatch(value) and ":" not in value:
            raise ValueError(
                f"{setting} {value!r} is not a canonical IPv4 address (four decimal numbers 0-255 without leading "
                "zeros): short, octal and hex forms mean different addresses to Docker and the kernel. "
                f"{fix} or 0.0.0.0, written out in full"
            ) from None
        raise ValueError(f"{setting} {value!r} is not an IP address (Docker does not resolve names). {fix}") from None
    return address


def classify_address(value: str, setting: str, bridge: str | None = None) -> BindAddress:
    """Parse a bind address and say who can reach it: only `loopback` and the docker `bridge`
    address (`docker.bridge_gateway_ip`) are closed to strangers."""
    address = parse_address(value, setting)
    effective = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address
    if not (effective.is_loopback or effective.is_unspecified) and (effective.is_multicast or effective.is_reserved or (
            isinstance(effective, ipaddress.IPv4Address) and effective == ipaddress.IPv4Address("255.255.255.255"))):
        raise ValueError(f"{setting} {value!r} is not a host address one can bind to. Fix: e.g. 127.0.0.1")
    if effective.is_unspecified:
        reach = "unspecified"
    elif effective.is_loopback:
        reach = "loopback"
    elif bridge is not None and str(effective) == bridge:
        reach = "bridge"
    elif effective.is_link_local:
        reach = "link-local"
    elif effective.is_private:
        reach = "private"
    else:
        reach = "global"
    return BindAddress(str(address), reach)


def public_address_problem(address: BindAddress, setting: str, flag: str) -> str | None:
    """Why publishing on `address` needs `flag` (the setting's allow_public), or None."""
    if address.reach in ("loopback", "bridge"):
        return None
    what = {"unspecified": "every interface (and bypasses ufw)", "private": "a LAN address other hosts reach",
            "link-local": "a link-local address the neighbours reach", "global": "a public address"}[address.reach]
    return (f"{setting} {address.address!r} is {what}: strangers could reach the port. Fix: use 127.0.0.1 (and the "
            f"docker bridge address for companions), or set {flag}: true behind a firewall")


# ----------------------------------------------------------------------------- daemon.json
# daemon.json keys dockerd 20.10 to 29 reads, with their JSON types ("bool", "int", "str",
# "strs": list of text, "map": object of text, "obj": object, "objs": list of objects).
DAEMON_KEYS: dict[str, str] = {
    "allow-nondistributable-artifacts": "strs", "api-cors-header": "str", "authorization-plugins": "strs",
    "bip": "str", "bip6": "str", "bridge": "str", "builder": "obj", "cdi-spec-dirs": "strs", "cgroup-parent": "str",
    "containerd": "str", "containerd-namespace": "str", "containerd-plugins-namespace": "str", "cri-containerd": "bool",
    "data-root": "str", "debug": "bool", "default-address-pools": "objs", "default-cgroupns-mode": "str",
    "default-gateway": "str", "default-gateway-v6": "str", "default-ipc-mode": "str", "default-network-opts": "obj",
    "default-runtime": "str", "default-shm-size": "str", "default-ulimits": "obj", "dns": "strs", "dns-opts": "strs",
    "dns-search": "strs", "exec-opts": "strs", "exec-root": "str", "experimental": "bool", "features": "obj",
    "firewall-backend": "str", "fixed-cidr": "str", "fixed-cidr-v6": "str", "group": "str", "host-gateway-ip": "str",
    "host-gateway-ips": "strs", "hosts": "strs", "http-proxy": "str", "https-proxy": "str", "icc": "bool",
    "init": "bool", "init-path": "str", "insecure-registries": "strs", "ip": "str", "ip-forward": "bool",
    "ip-forward-no-drop": "bool", "ip-masq": "bool", "ip6tables": "bool", "iptables": "bool", "ipv6": "bool",
    "labels": "strs", "live-restore": "bool", "log-driver": "str", "log-format": "str", "log-level": "str",
    "log-opts": "map", "max-concurrent-downloads": "int", "max-concurrent-uploads": "int",
    "max-download-attempts": "int", "metrics-addr": "str", "mtu": "int", "no-new-privileges": "bool",
    "no-proxy": "str", "node-generic-resources": "strs", "oom-score-adjust": "int", "pidfile": "str",
    "proxies": "obj", "raw-logs": "bool", "registry-mirrors": "strs", "runtimes": "obj", "seccomp-profile": "str",
    "selinux-enabled": "bool", "shutdown-timeout": "int", "storage-driver": "str", "storage-opts": "strs",
    "swarm-default-advertise-addr": "str", "tls": "bool", "tlscacert": "str", "tlscert": "str", "tlskey": "str",
    "tlsverify": "bool", "userland-proxy": "bool", "userland-proxy-path": "str", "userns-remap": "str",
}
_JSON_TYPES = {"bool": "true or false", "int": "a whole number", "str": "a text value", "strs": "a list of text values",
               "map": "a mapping of text values", "obj": "a mapping", "objs": "a list of mappings"}
# dockerd's command-line spellings of the API listener.
_HOST_FLAGS = frozenset({"-H", "--host", "H", "host", "hosts"})
DAEMON_LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def _json_type_ok(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "strs":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind == "map":
        return isinstance(value, Mapping) and all(isinstance(item, str) for item in value.values())
    if kind == "obj":
        return isinstance(value, Mapping)
    return isinstance(value, list) and all(isinstance(item, Mapping) for item in value)


def _daemon_exposure(key: str, value: Any) -> str | None:
    """Why `key: value` opens the engine (root on the host) to others, or None."""
    where = f"docker.daemon_options.{key}"
    if key == "hosts":
        for entry in value:
            if not entry.startswith("unix:///"):
                return (f"{where} has {entry!r}: an engine API listener other than a unix socket hands root on the "
                        "host to whoever reaches it. Fix: remove it (use `ssh` or `DOCKER_HOST=ssh://...` for "
                        "remote access)")
    if key in ("tls", "tlsverify") and value is False:
        return (f"{where} is false, which turns off the API's client certificate check. Fix: remove it "
                "(hermes-infra never opens a TCP listener)")
    if key == "api-cors-header":
        return f"{where} lets browser pages call the engine API. Fix: remove it"
    if key == "metrics-addr" and value:
        host = value.rsplit(":", 1)[0].strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return (f"{where} is {value!r}: the metrics endpoint would listen beyond this host. "
                    "Fix: 127.0.0.1:9323, or remove it")
    if key == "insecure-registries":
        for entry in value:
            host = re.sub(r"(:\d+)?(/\d+)?$", "", entry)
            try:
                local = ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = host == "localhost"
            if not local:
                return (f"{where} has {entry!r}: images from it would come over plain HTTP, so anyone on the path "
                        "could swap the gateway's image. Fix: serve the registry over TLS (or on 127.0.0.1), "
                        "and remove it here")
    return None


def check_daemon_options(options: Mapping[str, Any]) -> None:
    """Refuse unknown daemon.json keys, values of the wrong JSON type and options that expose
    the engine. Options that turn hermes-infra's hardening off (`icc: true`,
    `no-new-privileges: false`) are accepted: the checks report them as skipped with the reason."""
    for key, value in options.items():
        where = f"docker.daemon_options.{key}"
        if key in _HOST_FLAGS and key != "hosts":
            raise ValueError(f"{where}: {key!r} is dockerd's API listener flag, which would hand root on the host to "
                             "whoever reaches it. Fix: remove it")
        kind = DAEMON_KEYS.get(key)
        if kind is None:
            guess = difflib.get_close_matches(key, list(DAEMON_KEYS), 1, 0.6)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            raise ValueError(f"{where} is not a daemon.json key dockerd knows (20.10 to 29); dockerd would refuse "
                             f"to start. Fix: {hint}see `man dockerd` / the daemon.json reference for the spelling")
        if not _json_type_ok(value, kind):
            raise ValueError(f"{where} is {type(value).__name__}, but dockerd reads it as {_JSON_TYPES[kind]}. "
                             f"Fix: write it as {_JSON_TYPES[kind]}")
        if key == "log-level" and value not in DAEMON_LOG_LEVELS:
            raise ValueError(f"{where} is {value!r}. Fix: one of {', '.join(DAEMON_LOG_LEVELS)}")
        for path_key in ("data-root", "exec-root", "pidfile"):
            if key == path_key:
                structural_path(value, where, "volume")
        problem = _daemon_exposure(key, value)
        if problem:
            raise ValueError(problem)


class DockerSettings(Settings):
    install_source: Literal["official", "distro"] = "official"
    """Where Docker comes from: `official` = Docker's apt repository for the host's OS (deb822
    source with `Signed-By`, packages docker-ce + docker-compose-plugin); `distro` = the OS's
    own packages: Debian's `docker.io` + `docker-compose` (compose v2 from Debian 13 on),
    Ubuntu's `docker.io` + `docker-compose-v2`. A Docker from the snap store, or the other
    source's engine on a host hermes-infra has not deployed yet, is refused, not replaced."""

    version: str | None = None
    """Pin the engine package version (apt version string, e.g. `5:27.3.1-1~debian.13~trixie`
    or `5:27.3.1-1~ubuntu.24.04~noble`: it must be built for the host's OS and release);
    unset installs the newest the source offers and never upgrades an installed engine."""

    official_repo_url: str | None = None
    """Base URL of Docker's apt repository; unset: Docker's own for the host's OS
    (`https://download.docker.com/linux/debian` or `.../linux/ubuntu`). Point it at an internal
    mirror if you have one; a URL ending in another OS's name (`/debian` on an Ubuntu host) is refused."""

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
    """Extra daemon.json keys, merged over the ones above (they win). Only keys dockerd 20.10-29
    knows, with their JSON types; an API listener other than a unix socket (`hosts` with
    `tcp://`, `fd://`, `ssh://`), `tls`/`tlsverify: false`, `api-cors-header`, a `metrics-addr`
    beyond loopback and `insecure-registries` beyond loopback are refused (they open the
    engine, root on the host, or its images to others). `icc: true` and
    `no-new-privileges: false` are accepted: the checks report them as skipped."""

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
    def _repo_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
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

    @field_validator("daemon_options")
    @classmethod
    def _daemon_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_daemon_options(value)
        return value

    @field_validator("bridge_gateway_ip")
    @classmethod
    def _bridge_ip(cls, value: str) -> str:
        fix = "Fix: the address of docker0 (`ip -4 addr show docker0`), usually 172.17.0.1"
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a canonical IPv4 address. {fix}") from None
        if not address.is_private or address.is_loopback or address.is_unspecified or address.is_link_local \
                or address.is_multicast:
            raise ValueError(f"{value!r} is not a private address a bridge can have (ports published there "
                             f"would be reachable by others). {fix}")
        return str(address)



class SwapSettings(Settings):
    size: str = "2G"
    """Size of the swap file (`512M`, `2G`, `4G`; a unit is required); `"0"` means no swap file
    is managed. A changed size resizes the file (swapoff, recreate, swapon)."""

    path: str = "/swapfile"
    """Where the swap file lives: an absolute file path on a local, non-CoW filesystem, stored
    normalized. The swap operation starts with `rm -f` on it, so the file name must contain
    `swap` and it must be directly in `/` or `/var` (`/swapfile`, `/swap.img`, `/var/swap`) or
    below `/srv`, `/opt`, `/mnt` or `/var/lib/hermes*`; never in a sensitive place, never
    inside a data dir (or listed in `path_overrides`)."""

    swappiness: int = Field(10, ge=0, le=100)
    """`vm.swappiness`, persisted in /etc/sysctl.d/: low values keep the gateway in RAM and
    use swap as an OOM safety net."""

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size_setting(value, zero_means_off=True)
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_host_path(value, "swap", setting="swap.path")

    @property
    def size_bytes(self) -> int:
        return parse_size_setting(self.size, zero_means_off=True)


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
    versions are removed on the next load (absolute; stored normalized; below
    `/var/cache/hermes*`, `/var/lib/hermes*`, `/srv` or `/opt`)."""

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
        return check_host_path(value, "cache", setting="image.remote_cache_dir")

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

    cpus: float | None = Field(None, gt=0, le=1024)
    """CPU limit (`cpus`, a finite number). Unset: derived from the host's cores (cores x 5/8,
    at least 0.5), e.g. 2.5 on a 4-core host."""

    pids: int = Field(1024, ge=32)
    """Maximum number of processes in the container (`pids_limit`): stops fork bombs from tools."""

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and parse_size_setting(value) < 256 * MIB:
            raise ValueError(f"{value!r} is below 256M; the gateway needs ~150 MB idle. Fix: at least 512M")
        return value


class ApiSettings(Settings):
    port: int = Field(8642, ge=1, le=65535)
    """Host port the API server is published on (the container always listens on 8642)."""

    publish_addresses: list[str] | None = None
    """Host IP addresses the port is bound to (canonical spelling, no hostnames: Docker binds
    addresses). Unset: `127.0.0.1`, plus the docker bridge address when a companion reaches
    this gateway through `host.docker.internal` (a port bound only to 127.0.0.1 is unreachable
    from containers). Anything but loopback and `docker.bridge_gateway_ip` (every interface,
    LAN, link-local, public) needs `allow_public`."""

    allow_public: bool = False
    """Allow publishing where strangers can reach the port (`0.0.0.0`, `::`, a LAN or public
    address). Published ports bypass ufw: only do this behind a cloud firewall or a TLS proxy."""

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
        addresses = [classify_address(address, f"api.publish_addresses[{index}]").address
                     for index, address in enumerate(value)]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"api.publish_addresses lists an address twice ({addresses}): Docker would fail to bind "
                             "the second. Fix: list each address once")
        return addresses


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

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret_value(value.get_secret_value(), "weixin.token")
        return value

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


CONFIG_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
# config.yaml keys the typed settings of HermesConfig write, and the setting that owns each.
TYPED_CONFIG_KEYS = {
    "tool_loop_guardrails.hard_stop_enabled": "config.tool_loop_hard_stop",
    "security.allow_lazy_installs": "config.allow_lazy_installs",
    "security.tirith_enabled": "config.tirith_enabled",
}


class ModelConfig(Settings):
    """`model.*` of `config.yaml`. Unset keys are not written (what is there stays)."""

    provider: Annotated[str | None, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")] = None
    """`model.provider`: `custom` for any OpenAI-compatible endpoint (vLLM, Ollama, LiteLLM, a
    provider without a name in Hermes), or a provider Hermes knows (`openrouter`, `openai-api`,
    `anthropic`, `gemini`, `deepseek`, ...; bare `openai` is not one in Hermes 0.19.0). Without
    a provider the gateway is alive but not ready: every chat answers 500."""

    default: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    """`model.default`: the model id sent to the provider (e.g. `my-model`)."""

    base_url: str | None = None
    """`model.base_url`: the endpoint, `http(s)://host[:port]/path`, without credentials in
    it (put the key in `api_key`)."""

    api_key: SecretStr | None = None
    """The provider's key (a secret: never printed; not a placeholder), written where Hermes
    reads it: `model.api_key` in config.yaml for `custom` (which Hermes reads only together
    with `base_url`), the provider's variable in `.env` for a named provider
    (`OPENROUTER_API_KEY`, `ANTHROPIC_API_KEY`, ...: see the table in the README). Not
    `env.OPENAI_API_KEY` for a custom endpoint: Hermes sends that only to openai.com."""

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        fix = "Fix: e.g. http://10.0.0.5:8000/v1 or https://api.example.com/v1"
        try:
            url = urllib.parse.urlsplit(value)
            url.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError(f"config.model.base_url is not a URL. {fix}") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"config.model.base_url {value!r} is not an http(s) URL with a host. {fix}")
        if url.username is not None or url.password is not None or "@" in url.netloc:
            raise ValueError("config.model.base_url has credentials in it (value not shown), which would be "
                             f"printed and logged as part of the URL. Fix: put the key in config.model.api_key. {fix}")
        if any(char.isspace() for char in value):
            raise ValueError(f"config.model.base_url {value!r} contains whitespace. {fix}")
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret_value(value.get_secret_value(), "config.model.api_key")
        return value

    @model_validator(mode="after")
    def _key_has_a_place(self) -> ModelConfig:
        if self.provider in providers.REFUSED:
            raise ValueError(f"config.model.provider {self.provider!r} is not a provider in Hermes 0.19.0 (it refuses "
                             f"to start a chat). Fix: provider: {providers.REFUSED[self.provider]}")
        place = providers.key_place(self.provider)
        if self.base_url is not None and place is not None and not place.base_url:
            raise ValueError(f"config.model.base_url is set for provider {self.provider!r}, whose endpoint Hermes "
                             f"fixes (it ignores model.base_url, {place.source}). Fix: remove base_url, or use "
                             "provider: custom for another endpoint")
        if self.api_key is None:
            return self
        if self.provider is None:
            raise ValueError("config.model.api_key is set without config.model.provider, so nothing says where "
                             "Hermes should send it. Fix: provider: custom (with base_url) for an OpenAI-compatible "
                             "endpoint, or a named provider such as openrouter")
        if place is None:
            raise ValueError(
                f"config.model.api_key is set for provider {self.provider!r}, whose key hermes-infra does not know "
                f"where Hermes reads. Fix: one of {', '.join(sorted(providers.PROVIDER_KEYS))}, or leave api_key "
                "unset and put the key in env under the variable Hermes reads for that provider")
        if place.env is None and self.base_url is None:
            raise ValueError("config.model.api_key is set for provider custom without config.model.base_url; "
                             f"Hermes reads model.api_key only together with model.base_url ({place.source}) and "
                             "would send 'no-key-required'. Fix: set base_url, e.g. http://10.0.0.5:8000/v1")
        return self

    @property
    def key_env(self) -> str | None:
        """The `.env` variable the key is written to (None: config.yaml, or no key)."""
        place = providers.key_place(self.provider)
        return place.env if self.api_key is not None and place is not None else None

    def values(self) -> dict[str, Any]:
        """The keys that are set, as config.yaml holds them (a named provider's key is not
        among them: it goes to `.env`, see :meth:`env_values`)."""
        out: dict[str, Any] = {}
        for name in ("provider", "default", "base_url"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.api_key is not None and self.key_env is None:
            out["api_key"] = self.api_key.get_secret_value()
        return out

    def env_values(self) -> dict[str, str]:
        """The `.env` key of a named provider's key."""
        return {self.key_env: self.api_key.get_secret_value()} if self.key_env and self.api_key else {}


class HermesConfig(Settings):
    """Keys of the gateway's `config.yaml` that hermes-infra manages; every other key is left alone."""

    tool_loop_hard_stop: bool = True
    """`tool_loop_guardrails.hard_stop_enabled`: stop a runaway tool loop instead of only warning
    (nobody watches an unattended server). From Hermes 0.21 on, gateways and cron jobs already
    hard-stop by default (`non_interactive_hard_stop_enabled`); this key also covers interactive
    sessions and the 0.19.0 registry-free image, which has no such default."""

    allow_lazy_installs: bool = False
    """`security.allow_lazy_installs`: let the gateway pip-install packages into its own venv at
    run time. Off on servers: the image should not change under you."""

    tirith_enabled: bool = False
    """`security.tirith_enabled`: downloads a binary from GitHub on first start (fails on hosts
    without GitHub access)."""

    model: ModelConfig = ModelConfig()
    """`model.*` keys: which inference provider and model the gateway uses."""

    extra: dict[str, Any] = {}
    """Any other keys, dotted (`display.tool_progress: false`): each part letters, digits, `_`
    or `-`. Not a key a typed setting manages (`model`, `security.allow_lazy_installs`, ...)
    nor a section holding one (`security`), which would fight that setting."""

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: dict[str, Any]) -> dict[str, Any]:
        typed = {**TYPED_CONFIG_KEYS, **{f"model.{name}": f"config.model.{name}" for name in ModelConfig.model_fields}}
        for key in value:
            if not CONFIG_KEY.fullmatch(key):
                raise ValueError(f"config.extra key {key!r} is not a dotted config.yaml key. Fix: parts of letters, "
                                 "digits, '_' or '-' joined by '.', e.g. display.tool_progress")
            for managed, setting in typed.items():
                if key == managed or managed.startswith(key + ".") or key.startswith(managed + "."):
                    setting = "config.model" if key == "model" else setting
                    raise ValueError(
                        f"config.extra key {key!r} overlaps {managed!r}, which the setting {setting} writes: one "
                        f"would undo the other on every deploy. Fix: remove it from extra and use {setting}"
                    )
        return value

    def managed(self) -> dict[str, Any]:
        """Dotted key -> value for everything this model manages."""
        values: dict[str, Any] = {
            "tool_loop_guardrails.hard_stop_enabled": self.tool_loop_hard_stop,
            "security.allow_lazy_installs": self.allow_lazy_installs,
            "security.tirith_enabled": self.tirith_enabled,
        }
        values.update({f"model.{key}": value for key, value in self.model.values().items()})
        values.update(self.extra)
        return values


class DashboardSettings(Settings):
    enabled: bool = False
    """Run the Hermes web dashboard (official image: `HERMES_DASHBOARD=1`)."""

    port: int = Field(9119, ge=1, le=65535)
    """Host port the dashboard is published on."""

    publish_address: Annotated[str, NoControlChars] = "127.0.0.1"
    """Host IP address the dashboard port is bound to (no hostnames: Docker binds addresses);
    anything but loopback needs basic auth (exposed dashboards were used to plant SSH-key
    backdoors), and anything but loopback or the docker bridge address also `allow_public`."""

    allow_public: bool = False
    """Allow publishing the dashboard where strangers can reach it (`0.0.0.0`, a LAN or public
    address); basic auth is still required."""

    basic_auth_username: Annotated[str | None, NoControlChars] = None
    """`HERMES_DASHBOARD_BASIC_AUTH_USERNAME`."""

    basic_auth_password_hash: Annotated[SecretStr | None, NoControlChars] = None
    """`HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH` (preferred over a clear password)."""

    @field_validator("basic_auth_password_hash")
    @classmethod
    def _hash(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret_value(value.get_secret_value(), "dashboard.basic_auth_password_hash")
        return value

    @field_validator("publish_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return classify_address(value, "dashboard.publish_address").address

    @model_validator(mode="after")
    def _auth_when_exposed(self) -> DashboardSettings:
        exposed = classify_address(self.publish_address, "dashboard.publish_address").reach != "loopback"
        if self.enabled and exposed and not (self.basic_auth_username and self.basic_auth_password_hash):
            raise ValueError(
                f"dashboard.publish_address is {self.publish_address!r} (not loopback) without basic auth; "
                "Hermes refuses to start it and it would be an open door. Fix: publish on 127.0.0.1 and use an "
                "SSH tunnel, or set basic_auth_username and basic_auth_password_hash"
            )
        return self


# `.env` keys that other settings manage: setting them through `env` would be overridden or override.
API_ENV_KEYS = ("API_SERVER_KEY", "API_SERVER_PORT", "API_SERVER_HOST", "API_SERVER_ENABLED")
# Variables the typed settings, the compose file or the image own, and the setting to use instead.
OWNED_ENV: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"API_SERVER_(KEY|PORT|HOST|ENABLED)"), "api.key / api.port (host and enablement are fixed)"),
    (re.compile(r"API_SERVER_MODEL_NAME"), "api.model_name"),
    (re.compile(r"API_SERVER_CORS_ORIGINS"), "api.cors_origins"),
    (re.compile(r"API_SERVER_.*"), "the api settings"),
    (re.compile(r"WEIXIN_.*"), "the weixin settings (weixin.token, weixin.account_id, ...)"),
    (re.compile(r"HERMES_DASHBOARD.*"), "the dashboard settings"),
    (re.compile(r"HERMES_(UID|GID)"), "uid / gid"),
    (re.compile(r"HERMES_(HOME|SKIP_CONFIG_MIGRATION)"), "nothing: hermes-infra and the image fix it"),
    (re.compile(r"TZ"), "timezone"),
    (re.compile(rf"({'|'.join((*PLATFORMS, 'GATEWAY'))})_ALLOWED_USERS"), "allowed_users"),
)


def owned_env_setting(key: str) -> str | None:
    """The setting that owns the `.env` key `key`, or None when `env` may set it."""
    return next((setting for pattern, setting in OWNED_ENV if pattern.fullmatch(key)), None)


class AgentFileSettings(Settings):
    """One file of the agent's, copied from the operator's repository into the data dir."""

    src: str
    """Path of the file in the repository hermes-infra runs from (the current directory), e.g.
    `files/hermes/SOUL.md`: relative, no `..`, a regular file (no link anywhere on the way), at
    most 1 MiB."""

    dest: str
    """Where it goes, relative to the data dir (`/root/.hermes` on the host is `/opt/data` in the
    container): `SOUL.md`, `interview/notes.md`, `scripts/check.sh`, `skills/<name>/SKILL.md`.
    Letters, digits, `. _ -` per segment; never `.env`, `config.yaml` or state Hermes writes
    (`sessions/`, `state.db`, `cron/`, `memories/`, `logs/`, `weixin/`, ...)."""

    mode: Literal["0600", "0644", "0700", "0755"] = "0644"
    """File mode, set by the data dir's owner on its own file."""

    @field_validator("dest")
    @classmethod
    def _dest(cls, value: str) -> str:
        return agentcode.check_dest(value, "files[].dest")

    @field_validator("src")
    @classmethod
    def _src(cls, value: str) -> str:
        agentcode.check_src_name(value, "files[].src")
        problem = agentcode.src_problem(value)
        if problem:
            raise ValueError(f"files[].src {value!r} {problem}")
        return value


class CronJobSettings(Settings):
    """One scheduled job, kept in the gateway's `cron/jobs.json` through the Hermes CLI."""

    name: str
    """The job's name, unique per gateway; in Hermes it is `hermes-infra/<name>` (how the deploy
    knows its own jobs from those made by hand). Letters, digits, `. _ -`."""

    schedule: str
    """`every 30m`, `every 2h`, `every 1d`, or five cron fields (`0 9 * * 1-5`), in the gateway's
    `timezone`. One-shot schedules are not declared in settings."""

    prompt: str | None = None
    """What the agent is asked at each run (with `script`: the script's output comes first)."""

    script: str | None = None
    """A script under `scripts/` in the data dir (`check_and_send.sh`), which must be one of this
    gateway's `files`. Alone (no `prompt`), its output is delivered as it is, without the agent."""

    deliver: str = "local"
    """Where the result goes: `local` (kept in `cron/output/`), `weixin` (the home channel set by
    `/sethome`), `weixin:<chat id>`, another platform the same way, or `all`; several joined by `,`."""

    enabled: bool = True
    """False pauses the job (kept, not run)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return agentcode.check_job_name(value, "cron[].name")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return agentcode.check_schedule(value, "cron[].schedule")

    @field_validator("deliver")
    @classmethod
    def _deliver(cls, value: str) -> str:
        return agentcode.check_deliver(value, "cron[].deliver")

    @model_validator(mode="after")
    def _something_to_run(self) -> CronJobSettings:
        if not self.prompt and not self.script:
            raise ValueError(f"cron job {self.name!r} has neither prompt nor script. Fix: set one (or both)")
        if self.prompt and self.prompt.startswith("-"):
            raise ValueError(f"cron job {self.name!r}: a prompt starting with '-' would be read by the Hermes CLI as "
                             "an option. Fix: start it with a word")
        return self


class GatewaySettings(Settings):
    """One Hermes gateway (a profile): its own container, data dir, API port, limits and `.env`."""

    name: str = "hermes"
    """Profile name: the compose service and container name (`hermes` or `hermes-<name>`) and
    the default data dir. Lowercase letters, digits, `-`, `_`."""

    data_dir: str | None = None
    """Host directory mounted at `/opt/data`. Unset: `/root/.hermes` for the profile named
    `hermes`, `/root/.hermes-<name>` for others. Absolute (a relative path would be a Docker
    named volume), stored normalized (`/root/.hermes/` is `/root/.hermes`), no `..`, only
    letters, digits and `. _ / @ + -`; below `/root/<dir>`, `/home/<user>/<dir>`, `/srv/<dir>`,
    `/opt/<dir>` or `/var/lib/hermes*`, never a sensitive place (`~/.ssh`, `~/.config`, login
    scripts, ...) and not overlapping another path setting (or listed in `path_overrides`)."""

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

    files: list[AgentFileSettings] = []
    """The agent's files (knowledge, `SOUL.md`, scripts, skills), synced into the data dir as its
    owner. Only files hermes-infra placed are updated or removed; the agent's own files stay."""

    cron: list[CronJobSettings] = []
    """Scheduled jobs hermes-infra keeps in Hermes; jobs made by hand are left alone."""

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
        return check_host_path(value, "data", setting="data_dir")

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
        for key, secret in value.items():
            if key in API_ENV_KEYS:
                raise ValueError(f"env.{key} is managed through the api settings. Fix: use api.key / api.port instead")
            owner = owned_env_setting(key)
            if owner is not None:
                raise ValueError(f"env.{key} is written by hermes-infra from {owner}; setting it here would fight "
                                 f"that setting. Fix: remove {key} from env and use {owner}")
            if is_secret_name(key):
                check_secret_value(secret.get_secret_value(), f"env.{key}")
        return value

    @model_validator(mode="after")
    def _provider_key_once(self) -> GatewaySettings:
        model = self.config.model
        if model.key_env and model.key_env in self.env:
            raise ValueError(f"env.{model.key_env} and config.model.api_key both set the key of provider "
                             f"{model.provider!r} (hermes-infra writes api_key to {model.key_env}). Fix: keep one, "
                             "preferably config.model.api_key")
        place = providers.key_place(model.provider)
        host = (urllib.parse.urlsplit(model.base_url).hostname or "") if model.base_url else ""
        to_openai = host == "openai.com" or host.endswith((".openai.com", ".openai.azure.com"))
        if (place is not None and place.env is None and model.api_key is None and "OPENAI_API_KEY" in self.env
                and model.base_url is not None and not to_openai):
            raise ValueError(
                f"env.OPENAI_API_KEY is set for provider custom at {host!r}, but Hermes 0.19.0 sends OPENAI_API_KEY "
                "only to openai.com and Azure hosts (hermes_cli/runtime_provider.py:1150): the endpoint would get "
                "'Bearer no-key-required'. Fix: move the key to config.model.api_key")
        return self

    @model_validator(mode="after")
    def _agent_code(self) -> GatewaySettings:
        agentcode.check_agent_code([(f.src, f.dest) for f in self.files],
                                   [(j.name, j.script) for j in self.cron], f"gateways[{self.name}]")
        return self

    @property
    def service_name(self) -> str:
        return "hermes" if self.name == "hermes" else f"hermes-{self.name}"

    @property
    def host_data_dir(self) -> str:
        """The data dir on the host, normalized: `data_dir`, or the default for this profile."""
        if self.data_dir:
            return self.data_dir
        return "/root/.hermes" if self.name == "hermes" else f"/root/.hermes-{self.name}"



COMPANION_MEMORY_FLOOR = 32 * MIB
VOLUME_MODES = frozenset({"ro", "rw", "z", "Z", "ro,z", "ro,Z", "rw,z", "rw,Z", "nocopy"})
VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


class VolumeSpec(NamedTuple):
    """A compose short-syntax volume: a host path (normalized) or a named volume, the target."""

    source: str | None
    host_path: bool
    target: str
    mode: str | None

    @property
    def text(self) -> str:
        parts = [self.source] if self.source is not None else []
        parts.append(self.target)
        if self.mode:
            parts.append(self.mode)
        return ":".join(parts)


def parse_volume_spec(spec: str, setting: str) -> VolumeSpec:
    """Parse `SOURCE:TARGET[:MODE]` (or an anonymous `TARGET`); a host source gets the
    structural path checks here and the policy in HostSettings (where overrides are known)."""
    parts = spec.split(":")
    fix = "Fix: SOURCE:TARGET[:ro], e.g. /srv/wechat-hub:/data"
    if len(parts) > 3 or not all(parts):
        raise ValueError(f"{setting} {spec!r} is not SOURCE:TARGET[:MODE]. {fix}")
    if len(parts) == 1:
        parts = [None, parts[0]]
    source, target, mode = (parts + [None])[:3]
    if mode is not None and mode not in VOLUME_MODES:
        raise ValueError(f"{setting} {spec!r} has mode {mode!r}. Fix: one of ro, rw (optionally with ,z or ,Z)")
    if not target.startswith("/") or ".." in target.split("/") or not PATH_CHARACTERS.fullmatch(target):
        raise ValueError(f"{setting} {spec!r}: the target {target!r} is not an absolute container path of "
                         f"{PATH_CHARACTERS_TEXT}. {fix}")
    if source is None:
        return VolumeSpec(None, False, normalize_path(target), mode)
    if source.startswith("/"):
        return VolumeSpec(structural_path(source, f"{setting} source", "volume"), True, normalize_path(target), mode)
    if not VOLUME_NAME.fullmatch(source):
        raise ValueError(f"{setting} {spec!r}: the source {source!r} is neither an absolute host path nor a named "
                         f"volume (relative paths depend on where compose runs). {fix}, or a volume name such as hub-data")
    return VolumeSpec(source, False, normalize_path(target), mode)


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
    """Published ports in compose short syntax, with an explicit IP address
    (`127.0.0.1:3000:3000`); anything but loopback or the docker bridge address needs
    `allow_public`, every interface (`0.0.0.0`, `::`) is never accepted."""

    allow_public: bool = False
    """Allow publishing ports on a LAN or public address (behind a firewall)."""

    volumes: Annotated[list[str], NoControlChars] = []
    """Volumes in compose short syntax `SOURCE:TARGET[:ro]` (`/root/wechat-hub:/data`). A host
    source is absolute, below `/root/<dir>`, `/home/<user>/<dir>`, `/srv/<dir>`, `/opt/<dir>`,
    `/mnt/<dir>` or `/var/lib/hermes*`, never a sensitive place (Docker's socket, `/etc`, ...)
    and never inside a data dir or another path setting, unless listed in `path_overrides`; a
    named volume is a plain name."""

    command: Annotated[list[str] | None, NoControlChars] = None
    """Override the image's command."""

    entrypoint: Annotated[list[str] | None, NoControlChars] = None
    """Override the image's entrypoint."""

    memory: str = "512M"
    """Memory limit of the companion (at least 32M, with a unit)."""

    cpus: float = Field(0.5, gt=0, le=1024)
    """CPU limit of the companion (a finite number)."""

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
        if parse_size_setting(value) < COMPANION_MEMORY_FLOOR:
            raise ValueError(f"{value!r} is below 32M: the companion would be killed as it starts. Fix: e.g. 128M")
        return value

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list[str]) -> list[str]:
        return [parse_volume_spec(spec, f"volumes[{index}]").text for index, spec in enumerate(value)]

    @field_validator("secret_env")
    @classmethod
    def _secrets(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key, secret in value.items():
            check_secret_value(secret.get_secret_value(), f"secret_env.{key}")
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
        for key in self.environment:
            if is_secret_name(key):
                raise ValueError(f"companions[{self.name}].environment.{key} looks like a credential, and environment "
                                 f"is written to the compose file in clear. Fix: move {key} to secret_env")
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
    """Pause between health probes (a finite number, shorter than `timeout_seconds`)."""

    require_ready: bool = False
    """Also wait, within the same timeout, for `/health/detailed` (with the key, on the
    container's own address) to say `status: ok`: ready to answer a message, not just alive. A
    gateway without a model provider (`config.model`) never gets there, so this fails its
    deploy; off by default so a first deploy without a provider succeeds."""

    @model_validator(mode="after")
    def _interval_below_timeout(self) -> HealthSettings:
        if self.interval_seconds >= self.timeout_seconds:
            raise ValueError(
                f"health.interval_seconds ({self.interval_seconds:g}) is not shorter than health.timeout_seconds "
                f"({self.timeout_seconds}), so the gate would probe once at most. Fix: an interval well below the "
                "timeout, e.g. 2"
            )
        return self


MIN_BACKUP_GAP_SECONDS = 3600
_ELAPSE = re.compile(r"(?:Next elapse|Iter\. #2): \w+ (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})")


@functools.lru_cache(maxsize=256)
def calendar_gap_seconds(expression: str) -> float | None:
    """Seconds between two runs of a systemd calendar expression, None when systemd refuses it.

    Asks `systemd-analyze calendar` where it exists (the control machine is Debian), else
    :func:`parse_calendar` decides."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return parse_calendar(expression)
    try:
        done = subprocess.run([tool, "calendar", "--iterations=2", "--", expression], capture_output=True,
                              text=True, timeout=10, check=False, env={"LC_ALL": "C", "TZ": "UTC", "PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError):
        return parse_calendar(expression)
    if done.returncode != 0:
        return None
    times = [datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S") for text in _ELAPSE.findall(done.stdout)]
    if len(times) < 2:
        return float("inf")  # fires once (a date in the future): never too often
    return (times[1] - times[0]).total_seconds()


_SHORTHANDS = {"minutely": 60, "hourly": 3600, "daily": 86400, "weekly": 7 * 86400, "monthly": 28 * 86400,
               "quarterly": 90 * 86400, "semiannually": 181 * 86400, "yearly": 365 * 86400, "annually": 365 * 86400}
_WEEKDAY = r"(?:mon|tue|wed|thu|fri|sat|sun)(?:day|sday|nesday|rsday|urday)?"
_WEEKDAYS = re.compile(rf"{_WEEKDAY}(?:\.\.{_WEEKDAY})?(?:,{_WEEKDAY}(?:\.\.{_WEEKDAY})?)*", re.IGNORECASE)


def _calendar_field(text: str, low: int, high: int, *, tilde: bool = False) -> int | None:
    """How many values a calendar component takes (`*`, `5`, `1..5`, `1,15`, `0/15`), None
    when it is not one systemd reads."""
    count = 0
    for item in text.split(","):
        match = re.fullmatch(r"(\*|\d+(?:\.\.\d+)?)(?:/(\d+))?" if not tilde else r"(\*|~?\d+(?:\.\.\d+)?)(?:/(\d+))?", item)
        if not match:
            return None
        span, step = match.group(1), int(match.group(2)) if match.group(2) else 1
        if step == 0:
            return None
        if span == "*":
            first, last = low, high
        else:
            first, _, last = span.lstrip("~").partition("..")
            first, last = int(first), int(last or (high if match.group(2) else first))
        if not low <= first <= last <= high:
            return None
        count += len(range(first, last + 1, step))
    return count


def parse_calendar(expression: str) -> float | None:
    """A careful reading of systemd's calendar grammar (`man systemd.time`) for machines without
    systemd-analyze: `[WEEKDAYS] [[YEAR-]MONTH-DAY] [HOUR:MINUTE[:SECOND]] [TIMEZONE]` or a
    shorthand. Returns a lower bound of the seconds between runs, None when it is not valid."""
    words = expression.split()
    if len(words) == 1 and words[0].lower() in _SHORTHANDS:
        return float(_SHORTHANDS[words[0].lower()])
    if words and (words[-1] == "UTC" or (words[-1] in known_timezones() and "/" in words[-1])):
        words = words[:-1]
    if words and _WEEKDAYS.fullmatch(words[0]):
        words = words[1:]
    date = time = None
    for word in words:
        if ":" in word and time is None:
            time = word
        elif "-" in word and date is None and time is None:
            date = word
        else:
            return None
    if date is None and time is None:
        return None if words or not expression.split() else 86400.0
    if date is not None:
        parts = date.split("-")
        if len(parts) == 2:
            parts = ["*", *parts]
        if len(parts) != 3:
            return None
        year = parts[0] == "*" or _calendar_field(parts[0], 1970, 2199)
        if not year or _calendar_field(parts[1], 1, 12) is None or _calendar_field(parts[2], 1, 31, tilde=True) is None:
            return None
    time = time or "00:00:00"
    parts = time.split(":")
    if len(parts) == 2:
        parts.append("00")
    if len(parts) != 3:
        return None
    hours = _calendar_field(parts[0], 0, 23)
    minutes = _calendar_field(parts[1], 0, 59)
    seconds = _calendar_field(parts[2].split(".")[0], 0, 59)
    if hours is None or minutes is None or seconds is None:
        return None
    if minutes > 1 or seconds > 1:
        return 60.0 if minutes > 1 else 1.0
    return 3600.0 if hours > 1 else 86400.0


# ----------------------------------------------------------------------------- off-host backups
OFFSITE_SCHEMES = ("s3", "sftp", "rest")
"""The restic backends an off-host repository may use (an allow-list: restic knows more)."""
_REPO_CHARS = re.compile(r"[A-Za-z0-9._~:/@%+\[\]-]{1,1000}")
_DNS_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*")
_SFTP_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_REPO_PATH = re.compile(r"/[A-Za-z0-9._/-]{0,500}")
SSH_HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_OPENSSH_KEY = re.compile(r"-----BEGIN OPENSSH PRIVATE KEY-----\n([A-Za-z0-9+/=]{1,200}\n){1,200}"
                          r"-----END OPENSSH PRIVATE KEY-----\n?")


class OffsiteRepository(NamedTuple):
    """A restic repository URL, parsed: what the host's scripts and the checks need of it."""

    scheme: str
    """`s3`, `sftp` or `rest`."""
    host: str
    port: int | None
    path: str
    user: str | None = None
    """The SSH user of an SFTP repository."""
    http: bool = False
    """Plain http (s3 or rest, only to a loopback or private address)."""

    def url(self, rest_user: str | None = None, rest_password: str | None = None) -> str:
        """The URL restic reads from RESTIC_REPOSITORY (REST credentials percent-encoded in it:
        the env file is the only place it is written). SFTP's command is set apart
        (`sftp.command`), so its URL only carries the path."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{host}:{self.port}" if self.port else host
        if self.scheme == "sftp":
            return f"sftp:{self.user}@{where}:{self.path}" if not self.port else f"sftp://{self.user}@{where}/{self.path}"
        auth = ""
        if rest_user is not None and rest_password is not None:
            auth = f"{urllib.parse.quote(rest_user, safe='')}:{urllib.parse.quote(rest_password, safe='')}@"
        return f"{self.scheme}:{'http' if self.http else 'https'}://{auth}{where}{self.path}"


def _repo_host(host: str, setting: str, fix: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(host) or host.replace(".", "").isdigit():
        raise ValueError(f"{setting}: {host!r} is not a host name or IP address. {fix}")
    return host.lower()


PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
"""Networks that do not cross the internet (RFC 1918, carrier-grade NAT and VPN meshes, IPv6
unique local): Python's `is_private` also counts documentation and benchmark ranges."""


def _plain_http_allowed(host: str) -> bool:
    """Plain http only to an address that never crosses the internet: a loopback or private IP
    written as such (a name could resolve anywhere)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or any(address in network for network in PRIVATE_NETWORKS)


def parse_offsite_repository(value: str, setting: str = "scheduled_backups.offsite.repository") -> OffsiteRepository:
    """A restic repository URL by meaning: an allowed backend, a host, a path, no credentials
    in it (they are settings of their own, kept secret), https unless the server is on this host
    or a private network."""
    fix = ("Fix: s3:https://HOST/BUCKET[/PREFIX], sftp:USER@HOST:/ABSOLUTE/PATH (or sftp://USER@HOST:PORT//PATH) "
           "or rest:https://HOST[:PORT]/[PATH]")
    if not _REPO_CHARS.fullmatch(value):
        raise ValueError(f"{setting} {value!r} holds characters a repository URL here cannot (spaces, quotes, "
                         f"'?', '#', ...). {fix}")
    scheme, sep, rest = value.partition(":")
    if not sep or scheme not in OFFSITE_SCHEMES:
        raise ValueError(f"{setting} {value!r}: backend {scheme!r} is not one of {', '.join(OFFSITE_SCHEMES)} "
                         f"(off-host means S3, SFTP or a restic REST server). {fix}")
    if scheme == "sftp":
        return _parse_sftp(value, rest, setting, fix)
    parts = urllib.parse.urlsplit(rest)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{setting} {value!r}: {scheme} needs an https:// URL after '{scheme}:'. {fix}")
    if "@" in parts.netloc:
        raise ValueError(f"{setting}: the URL holds credentials (user:password@; value not shown). Fix: put them in "
                         f"scheduled_backups.offsite.{'rest_username and rest_password' if scheme == 'rest' else 'aws_access_key_id and aws_secret_access_key'} "
                         "(kept secret), and the URL without them")
    if parts.query or parts.fragment:
        raise ValueError(f"{setting} {value!r} has a query or fragment. {fix}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{setting} {value!r} has a bad port. {fix}") from None
    if port == 0:
        raise ValueError(f"{setting} {value!r} names port 0. {fix}")
    host = _repo_host(parts.hostname or "", setting, fix)
    path = parts.path or "/"
    if not _REPO_PATH.fullmatch(path) or ".." in path.split("/") or "//" in path:
        raise ValueError(f"{setting} {value!r}: the path {path!r} is not a plain absolute path. {fix}")
    if scheme == "s3" and path.strip("/") == "":
        raise ValueError(f"{setting} {value!r} names no bucket. {fix}")
    http = parts.scheme == "http"
    if http and not _plain_http_allowed(host):
        raise ValueError(f"{setting} {value!r} is plain http to {host}, an address on the internet (or a name): the "
                         "repository's credentials would cross the network unencrypted (the data itself is "
                         "encrypted by restic). Fix: https, or http only to 127.0.0.1 or a private address")
    return OffsiteRepository(scheme, host, port, path.rstrip("/") or "/", None, http)


def _parse_sftp(value: str, rest: str, setting: str, fix: str) -> OffsiteRepository:
    if rest.startswith("//"):
        parts = urllib.parse.urlsplit("sftp:" + rest)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{setting} {value!r} has a bad port. {fix}") from None
        user, host = parts.username, parts.hostname or ""
        if parts.password is not None:
            raise ValueError(f"{setting}: the URL holds a password (value not shown). Fix: SFTP logs in with "
                             "scheduled_backups.offsite.sftp_private_key; remove the password from the URL")
        path = parts.path[1:] if parts.path.startswith("//") else parts.path
    else:
        who, at, where = rest.partition("@")
        if not at:
            who, where = "", rest
        host, colon, path = where.partition(":")
        user, port = who or None, None
        if not colon:
            raise ValueError(f"{setting} {value!r}: no ':' between the host and the path. {fix}")
    if not user or not _SFTP_USER.fullmatch(user):
        raise ValueError(f"{setting} {value!r}: the SSH user is missing or not a user name. {fix}")
    if port == 0:
        raise ValueError(f"{setting} {value!r} names port 0. {fix}")
    host = _repo_host(host, setting, fix)
    if not _REPO_PATH.fullmatch(path) or ".." in path.split("/") or path.strip("/") == "":
        raise ValueError(f"{setting} {value!r}: the path {path!r} is not an absolute path below /. {fix}")
    return OffsiteRepository("sftp", host, port, path.rstrip("/"), user, False)


class OffsiteSettings(Settings):
    """Every backup (scheduled and manual) also sent to a restic repository off the host:
    encrypted by restic with `password`, deduplicated, tagged with the host and profile, pruned
    to the retention below, checked after each run. Debian's `restic` package is installed by
    the deploy only when this is set; the password, the credentials and the repository's URL
    live in root-only 0600 files under `/etc/hermes-infra/offsite/` (never in a command line)."""

    repository: str
    """The restic repository: `s3:https://HOST/BUCKET[/PREFIX]` (any S3-compatible store),
    `sftp:USER@HOST:/PATH` (or `sftp://USER@HOST:PORT//PATH`), or a restic REST server
    `rest:https://HOST[:PORT]/[PATH]`. Plain `http://` only to 127.0.0.1 or a private address.
    No credentials in it: they are the settings below. Created (`restic init`) on first use."""

    password: SecretStr
    """The repository's encryption password (a secret: kept only in a root 0600 file on the
    host; at least 16 characters). Without it the repository cannot be read: keep a copy off
    the host too, or a lost host means lost backups."""

    aws_access_key_id: SecretStr | None = None
    """S3 only: the access key id (AWS_ACCESS_KEY_ID; secret, root 0600 env file)."""

    aws_secret_access_key: SecretStr | None = None
    """S3 only: the secret access key (AWS_SECRET_ACCESS_KEY; secret, root 0600 env file)."""

    rest_username: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9._@+-]{1,100}$")] = None
    """REST only, with `rest_password`: the server's HTTP user (rest-server `--htpasswd-file`)."""

    rest_password: SecretStr | None = None
    """REST only, with `rest_username`: the HTTP password (secret, root 0600 env file)."""

    sftp_private_key: SecretStr | None = None
    """SFTP only: the OpenSSH private key root logs in with (`-----BEGIN OPENSSH PRIVATE KEY-----`
    ..., without a passphrase: the timer runs unattended; a key for this alone, limited on the
    server, e.g. `restrict,command="internal-sftp"`). Secret: root 0600 file on the host."""

    sftp_host_keys: list[str] = []
    """SFTP only, required: the server's SSH host keys as `TYPE BASE64` (what `ssh-keyscan HOST`
    prints after the host name). Only these are trusted: no first-use acceptance."""

    keep_daily: int = Field(7, ge=0, le=1000)
    """Daily snapshots kept per host and profile (`restic forget --keep-daily`)."""

    keep_weekly: int = Field(4, ge=0, le=1000)
    """Weekly snapshots kept per host and profile (`--keep-weekly`)."""

    keep_monthly: int = Field(6, ge=0, le=1000)
    """Monthly snapshots kept per host and profile (`--keep-monthly`); what the three keep no
    longer is removed with `--prune` after each run. With restic 0.17 or later (Debian 13's
    0.18) a group's oldest snapshot is also kept while its history is shorter than a `keep_*`
    asks for, so a young repository holds one more snapshot than the counts say."""

    read_data_percent: int = Field(5, ge=1, le=100)
    """The share of the repository's data read back and verified by the periodic
    `restic check --read-data-subset=N%` (a structural `restic check` runs after every run)."""

    read_data_every_days: int = Field(7, ge=1, le=365)
    """How often (in days) a run also does the `--read-data-subset` check."""

    @model_validator(mode="before")
    @classmethod
    def _key_lines(cls, data: Any) -> Any:
        """The private key is the one multi-line value: it is only ever written, whole, into a root
        0600 file, never into a `.env`, env, compose or shell line. It is checked as a key here
        and then held on one line (`|`-joined) for the one-line rule of every setting."""
        if isinstance(data, Mapping) and isinstance(data.get("sftp_private_key"), str):
            key = data["sftp_private_key"].replace("\r\n", "\n").strip() + "\n"
            if not _OPENSSH_KEY.fullmatch(key):
                raise ValueError("scheduled_backups.offsite.sftp_private_key (value not shown) is not an OpenSSH "
                                 "private key. Fix: the whole file ssh-keygen -t ed25519 wrote, from "
                                 "-----BEGIN OPENSSH PRIVATE KEY----- to -----END OPENSSH PRIVATE KEY-----")
            data = {**data, "sftp_private_key": key.rstrip("\n").replace("\n", "|")}
        return data

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        parse_offsite_repository(value)
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        check_secret_value(value.get_secret_value(), "scheduled_backups.offsite.password")
        if len(value.get_secret_value()) < 16:
            raise ValueError("scheduled_backups.offsite.password is shorter than 16 characters (value not shown): "
                             "it is all that protects the backups off the host. Fix: e.g. `openssl rand -hex 24`")
        return value

    @field_validator("aws_access_key_id", "aws_secret_access_key", "rest_password")
    @classmethod
    def _credential(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None:
            check_secret_value(value.get_secret_value(), f"scheduled_backups.offsite.{info.field_name}")
            if any(char.isspace() for char in value.get_secret_value()):
                raise ValueError(f"scheduled_backups.offsite.{info.field_name} holds whitespace (value not shown). "
                                 "Fix: copy it exactly as the provider gave it")
        return value

    @field_validator("sftp_host_keys")
    @classmethod
    def _host_keys(cls, value: list[str]) -> list[str]:
        import base64
        import binascii

        for index, line in enumerate(value):
            words = line.split()
            setting = f"scheduled_backups.offsite.sftp_host_keys[{index}]"
            if len(words) != 2 or words[0] not in SSH_HOST_KEY_TYPES:
                raise ValueError(f"{setting} {line[:80]!r} is not `TYPE BASE64` with TYPE one of "
                                 f"{', '.join(SSH_HOST_KEY_TYPES)}. Fix: the part of `ssh-keyscan HOST` after the host")
            try:
                blob = base64.b64decode(words[1], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{setting}: the key is not base64. Fix: copy it from ssh-keyscan") from None
            if not blob.startswith(len(words[0]).to_bytes(4, "big") + words[0].encode()):
                raise ValueError(f"{setting}: the key's data is not a {words[0]} key. Fix: copy it from ssh-keyscan")
        return [" ".join(line.split()) for line in value]

    @model_validator(mode="after")
    def _backend_fields(self) -> OffsiteSettings:
        repo = self.parsed
        needs = {"s3": {"aws_access_key_id", "aws_secret_access_key"},
                 "sftp": {"sftp_private_key", "sftp_host_keys"}, "rest": set()}[repo.scheme]
        allowed = needs | ({"rest_username", "rest_password"} if repo.scheme == "rest" else set())
        given = {name for name in ("aws_access_key_id", "aws_secret_access_key", "rest_username", "rest_password",
                                   "sftp_private_key", "sftp_host_keys") if getattr(self, name)}
        for name in sorted(needs - given):
            raise ValueError(f"scheduled_backups.offsite.{name} is required for a {repo.scheme} repository. Fix: set it")
        for name in sorted(given - allowed):
            raise ValueError(f"scheduled_backups.offsite.{name} does not apply to a {repo.scheme} repository "
                             "(a credential set where it is not used is a credential left lying around). Fix: remove it")
        if (self.rest_username is None) != (self.rest_password is None):
            raise ValueError("scheduled_backups.offsite.rest_username and rest_password go together. Fix: set both, "
                             "or neither (a server without --htpasswd-file)")
        if not (self.keep_daily or self.keep_weekly or self.keep_monthly):
            raise ValueError("scheduled_backups.offsite: keep_daily, keep_weekly and keep_monthly are all 0, so no "
                             "snapshot would be kept. Fix: keep at least one (e.g. keep_daily: 7)")
        return self

    @property
    def parsed(self) -> OffsiteRepository:
        return parse_offsite_repository(self.repository)

    @property
    def private_key_text(self) -> str | None:
        """The SFTP key as ssh reads it (its lines back), for the root 0600 file only."""
        if self.sftp_private_key is None:
            return None
        return self.sftp_private_key.get_secret_value().replace("|", "\n") + "\n"


class ScheduledBackupSettings(Settings):
    schedule: str | None = None
    """When the host backs up each profile's data dir by itself: a systemd calendar expression
    (`daily`, `weekly`, `*-*-* 03:30`). The deploy installs a systemd timer that archives each
    profile's data dir while its gateway runs (SQLite databases copied online, the rest by tar,
    as the owner) into `<backup_dir>/scheduled/<profile>/` (0600, with a `.sha256` and the
    copies' integrity checks) and records each run for `status`. Unset: no timer (one installed
    earlier is removed; its archives stay)."""

    keep: int = Field(7, ge=1, le=1000)
    """Scheduled archives kept per profile; older ones are deleted."""

    offsite: OffsiteSettings | None = None
    """Also send every backup, scheduled and manual, to an encrypted restic repository off the
    host (see OffsiteSettings); off by default. The upload's result is recorded on the host,
    shown by `status` and watched by the alerts watchdog; a failed upload fails the run."""

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        fix = "Fix: daily, weekly, hourly or e.g. '*-*-* 03:30' (see `man systemd.time`)"
        if not re.fullmatch(r"[A-Za-z0-9:*,./~ _+-]{1,100}", value) or not value.strip():
            raise ValueError(f"{value!r} is not a systemd calendar expression. {fix}")
        value = " ".join(value.split())
        gap = calendar_gap_seconds(value)
        if gap is None:
            raise ValueError(f"{value!r} is not a systemd calendar expression systemd accepts. {fix}")
        if gap < MIN_BACKUP_GAP_SECONDS:
            raise ValueError(
                f"{value!r} fires more often than hourly; each run stops every gateway for its copy, so they "
                f"would spend their time stopped or runs would overlap. {fix}"
            )
        return value


class PathOverrideSettings(Settings):
    """One path the path policy would refuse, accepted on purpose."""

    path: str
    """The exact path (as the setting holds it, normalized), e.g. `/var/run/docker.sock`."""

    reason: Annotated[str, Field(min_length=1, max_length=300)]
    """Why this path is right here (kept in the settings for whoever reads them next)."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return structural_path(value, "path_overrides[].path", "volume")

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("path_overrides[].reason is blank. Fix: say why this path is needed here")
        return value


def _raw_overrides(data: Any) -> frozenset[str]:
    """The override paths in raw settings (each is validated as a field; only a path with a
    non-blank reason counts while the other fields are validated)."""
    entries = data.get("path_overrides") if isinstance(data, Mapping) else None
    paths = set()
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, Mapping) and isinstance(entry.get("path"), str) and isinstance(entry.get("reason"), str) \
                and entry["reason"].strip() and entry["path"].startswith("/") and ".." not in entry["path"].split("/"):
            paths.add(normalize_path(entry["path"]))
    return frozenset(paths)


# ----------------------------------------------------------------------------- alerts and metrics
ALERT_RECEIVER_KINDS = ("webhook", "telegram", "wecom", "feishu", "dingtalk")
"""The receivers the watchdog knows how to talk to (each with its documented JSON body)."""
TELEGRAM_BOT_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{30,100}")
TELEGRAM_CHANNEL = re.compile(r"@[A-Za-z][A-Za-z0-9_]{4,31}")
# Characters a URL of a receiver may hold (RFC 3986's unreserved, reserved and `%`): no space,
# quote, backslash or control character, so the URL reads the same to every parser.
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]{1,2000}")


def check_receiver_url(value: str, setting: str, bridge: str | None = None, *, syntax_only: bool = False) -> str:
    """A receiver's URL, parsed: https, or plain http only to this host itself (a loopback or
    the docker bridge address, for a relay or a test receiver on the host). The message never
    repeats the URL: webhook URLs of robots carry their key. `syntax_only`: the field's own
    check; where plain http may go needs the bridge address, so the host's settings check it."""
    if not _URL_CHARS.fullmatch(value):
        raise ValueError(f"{setting} (value not shown) is not a URL: it is empty, too long or holds spaces, quotes or "
                         "other characters a URL cannot. Fix: the receiver's URL as its documentation gives it")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{setting} (value not shown) does not parse as a URL (a bad port or host). "
                         "Fix: https://host/path as the receiver's documentation gives it") from None
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"{setting} (value not shown) is not an http(s) URL with a host (scheme {parts.scheme!r}). "
                         "Fix: https://host/path")
    if port == 0:
        raise ValueError(f"{setting} (value not shown) names port 0. Fix: leave the port out or give the real one")
    if parts.scheme == "http" and not syntax_only:
        try:
            reach = classify_address(host, setting, bridge).reach
        except ValueError:
            reach = "name"
        if reach not in ("loopback", "bridge"):
            raise ValueError(
                f"{setting} (value not shown) is plain http to {host if reach != 'name' else 'a host name'}: the "
                "message and the URL's key would cross the network unencrypted. Fix: https, or http only to "
                "127.0.0.1 or the docker bridge address (a relay on this host)")
    return value


class AlertReceiverSettings(Settings):
    """One place alerts go. Which fields it needs depends on `kind`."""

    kind: Literal["webhook", "telegram", "wecom", "feishu", "dingtalk"]
    """`webhook` (a generic JSON POST: `{"host", "profile", "check", "state", "severity", "text",
    "time"}`), `telegram` (the Bot API's sendMessage), `wecom` (a WeCom group robot), `feishu` (a
    Feishu/Lark custom bot) or `dingtalk` (a DingTalk custom robot)."""

    name: Annotated[str | None, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,38}$")] = None
    """A label for `alerts test` and the journal (default: the kind and its position)."""

    secret_url: SecretStr | None = None
    """The webhook URL (webhook, wecom, feishu, dingtalk; WeCom's, Feishu's and DingTalk's carry
    the robot's key, so it is a secret: kept only in a root 0600 file on the host). https, or
    http to 127.0.0.1 or the docker bridge address."""

    sign_secret: SecretStr | None = None
    """Feishu and DingTalk only: the robot's signing secret ("sign" security setting), when set
    on the robot. Each message is then signed with it (HMAC-SHA256 and a timestamp)."""

    bot_token: SecretStr | None = None
    """Telegram only: the bot's token from @BotFather (`123456:ABC...`)."""

    chat_id: int | str | None = None
    """Telegram only: the chat to write to, a number (`-1001234567890` for a group) or a public
    channel's `@name`."""

    api_url: str = "https://api.telegram.org"
    """Telegram only: the Bot API's base URL (a local Bot API server or a relay)."""

    @field_validator("secret_url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_receiver_url(value.get_secret_value(), "alerts.receivers[].secret_url", syntax_only=True)
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return check_receiver_url(value, "alerts.receivers[].api_url", syntax_only=True).rstrip("/")

    @field_validator("sign_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret_value(value.get_secret_value(), "alerts.receivers[].sign_secret")
            if any(char.isspace() for char in value.get_secret_value()):
                raise ValueError("alerts.receivers[].sign_secret holds whitespace (value not shown). Fix: copy the robot's "
                                 "signing secret exactly (it starts with SEC for DingTalk)")
        return value

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not TELEGRAM_BOT_TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("alerts.receivers[].bot_token is not a Telegram bot token (value not shown). "
                             "Fix: the token @BotFather gave, digits, ':' and 30 or more letters, digits, '-', '_'")
        return value

    @field_validator("chat_id")
    @classmethod
    def _chat_id(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, str) and not TELEGRAM_CHANNEL.fullmatch(value):
            raise ValueError(f"alerts.receivers[].chat_id {value!r} is neither a number nor a channel's @name. "
                             "Fix: the chat's numeric id (e.g. -1001234567890, as a number, not text) or @channelname")
        return value

    @model_validator(mode="after")
    def _fields_of_kind(self) -> AlertReceiverSettings:
        label = f"alerts.receivers[{self.name or self.kind}]"
        wanted = {"telegram": {"bot_token", "chat_id"}}.get(self.kind, {"secret_url"})
        allowed = wanted | ({"sign_secret"} if self.kind in ("feishu", "dingtalk") else set()) | {"kind", "name"}
        allowed |= {"api_url"} if self.kind == "telegram" else set()
        missing = sorted(name for name in wanted if getattr(self, name) is None)
        if missing:
            raise ValueError(f"{label}: a {self.kind} receiver needs {' and '.join(missing)}. Fix: set "
                             f"{', '.join(missing)} (see the README's Alerts and metrics section)")
        extra = sorted(name for name in self.model_fields_set - allowed)
        if extra:
            raise ValueError(f"{label}: {', '.join(extra)} means nothing to a {self.kind} receiver. "
                             f"Fix: remove {', '.join(extra)}, or use the kind it belongs to")
        return self

    @property
    def label(self) -> str:
        return self.name or self.kind


class AlertSettings(Settings):
    """The on-host watchdog: a systemd timer that checks every gateway and sends a message to
    each receiver when a check changes state (down/up, not ready/ready, restarted, OOM-killed,
    a scheduled or off-host backup failed, WeChat session expired, disk nearly full)."""

    receivers: list[AlertReceiverSettings] = Field(min_length=1, max_length=20)
    """Where messages go: each item is an AlertReceiverSettings."""

    interval_seconds: int = Field(60, ge=10, le=3600)
    """How often the watchdog runs (seconds)."""

    min_free_percent: int = Field(10, ge=1, le=90)
    """Free space on each data dir's filesystem below which the watchdog warns (a full disk is a
    top cause of a corrupted `state.db`)."""

    @model_validator(mode="after")
    def _unique_labels(self) -> AlertSettings:
        labels = [r.name for r in self.receivers if r.name]
        twice = sorted({n for n in labels if labels.count(n) > 1})
        if twice:
            raise ValueError(f"alerts.receivers: name {twice[0]!r} is used twice. Fix: give each receiver its own name")
        return self


class MetricsSettings(Settings):
    """Debian's `prometheus-node-exporter`, with the textfile collector the watchdog feeds
    (`hermes_up`, `hermes_ready`, `hermes_restarts_total`, `hermes_oom_kills_total`, memory used
    and its limit, seconds since the last good scheduled backup and off-host upload)."""

    listen_address: str = "127.0.0.1"
    """The address the exporter listens on: loopback (default) or the docker bridge address
    (for a Prometheus in a container); anything else needs `allow_public`."""

    port: int = Field(9100, ge=1, le=65535)
    """The exporter's port."""

    allow_public: bool = False
    """Allow a listen address strangers could reach (behind a firewall you manage)."""

    @field_validator("listen_address")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        return classify_address(value, "metrics.listen_address").address



# ----------------------------------------------------------------------------- firewall
def parse_source_network(value: str, setting: str) -> str:
    """A source network for a firewall rule, canonical (`203.0.113.0/24`, `2001:db8::/32`; a
    bare address is its /32 or /128). Host bits set (`10.0.0.1/8`) are refused: the operator
    meant either the address or the network, and nft would silently widen it."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(f"{setting} {value!r} is not a network. Fix: e.g. 203.0.113.0/24 or 2001:db8::/32")
    try:
        parse_address(value.split("/", 1)[0], setting)
    except ValueError:
        raise ValueError(f"{setting} {value!r} is not an IP address or network in canonical spelling (names are "
                         "not resolved). Fix: e.g. 203.0.113.0/24, 203.0.113.7 or 2001:db8::/32") from None
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"{setting} {value!r} is not a network ({error}). Fix: e.g. 203.0.113.0/24, with the "
                         "host bits zero, or a single address") from None
    return str(network)


def parse_source_networks(values: list[str], setting: str) -> list[str]:
    """Each of `setting`'s source networks parsed (parse_source_network), none listed twice."""
    networks = [parse_source_network(item, f"{setting}[{index}]") for index, item in enumerate(values)]
    if len(set(networks)) != len(networks):
        raise ValueError(f"{setting} lists a network twice ({networks}). Fix: list each network once")
    return networks


class FirewallAllowSettings(Settings):
    """One port the firewall opens, to everyone or to the listed networks."""

    port: int = Field(ge=1, le=65535)
    """Host port (for a published container port: the host side, as in `api.port`)."""

    protocol: Literal["tcp", "udp"] = "tcp"
    """`tcp` or `udp`."""

    allow_from: list[str] = []
    """Source networks allowed (`203.0.113.0/24`, `2001:db8::/32`, or an address). Empty: from
    anywhere."""

    @model_validator(mode="before")
    @classmethod
    def _bare_port(cls, data: Any) -> Any:
        """`8643` is short for `{port: 8643}`."""
        if isinstance(data, int) and not isinstance(data, bool):
            return {"port": data}
        return data

    @field_validator("allow_from")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        return parse_source_networks(value, "allow_from")


class FirewallSettings(Settings):
    """A host firewall that Docker's published ports cannot bypass (nftables, a table of its
    own: Docker never flushes it, and a published container port is filtered before Docker's
    own forward rules accept it). Inbound is denied except loopback, replies, essential ICMP,
    SSH and the ports listed in `allow`; published ports on the docker bridge address stay open
    to containers. A change is loaded with an automatic revert that a second SSH connection
    must cancel, so a rule that cuts SSH off undoes itself. Turning it off removes the table,
    its file and its boot unit."""

    enabled: bool = False
    """Install and enforce the firewall (off: whatever hermes-infra installed is removed)."""

    allow: list[FirewallAllowSettings] = []
    """Ports opened on purpose: `[8643, {port: 443, allow_from: [203.0.113.0/24]}]`. A gateway,
    dashboard, companion or exporter port published on a non-loopback address is NOT opened by
    publishing it: list it here (the plan warns about each one that is not)."""

    ssh_port: int | None = Field(None, ge=1, le=65535)
    """The port sshd listens on, always allowed. Unset: the ports sshd listens on (read from
    the host) and the one the deploy's own connection arrived on; the latter is allowed always."""

    ssh_allow_from: list[str] = []
    """Networks SSH is allowed from. Empty: from anywhere. The deploy refuses a list that does
    not contain the address its own connection comes from."""

    confirm_seconds: int = Field(60, ge=20, le=600)
    """How long a newly loaded ruleset waits for the second SSH connection before the
    previous rules come back by themselves."""

    @field_validator("ssh_allow_from")
    @classmethod
    def _ssh_sources(cls, value: list[str]) -> list[str]:
        return parse_source_networks(value, "firewall.ssh_allow_from")

    @field_validator("allow")
    @classmethod
    def _distinct(cls, value: list[FirewallAllowSettings]) -> list[FirewallAllowSettings]:
        seen: set[tuple[str, int]] = set()
        for index, rule in enumerate(value):
            key = (rule.protocol, rule.port)
            if key in seen:
                raise ValueError(f"firewall.allow[{index}] opens {rule.protocol} {rule.port} a second time. Fix: one "
                                 "entry per port, with every network it is allowed from in its allow_from")
            seen.add(key)
        return value


# ----------------------------------------------------------------------------- SSH hardening
class SshHardeningSettings(Settings):
    """sshd hardened without lock-outs: key-only logins, no root password login and a few
    dev-sec/CIS items that cannot shut anyone out, written as one drop-in
    (`/etc/ssh/sshd_config.d/05-hermes-infra-hardening.conf`) that sorts before the others (sshd keeps the
    first value it reads). The deploy refuses to turn it on while it logs in with a password or
    while its user has no authorized key; the new config is checked with `sshd -t`, reloaded,
    and kept only once a second, new SSH connection with the deploy's own key logged in (else
    the previous drop-in comes back by itself). Off: the drop-in is removed."""

    enabled: bool = False
    """Write and enforce the drop-in (off: whatever hermes-infra wrote there is removed)."""

    max_auth_tries: int = Field(4, ge=2, le=10)
    """`MaxAuthTries`: authentication attempts per connection (CIS: 4 or fewer). Each key an
    SSH agent offers counts as one: with many keys in your agent, keep it above their number."""

    login_grace_seconds: int = Field(60, ge=10, le=600)
    """`LoginGraceTime`: seconds a connection may take to log in (CIS: 60 or fewer)."""

    confirm_seconds: int = Field(60, ge=20, le=600)
    """How long a reloaded sshd config waits for the second SSH connection before the previous
    drop-in comes back by itself."""


# ----------------------------------------------------------------------------- unattended upgrades
class UnattendedUpgradesSettings(Settings):
    """Automatic security updates with Debian's `unattended-upgrades`: the distribution's
    security origins only, Docker's packages never (a daemon restart stays the operator's
    decision), the automatic reboot as set here. Off: the files hermes-infra wrote are removed
    (the package stays)."""

    enabled: bool = False
    """Install `unattended-upgrades` and write its configuration."""

    automatic_reboot: bool = False
    """`Unattended-Upgrade::Automatic-Reboot`: reboot by itself when an update needs it (a new
    kernel, libc); the gateways come back with Docker's restart policy."""

    reboot_time: str = "03:30"
    """`Unattended-Upgrade::Automatic-Reboot-Time`: when that reboot happens (HH:MM, host time)."""

    @field_validator("reboot_time")
    @classmethod
    def _reboot_time(cls, value: str) -> str:
        match = re.fullmatch(r"([01][0-9]|2[0-3]):([0-5][0-9])", value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"unattended_upgrades.reboot_time {value!r} is not a time of day. Fix: HH:MM in 24-hour "
                             "time, e.g. \"03:30\"")
        return value


# ----------------------------------------------------------------------------- TLS proxy
# Special-use names no public CA issues a certificate for (RFC 2606, 6761, 6762, 8375; ICANN's
# .internal): with `ca: acme` the order could only fail.
PRIVATE_SUFFIXES = ("test", "example", "invalid", "localhost", "local", "internal", "home.arpa")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}")


def check_domain_name(value: str, setting: str) -> str:
    """A DNS name as a client types it, lowercased: letters, digits and `-` in dot-separated labels
    of at most 63 characters, two labels at least, no scheme, port, path, wildcard, trailing dot
    or IP address (ValueError naming the setting, the value and the fix). Names in any other
    script are written in their ASCII form (`xn--...`)."""
    fix = "Fix: the host name alone, e.g. hermes.example.org"
    if not isinstance(value, str) or not value:
        raise ValueError(f"{setting} is empty. {fix}")
    if "://" in value:
        raise ValueError(f"{setting} {value!r} has a scheme: the proxy always serves HTTPS. {fix}")
    if "/" in value:
        raise ValueError(f"{setting} {value!r} has a path: the proxy serves the whole name. {fix}")
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        pass
    else:
        raise ValueError(f"{setting} {value!r} is an IP address: certificates are issued for names here. {fix}, "
                         "with an A/AAAA record pointing at this host")
    if ":" in value:
        raise ValueError(f"{setting} {value!r} has a port: set tls_proxy.port instead. {fix}")
    if value.startswith("*"):
        raise ValueError(f"{setting} {value!r} is a wildcard (an ACME CA issues those only through a DNS "
                         f"challenge, which hermes-infra does not set up). {fix}")
    if value.endswith("."):
        raise ValueError(f"{setting} {value!r} ends with a dot. {fix}, without the trailing dot")
    if not value.isascii():
        raise ValueError(f"{setting} {value!r} is not in ASCII. Fix: write an internationalized name in its "
                         f"ASCII form (xn--...; `python3 -c \"print('{value}'.encode('idna').decode())\"`)")
    name = value.lower()
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{setting} {value!r} is not a DNS name (letters, digits and '-' in dot-separated "
                         f"labels of at most 63 characters, not starting or ending with '-', two labels at least). {fix}")
    if labels[-1].isdigit():
        raise ValueError(f"{setting} {value!r} ends in a number, which no top-level domain does. {fix}")
    return name


def private_suffix(domain: str) -> str | None:
    """The special-use suffix of `domain` (`test` for `hermes.test`), or None for a public name."""
    return next((s for s in PRIVATE_SUFFIXES if domain == s or domain.endswith("." + s)), None)


def check_email(value: str, setting: str) -> str:
    """An address as ACME account contacts take it: `local@domain`, the local part plain
    (letters, digits, `. _ % + -`), the domain a DNS name."""
    local, at, domain = value.rpartition("@") if isinstance(value, str) else ("", "", "")
    fix = "Fix: an address such as ops@example.org (plain letters, digits and . _ % + - before the @)"
    if not at or not _EMAIL_LOCAL.fullmatch(local):
        raise ValueError(f"{setting} {value!r} is not an e-mail address. {fix}")
    try:
        check_domain_name(domain, setting)
    except ValueError:
        raise ValueError(f"{setting} {value!r} does not end in a domain name. {fix}") from None
    return f"{local}@{domain.lower()}"


class TlsProxySettings(Settings):
    """A public HTTPS endpoint for one gateway's API (or its dashboard), for a hub on another
    machine: Debian's `caddy` as a reverse proxy on the host, with certificates from an ACME CA
    (Let's Encrypt by default: issued and renewed by Caddy itself) or from Caddy's own internal
    CA (tests, private networks: clients trust its root). The gateway stays published on
    127.0.0.1 and the proxy reaches it there; the dashboard keeps its basic auth. With the
    firewall on, the rules open `port` (and 80 for ACME's HTTP challenge) and nothing else.
    Off: the Caddyfile hermes-infra wrote is removed and caddy is stopped and disabled (the
    package stays)."""

    enabled: bool = False
    """Install caddy and serve `domain` (off: what hermes-infra set up for it is removed)."""

    domain: str | None = None
    """The name clients connect to (`hermes.example.org`): a DNS name alone, no scheme, port or
    path, stored lowercased. With `ca: acme` its A/AAAA records must point at this host, and the
    CA must reach ports 80 and `port` from the internet."""

    ca: Literal["acme", "internal"] = "acme"
    """Who signs the certificate: `acme` (Caddy's default ACME issuers, Let's Encrypt first; a
    public name) or `internal` (Caddy's own CA, whose root is
    `/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt` on the host: give it to
    the clients; for tests and names such as `hermes.test`)."""

    acme_email: str | None = None
    """The ACME account's contact (expiry notices), `ca: acme` only. Unset: an account without
    one."""

    gateway: Annotated[str | None, NoControlChars] = None
    """The profile whose port is proxied. Unset: the first gateway."""

    upstream: Literal["api", "dashboard"] = "api"
    """What the domain serves: the gateway's `api` (its key still required on every call but
    `/health`), or its `dashboard` (which must be enabled with basic auth)."""

    port: int = Field(443, ge=1, le=65535)
    """The HTTPS port the proxy listens on, on every interface."""

    allow_from: list[str] = []
    """Source networks the firewall lets reach `port` (`203.0.113.0/24`, an address): e.g. the
    hub alone. Empty: from anywhere. Port 80 (ACME's HTTP challenge) stays open to all: the
    CA's validation comes from addresses it does not publish."""

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return None if value is None else check_domain_name(value, "tls_proxy.domain")

    @field_validator("acme_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else check_email(value, "tls_proxy.acme_email")

    @field_validator("allow_from")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        return parse_source_networks(value, "tls_proxy.allow_from")

    @model_validator(mode="after")
    def _meaning(self) -> TlsProxySettings:
        if not self.enabled:
            return self
        if self.domain is None:
            raise ValueError("tls_proxy.enabled is true but tls_proxy.domain is unset: the proxy needs the name "
                             "clients connect to. Fix: set tls_proxy.domain, e.g. hermes.example.org")
        suffix = private_suffix(self.domain)
        if self.ca == "acme" and suffix is not None:
            raise ValueError(f"tls_proxy.domain {self.domain!r} is under .{suffix}, for which no public CA issues "
                             "certificates (tls_proxy.ca is acme). Fix: set tls_proxy.ca: internal (and give the "
                             "clients Caddy's root), or use a public name pointing at this host")
        if self.ca == "acme" and self.port == 80:
            raise ValueError("tls_proxy.port is 80, which ACME's HTTP challenge needs (tls_proxy.ca is acme). "
                             "Fix: leave tls_proxy.port at 443")
        return self

    @property
    def acme(self) -> bool:
        return self.enabled and self.ca == "acme"


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

    alerts: AlertSettings | None = None
    """The on-host watchdog and where its messages go; off by default (see AlertSettings)."""

    metrics: MetricsSettings | None = None
    """A Prometheus node exporter fed by the watchdog; off by default (see MetricsSettings)."""

    firewall: FirewallSettings = FirewallSettings()
    """The host firewall (nftables, default-deny inbound, published ports filtered before
    Docker's rules); off by default (see FirewallSettings)."""

    ssh_hardening: SshHardeningSettings = SshHardeningSettings()
    """sshd: key-only logins, no root password login (one drop-in, confirmed by a second SSH
    connection); off by default (see SshHardeningSettings)."""

    unattended_upgrades: UnattendedUpgradesSettings = UnattendedUpgradesSettings()
    """Automatic security updates (Docker's packages excluded); off by default (see
    UnattendedUpgradesSettings)."""

    tls_proxy: TlsProxySettings = TlsProxySettings()
    """A public HTTPS endpoint (caddy) for one gateway's API or dashboard, the gateway still on
    127.0.0.1; off by default (see TlsProxySettings)."""

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

    path_overrides: list[PathOverrideSettings] = []
    """Host paths accepted although the path policy refuses them: `[{path: /var/run/docker.sock,
    reason: "the hub manages its own containers"}]`. Each entry lifts the allowed-roots and
    sensitive-place rules (and the overlap rule) for settings holding exactly that path; the
    reason is required. The host root, `..`, unsafe characters and two data dirs overlapping
    are never accepted; an entry no setting uses is refused."""

    extra_data_names: list[str] = []
    """Top-level pyinfra data names that are not hermes-infra settings but belong in your
    inventory (data for your own operations or connectors): listed here, they are accepted
    instead of refused as unknown settings."""

    @model_validator(mode="wrap")
    @classmethod
    def _with_overrides(cls, data: Any, handler: Any) -> HostSettings:
        """Path settings deep in the tree see the top-level overrides while they are checked."""
        token = _PATH_OVERRIDES.set(_raw_overrides(data))
        try:
            return handler(data)
        finally:
            _PATH_OVERRIDES.reset(token)

    @field_validator("project_dir")
    @classmethod
    def _project_dir(cls, value: str) -> str:
        return check_host_path(value, "project", setting="project_dir")

    @field_validator("backup_dir")
    @classmethod
    def _backup_dir(cls, value: str) -> str:
        return check_host_path(value, "backup", setting="backup_dir")

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
        self._check_paths(problems)
        self._check_ports(problems, ssh_port)
        self._check_tokens(problems)
        self._check_companions(problems)
        self._check_metrics(problems)
        self._check_tls_proxy(problems)
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))
        return self

    def _check_tls_proxy(self, problems: list[str]) -> None:
        """The proxied profile exists, and a proxied dashboard is enabled and keeps its basic auth."""
        proxy = self.tls_proxy
        if not proxy.enabled:
            return
        try:
            gateway = proxied_gateway(self)
        except ValueError as error:
            problems.append(str(error))
            return
        dashboard = gateway.dashboard
        if proxy.upstream == "dashboard" and not dashboard.enabled:
            problems.append(f"tls_proxy.upstream is dashboard, but gateways[{gateway.name}].dashboard.enabled is "
                            "false: the proxy would answer 502. Fix: enable the dashboard (with basic auth), or "
                            "set tls_proxy.upstream: api")
        elif proxy.upstream == "dashboard" and not (dashboard.basic_auth_username and dashboard.basic_auth_password_hash):
            problems.append(f"tls_proxy.upstream is dashboard, but gateways[{gateway.name}].dashboard has no basic "
                            "auth: the proxy would put an open dashboard on the internet (exposed dashboards were "
                            "used to plant SSH-key backdoors). Fix: set gateways[].dashboard.basic_auth_username "
                            "and basic_auth_password_hash")

    def _check_metrics(self, problems: list[str]) -> None:
        """The exporter's address against the bridge; receivers' plain-http URLs may name it too."""
        bridge = self.docker.bridge_gateway_ip
        if self.metrics is not None and not self.metrics.allow_public:
            problem = public_address_problem(classify_address(self.metrics.listen_address, "metrics.listen_address", bridge),
                                             "metrics.listen_address", "metrics.allow_public")
            if problem:
                problems.append(problem)
        for receiver in self.alerts.receivers if self.alerts else ():
            urls = {"api_url": receiver.api_url} if receiver.kind == "telegram" else {
                "secret_url": receiver.secret_url.get_secret_value() if receiver.secret_url else ""}
            for name, value in urls.items():
                try:
                    check_receiver_url(value, f"alerts.receivers[{receiver.label}].{name}", bridge)
                except ValueError as error:
                    problems.append(str(error))

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

    def path_settings(self) -> list[tuple[str, str, str]]:
        """(setting, normalized path, kind) of every host path the settings name."""
        paths = [(self._data_dir_setting(g), g.host_data_dir, "data") for g in self.gateways]
        paths += [("project_dir", self.project_dir, "project"), ("backup_dir", self.backup_dir, "backup"),
                  ("image.remote_cache_dir", self.image.remote_cache_dir, "cache"), ("swap.path", self.swap.path, "swap")]
        for companion in self.companions:
            for index, spec in enumerate(companion.volumes):
                volume = parse_volume_spec(spec, "volume")
                if volume.host_path:
                    paths.append((f"companions[{companion.name}].volumes[{index}]", volume.source, "volume"))
        for key in ("data-root", "exec-root"):
            value = self.docker.daemon_options.get(key)
            if isinstance(value, str):
                paths.append((f"docker.daemon_options.{key}", normalize_path(value), "docker"))
        return paths

    def _check_paths(self, problems: list[str]) -> None:
        """Companion volume sources against the policy; no two path settings of different
        kinds overlap (data dirs among themselves: _check_dirs); every override is used."""
        overrides = {entry.path for entry in self.path_overrides}
        paths = self.path_settings()
        for setting, path, kind in paths:
            if kind == "volume":
                try:
                    path_policy(path, setting, "volume", frozenset(overrides))
                except ValueError as error:
                    problems.append(str(error))
        owned = {"project", "backup", "cache"}
        for index, (setting, path, kind) in enumerate(paths):
            for other_setting, other, other_kind in paths[index + 1:]:
                if kind == other_kind and kind in ("data", "volume"):
                    continue
                if {kind, other_kind} <= owned | {"data"} and "data" in (kind, other_kind):
                    continue  # _check_dirs words these
                if not (is_within(path, other) or is_within(other, path)):
                    continue
                # An override never lets the agent's data dir hold the swap file or Docker's state.
                hard = "data" in (kind, other_kind) and {"swap", "docker"} & {kind, other_kind}
                if (path in overrides or other in overrides) and not hard:
                    continue
                inner, outer = ((setting, path), (other_setting, other)) if is_within(path, other) and path != other \
                    else ((other_setting, other), (setting, path))
                relation = "is" if path == other else "is inside"
                problems.append(
                    f"{inner[0]} {inner[1]!r} {relation} {outer[0]} {outer[1]!r}: whoever writes one could change or "
                    f"remove what the other holds (a container's files are its agent's to rewrite). Fix: keep "
                    f"them apart, each in a directory of its own"
                )
        used = {path for _, path, _ in paths}
        for entry in self.path_overrides:
            if entry.path not in used:
                problems.append(f"path_overrides has {entry.path!r}, which no path setting holds (an override must "
                                "name the exact path, normalized). Fix: correct the path or remove the entry")

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
            bridge = self.docker.bridge_gateway_ip
            for address in publish_addresses(self, gateway):
                problem = public_address_problem(
                    classify_address(address, "api.publish_addresses", bridge),
                    f"gateways[{gateway.name}].api.publish_addresses contains", f"gateways[{gateway.name}].api.allow_public")
                if problem and not gateway.api.allow_public:
                    problems.append(problem)
            if gateway.dashboard.enabled or gateway.dashboard.publish_address != "127.0.0.1":
                problem = public_address_problem(
                    classify_address(gateway.dashboard.publish_address, "dashboard.publish_address", bridge),
                    f"gateways[{gateway.name}].dashboard.publish_address", f"gateways[{gateway.name}].dashboard.allow_public")
                if problem and not gateway.dashboard.allow_public:
                    problems.append(problem)
        if self.tls_proxy.enabled:
            # caddy listens on every interface: no published port may take these.
            claim("tcp", self.tls_proxy.port, "tls_proxy.port")
            if self.tls_proxy.acme:
                claim("tcp", 80, "tls_proxy (port 80, ACME's HTTP challenge)")
        for companion in self.companions:
            for index, spec in enumerate(companion.ports):
                parsed = parse_port_spec(spec)
                problem = public_address_problem(
                    classify_address(parsed.address, "port", self.docker.bridge_gateway_ip),
                    f"companions[{companion.name}].ports[{index}] address", f"companions[{companion.name}].allow_public")
                if problem and not companion.allow_public:
                    problems.append(problem)
                for port in parsed.host_ports:
                    if not claim(parsed.protocol, port, f"companions[{companion.name}].ports[{index}] (host port of {spec!r})"):
                        break

    def _check_tokens(self, problems: list[str]) -> None:
        seen: dict[str, str] = {}
        for gateway in self.gateways:
            for key, value in bot_tokens(gateway).items():
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
                target = gateway_for(self, companion)
            except ValueError as error:
                problems.append(str(error))
                continue
            if companion.topology == "host-gateway":
                reachable = [a for a in publish_addresses(self, target)
                             if classify_address(a, "api.publish_addresses").reach != "loopback"]
                if not reachable:
                    problems.append(
                        f"companions[{companion.name}] reaches gateway {target.name!r} through host.docker.internal, "
                        f"but gateways[{target.name}].api.publish_addresses is {target.api.publish_addresses}: a port "
                        "bound only to 127.0.0.1 cannot be reached from containers. Fix: add the docker bridge "
                        f"address {self.docker.bridge_gateway_ip!r}, or leave publish_addresses unset"
                    )


# ------------------------------------------------------------------ derived from the settings
# Here, not in a module of their own: the validators above check what they derive (published
# addresses, bot tokens shared by two gateways), and the schema imports nothing that derives from it.

# Env keys whose values identify a messaging bot: two gateways sharing one fight over it.
BOT_TOKEN_KEY = re.compile(r"^[A-Z0-9_]*(TOKEN|WEBHOOK_SECRET|APP_SECRET)$|^[A-Z0-9_]+_ACCOUNT_ID$")


def managed_env(gateway: GatewaySettings) -> dict[str, str]:
    """Every `.env` key this profile manages, except the API key (decided on the host)."""
    values = {
        "API_SERVER_ENABLED": "true",
        "API_SERVER_HOST": "0.0.0.0",
        "API_SERVER_PORT": "8642",
        "API_SERVER_MODEL_NAME": gateway.api.model_name,
        "HERMES_SKIP_CONFIG_MIGRATION": "1",
    }
    if gateway.api.cors_origins:
        values["API_SERVER_CORS_ORIGINS"] = ",".join(gateway.api.cors_origins)
    if gateway.weixin is not None:
        values.update(weixin_env(gateway.weixin))
    for platform, users in gateway.allowed_users.items():
        values[f"{platform}_ALLOWED_USERS"] = ",".join(users)
    if gateway.dashboard.enabled:
        values.update({"HERMES_DASHBOARD": "1", "HERMES_DASHBOARD_HOST": "0.0.0.0",
                       "HERMES_DASHBOARD_PORT": "9119"})
        if gateway.dashboard.basic_auth_username:
            values["HERMES_DASHBOARD_BASIC_AUTH_USERNAME"] = gateway.dashboard.basic_auth_username
        if gateway.dashboard.basic_auth_password_hash is not None:
            values["HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH"] = (
                gateway.dashboard.basic_auth_password_hash.get_secret_value())
    values.update(gateway.config.model.env_values())
    values.update({key: secret.get_secret_value() for key, secret in gateway.env.items()})
    return values


def bot_tokens(gateway: GatewaySettings) -> dict[str, str]:
    """Env keys and values that identify a messaging bot (two gateways must never share one)."""
    return {key: value for key, value in managed_env(gateway).items() if BOT_TOKEN_KEY.match(key)}


def weixin_env(weixin: WeixinSettings) -> dict[str, str]:
    """The WEIXIN_* keys of one gateway's `.env`."""
    values = {"WEIXIN_DM_POLICY": weixin.dm_policy, "WEIXIN_GROUP_POLICY": weixin.group_policy}
    if weixin.token is not None:
        values["WEIXIN_TOKEN"] = weixin.token.get_secret_value()
    if weixin.account_id:
        values["WEIXIN_ACCOUNT_ID"] = weixin.account_id
    if weixin.allowed_users:
        values["WEIXIN_ALLOWED_USERS"] = ",".join(weixin.allowed_users)
    if weixin.allow_all_users:
        values["WEIXIN_ALLOW_ALL_USERS"] = "true"
    if weixin.home_channel:
        values["WEIXIN_HOME_CHANNEL"] = weixin.home_channel
    return values


def gateway_for(settings: HostSettings, companion: CompanionSettings) -> GatewaySettings:
    if companion.gateway is None:
        return settings.gateways[0]
    for gateway in settings.gateways:
        if gateway.name == companion.gateway:
            return gateway
    raise ValueError(
        f"companions[{companion.name}].gateway is {companion.gateway!r}, which is not a profile. "
        f"Fix: one of {', '.join(g.name for g in settings.gateways)}"
    )


def publish_addresses(settings: HostSettings, gateway: GatewaySettings) -> list[str]:
    """Host addresses the gateway's API port is bound to (explicit, or derived)."""
    if gateway.api.publish_addresses is not None:
        return list(gateway.api.publish_addresses)
    addresses = ["127.0.0.1"]
    if any(c.topology == "host-gateway" and _targets(settings, c, gateway) for c in settings.companions):
        addresses.append(settings.docker.bridge_gateway_ip)
    return addresses


def _targets(settings: HostSettings, companion: CompanionSettings, gateway: GatewaySettings) -> bool:
    return (companion.gateway or settings.gateways[0].name) == gateway.name


def proxied_gateway(settings: HostSettings) -> GatewaySettings:
    """The gateway `tls_proxy` fronts: `tls_proxy.gateway`, or the first one."""
    name = settings.tls_proxy.gateway
    if name is None:
        return settings.gateways[0]
    for gateway in settings.gateways:
        if gateway.name == name:
            return gateway
    raise ValueError(f"tls_proxy.gateway is {name!r}, which is not a profile. "
                     f"Fix: one of {', '.join(g.name for g in settings.gateways)}")


def proxied_addresses(settings: HostSettings) -> tuple[str, int, list[str]]:
    """(address the proxy connects to, host port, every address that port is published on) of
    what `tls_proxy` fronts: loopback where the port is bound there (`0.0.0.0` and `::` include
    it), else the first address it is published on."""
    gateway = proxied_gateway(settings)
    if settings.tls_proxy.upstream == "dashboard":
        addresses, port = [gateway.dashboard.publish_address], gateway.dashboard.port
    else:
        addresses, port = publish_addresses(settings, gateway), gateway.api.port
    local = {"127.0.0.1": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::1": "::1", "::": "::1"}
    target = next((local[a] for a in addresses if a in local), addresses[0])
    return target, port, addresses
