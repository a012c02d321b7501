"""SSH hardening (setting ssh_hardening): the sshd drop-in's text and what the host must look
like before it may be applied, pure.

sshd keeps the FIRST value it reads for almost every keyword. Debian 12/13 and Ubuntu
22.04/24.04 all start `/etc/ssh/sshd_config` with `Include /etc/ssh/sshd_config.d/*.conf`, and
the glob is read in name order: a drop-in named `10-...` is read before Ubuntu's cloud images'
`50-cloud-init.conf` (which sets `PasswordAuthentication yes` where the cloud asked for
password logins) and `60-cloudimg-settings.conf`, and before everything the main file sets
below its Include. What could still win over ours (a keyword set in the main file above the
Include, a drop-in sorting before ours, no Include at all) is refused before anything changes;
what ours wins over is reported. Only keywords that cannot lock out a key login are set.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hermes_infra.host.hostfacts import SSHD_DROPIN_DIR, HostState
from hermes_infra.settings.schema import HostSettings

DROPIN_NAME = "05-hermes-infra-hardening.conf"
DROPIN_PATH = f"{SSHD_DROPIN_DIR}/{DROPIN_NAME}"
MARKER = "# Written by hermes-infra (setting ssh_hardening)."
REVERT_UNIT = "hermes-infra-sshd-revert"
REVERT_PATH = "/var/lib/hermes-infra/sshd.revert.conf"
"""The drop-in as it was before an unconfirmed change (empty: there was none)."""
SERVICE = "ssh.service"
"""Debian's and Ubuntu's unit (`sshd.service` is its alias on Debian; Ubuntu 24.04 starts it
from ssh.socket)."""
SSHD = "/usr/sbin/sshd"
INCLUDE = f"{SSHD_DROPIN_DIR}/*.conf"
# sshd -T prints some values in another spelling than the one written.
SAME = {"prohibit-password": "without-password"}


class SshdError(ValueError):
    """A host or a deploy for which the hardening could lock the operator out."""


@dataclass(frozen=True)
class SshdPlan:
    enabled: bool
    dropin: Any = None
    """RootFilePlan of DROPIN_PATH (None when off)."""
    directives: tuple[tuple[str, str], ...] = ()
    effective_ok: bool = False
    """`sshd -T` already shows every planned value."""
    present: bool = False
    """A drop-in hermes-infra wrote is on the host (removed when off)."""
    foreign: bool = False
    """Something else sits at DROPIN_PATH (never removed)."""
    confirm_seconds: int = 60
    warnings: tuple[str, ...] = ()

    @property
    def needs_apply(self) -> bool:
        return self.enabled and (self.dropin.content_changed or not self.effective_ok)


def directives(settings: HostSettings) -> tuple[tuple[str, str], ...]:
    """Keyword and value, in the order written. None of them can refuse a key login: the
    operator's key (checked to exist) and the deploy's own (checked by a second connection)
    keep working; AllowTcpForwarding stays, tunnels to 127.0.0.1 are how the API is reached."""
    wanted = settings.ssh_hardening
    return (("PasswordAuthentication", "no"), ("KbdInteractiveAuthentication", "no"),
            ("PermitEmptyPasswords", "no"), ("PermitRootLogin", "prohibit-password"),
            ("PubkeyAuthentication", "yes"), ("HostbasedAuthentication", "no"), ("IgnoreRhosts", "yes"),
            ("MaxAuthTries", str(wanted.max_auth_tries)), ("LoginGraceTime", str(wanted.login_grace_seconds)),
            ("X11Forwarding", "no"), ("LogLevel", "VERBOSE"))


def dropin_text(settings: HostSettings) -> str:
    lines = [MARKER,
             f"# Read before the other files in {SSHD_DROPIN_DIR} and before the rest of sshd_config:",
             "# sshd keeps the first value it reads. Change the settings, not this file.",
             *(f"{keyword} {value}" for keyword, value in directives(settings))]
    return "\n".join(lines) + "\n"


def normal(value: str) -> str:
    value = value.strip().lower()
    return SAME.get(value, value)


def mismatches(wanted: tuple[tuple[str, str], ...], effective: dict[str, str]) -> list[str]:
    """The planned keywords `sshd -T` shows otherwise, as `keyword is X (want Y)`."""
    found = []
    for keyword, value in wanted:
        have = effective.get(keyword.lower())
        if have is None or normal(have) != normal(value):
            found.append(f"{keyword} is {have or 'not shown'} (want {value})")
    return found


def _conflicts(sets: dict[str, str], wanted: tuple[tuple[str, str], ...]) -> list[str]:
    return [f"{keyword} {sets[keyword.lower()]}" for keyword, value in wanted
            if keyword.lower() in sets and normal(sets[keyword.lower()]) != normal(value)]


def check_host(settings: HostSettings, facts: dict) -> list[str]:
    """Refuse what would leave a password login open or lock a key login out; the warnings
    for what the drop-in wins over."""
    wanted = directives(settings)
    if facts.get("effective_error"):
        raise SshdError("ssh_hardening.enabled is true, but `sshd -T` failed on the host: its sshd config is invalid "
                        "already (or the deploy is not root). Nothing was changed. Fix: run `sudo sshd -t` on the "
                        "host and repair what it names, then deploy again")
    if INCLUDE not in facts.get("includes", ()):
        raise SshdError(f"ssh_hardening.enabled is true, but /etc/ssh/sshd_config has no `Include {INCLUDE}` before "
                        "its first Match: sshd would never read the drop-in. Nothing was changed. Fix: add that line "
                        "at the top of /etc/ssh/sshd_config (Debian and Ubuntu ship it there)")
    early = _conflicts(facts.get("early", {}), wanted)
    if early:
        raise SshdError(f"ssh_hardening.enabled is true, but /etc/ssh/sshd_config sets {', '.join(early)} above its "
                        "Include line, and sshd keeps the first value it reads: the drop-in could not change it. "
                        "Nothing was changed. Fix: remove those lines from above the Include (or move them below it)")
    warnings = []
    for name, sets in facts.get("dropins", {}).items():
        conflicts = _conflicts(sets, wanted)
        if not conflicts or name == DROPIN_NAME:
            continue
        if name < DROPIN_NAME:
            raise SshdError(f"ssh_hardening.enabled is true, but {SSHD_DROPIN_DIR}/{name} sets {', '.join(conflicts)} "
                            f"and is read before {DROPIN_NAME}: sshd keeps the first value. Nothing was changed. "
                            "Fix: remove those lines from it, or rename it to sort after " + DROPIN_NAME)
        warnings.append(f"{SSHD_DROPIN_DIR}/{name} sets {', '.join(conflicts)}"
                        + (" (cloud-init wrote it from the cloud's password-login setting)" if "cloud-init" in name
                           else "")
                        + f"; {DROPIN_NAME} is read first, so sshd uses hermes-infra's values. The file is left as it is")
    keys, command = facts.get("authorized_keys"), facts.get("effective", {}).get("authorizedkeyscommand", "none")
    if not keys and normal(command) == "none":
        raise SshdError("ssh_hardening.enabled is true, but the deploy user has no key in its authorized_keys "
                        f"({'none found' if keys == 0 else 'not readable'}): with passwords off, keys are the only "
                        "way in. Nothing was changed. Fix: `ssh-copy-id` your key to the host, log in with it once, "
                        "then deploy again")
    return warnings


def check_login(method: str) -> None:
    """`method`: how the deploy's own connection logged in ('publickey', 'password', 'unknown')."""
    if method == "password":
        raise SshdError("ssh_hardening.enabled is true, but this deploy logs in with a password (ssh_password in the "
                        "inventory): the hardening turns password logins off, and the next deploy could not connect. "
                        "Nothing was changed. Fix: install a key (`ssh-copy-id`), set ssh_key (or use your agent) "
                        "instead of ssh_password, then deploy again")
    if method == "not-ssh":
        raise SshdError("ssh_hardening.enabled is true, but this deploy does not reach the host over SSH, so no second "
                        "SSH connection can prove the new config lets people in. Nothing was changed. Fix: deploy over "
                        "SSH (the @ssh connector), or leave ssh_hardening off for this host")


def ours(current: dict | None) -> bool:
    return current is not None and current["text"].text.startswith(MARKER)


def plan_sshd(settings: HostSettings, state: HostState, root_file: Callable[..., Any]) -> SshdPlan:
    """`root_file(path, content)` builds a RootFilePlan against the host's facts."""
    current = state.root_files.get(DROPIN_PATH)
    common = dict(present=ours(current), foreign=current is not None and not ours(current))
    if not settings.ssh_hardening.enabled:
        return SshdPlan(enabled=False, **common)
    warnings = check_host(settings, state.sshd)
    wanted = directives(settings)
    return SshdPlan(enabled=True, dropin=root_file(DROPIN_PATH, dropin_text(settings)), directives=wanted,
                    effective_ok=not mismatches(wanted, state.sshd.get("effective", {})),
                    confirm_seconds=settings.ssh_hardening.confirm_seconds, warnings=tuple(warnings), **common)
