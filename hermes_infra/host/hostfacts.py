"""What a host is now, read in one SSH round trip (plus pyinfra's own OS, memory, CPU and
image facts).

pyinfra 3 does not cache facts: every `host.get_fact` is a command on the host. The deploy
therefore asks once, up front, for everything the plan needs; operations never read the host
again. Files under data dirs are read with `safeio` (as their owner, never followed); files
that only root can write (compose files, companion env files, daemon.json) are read as root.

Every command here succeeds on a bare host (no Docker yet, files missing): a fact describes
absence, it never fails on it, so a dry run on a fresh VPS works.
"""
from __future__ import annotations

import base64
import io
import ipaddress
import json
import re
import shlex
import tarfile
from urllib.parse import quote
from dataclasses import dataclass, field

from pyinfra.api import FactBase
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.facts.server import OsRelease

from hermes_infra.host import safeio

SECTION = "@@hermes-infra-section"


@dataclass(frozen=True)
class DataDirRequest:
    label: str
    directory: str
    uid: int
    gid: int
    extra_files: tuple[str, ...] = ()
    """Data-dir files read besides `.env` and `config.yaml` (the agent's managed files, cron jobs)."""


@dataclass(frozen=True)
class ProbeRequest:
    label: str
    url: str
    data_dir: DataDirRequest
    container: str
    """The gateway's container: the authed request goes to its own address, only while it runs."""


@dataclass(frozen=True)
class StateRequest:
    """Everything the plan wants to know about one host; built from settings alone."""

    data_dirs: tuple[DataDirRequest, ...] = ()
    root_files: tuple[str, ...] = ()
    projects: tuple[tuple[str, str], ...] = ()
    """(project name, directory) of each compose project."""
    swap_path: str = "/swapfile"
    probes: tuple[ProbeRequest, ...] = ()
    packages: tuple[str, ...] = ()
    image_ref: str | None = None
    apt_repositories: tuple[str, ...] = ()
    """Repository URLs (without the scheme) whose apt source files are read besides hermes-infra's own."""
    sshd: bool = False
    """Read sshd's settings, drop-ins and the deploy user's keys (setting ssh_hardening on)."""
    apt_timers: bool = False
    """Read the state of apt's daily timers (setting unattended_upgrades on)."""


class RootFile:
    """A root-owned file's text that must not show up in `--debug-facts` or a traceback."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"<file text, {len(self.text)} characters, not shown>"

    __str__ = __repr__


def key_header_script(data_dir: DataDirRequest) -> str:
    """`Authorization: Bearer <key>` from the data dir's `.env`, for `curl -H @-`.

    Read as the data dir's owner, only when it is a regular, singly linked file, and at most
    `safeio.MAX_ENV_BYTES` of it (`safeio.owner_read`): a planted link, FIFO or device node is
    never opened. Through a pipe the key never becomes a process argument. The deploy writes
    the key line in canonical form (`API_SERVER_KEY=<key>`, unquoted), so this extraction and
    envfile.parse agree.
    """
    read = (f"( {safeio.enter(data_dir.directory)} && "
            f"{{ {safeio.owner_read('.env', data_dir.uid, data_dir.gid, safeio.MAX_ENV_BYTES)}; }} )")
    return f"{read} | sed -n 's/^API_SERVER_KEY=/Authorization: Bearer /p' | tail -n 1"


CURL_OPTIONS = "-s -w '%{http_code}\\n' --max-time 5"

# Where Hermes listens inside its container (compose publishes api.port to it).
API_CONTAINER_PORT = 8642
# The running container's addresses on its networks; nothing when it does not run. Read from
# the engine (never from the agent), in Go's template, so nothing the agent wrote is parsed.
RUNNING_ADDRESSES = "{{if .State.Running}}{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}{{end}}"


def container_api_script(container: str, port: int | None = None) -> str:
    """Shell printing `http://<address>:<port>` of `container`'s API on its own network address,
    or nothing when the container does not run (or there is no Docker).

    The API key is only ever sent there (F4): the published port on 127.0.0.1 is whoever binds it
    while the gateway is down (a crash loop, a restart, a backup's stop window), any local user
    included; the container's bridge address lives in its own network namespace, which no host
    user can bind. Only an IPv4 address of digits and dots is believed.
    """
    return (f"for hi_ip in $(docker inspect --type container --format {shlex.quote(RUNNING_ADDRESSES)} -- "
            f"{shlex.quote(container)} 2>/dev/null); do case \"$hi_ip\" in *[!0-9.]*|'') ;; "
            f"*) echo \"http://$hi_ip:{int(port or API_CONTAINER_PORT)}\"; break;; esac; done")


def _section(name: str) -> str:
    return f"echo '{SECTION} {name}'"


# pyinfra's own facts, run inside the one batched command and parsed by their own classes.
PYINFRA_FACTS = {"os_release": OsRelease, "memory": Memory, "cpus": Cpus}


# Sections without secrets, run side by side (each docker CLI call starts a Go binary; under
# emulation every process start counts) while the reads that print secrets (.env, companion env
# files) run in the foreground and never touch a temp file. The probes hand the API key to curl
# through a pipe and print only status codes; a data dir's metadata is types, owners and modes.
BACKGROUND = ("whoami", "pyinfra", "services", "aptlists", "image", "packages", "aptlock", "docker", "probe",
              "dirmeta", "swap", "snap", "dockerpath", "aptsources", "firewall", "sshd", "apttimers")
OWN_APT_SOURCE = "/etc/apt/sources.list.d/docker.sources"
"""The Docker source hermes-infra writes (plan.hostplan.DOCKER_SOURCES): read as a root file, not here."""


def state_sections(request: StateRequest) -> list[tuple[str, list[str]]]:
    # The SSH login's user and home: sshd sets LOGNAME and HOME; under sudo they are root's and
    # SUDO_USER names the login. Read from the environment: no program started for them.
    sections = [("whoami", ['if [ -n "${SUDO_USER:-}" ]; then echo "$SUDO_USER"; getent passwd "$SUDO_USER" '
                            '| { IFS=: read -r _ _ _ _ _ home _; echo "$home"; }; '
                            'else echo "${LOGNAME:-$(id -un)}"; echo "$HOME"; fi', "uname -m"])]
    for name, fact in PYINFRA_FACTS.items():
        sections.append((f"pyinfra {name}", [f"{fact().command()} 2>/dev/null"]))
    sections += [("services", [f"systemctl show -p Id,UnitFileState,ActiveState {' '.join(SERVICES)} 2>/dev/null || true"]),
                 ("aptlists", ["date +%s; stat -c %Y /var/lib/apt/periodic/update-success-stamp "
                               "/var/lib/apt/lists/partial 2>/dev/null"])]
    if request.image_ref:
        sections.append(("image", [_engine_get(f"/images/{request.image_ref}/json",
                                               f"docker image inspect {shlex.quote(request.image_ref)}")]))
    for item in request.data_dirs:
        quoted = shlex.quote(item.directory)
        parent = shlex.quote(item.directory.rsplit("/", 1)[0] or "/")
        sections.append((f"dirmeta {item.label}", [
            f"LC_ALL=C stat -c '%F|%u|%g|%a' -- {quoted} 2>/dev/null || echo 'missing|0|0|0'",
            f"LC_ALL=C stat -c '%F|%u|%g|%a' -- {parent} 2>/dev/null || echo 'missing|0|0|0'",
            f"[ -d {quoted} ] && [ ! -L {quoted} ] && [ -n \"$(find {quoted} -xdev \\( ! -uid {item.uid} -o ! -gid {item.gid} \\) "
            "-print -quit 2>/dev/null)\" ] && echo foreign || echo clean",
            # Empty or not: an existing dir that is neither empty nor a Hermes data dir is not taken over.
            f"[ -d {quoted} ] && [ ! -L {quoted} ] && [ -z \"$(find {quoted} -mindepth 1 -maxdepth 1 -print -quit "
            "2>/dev/null)\" ] && echo empty || echo notempty"]))
        sections.append((f"datadir {item.label}", [
            safeio.read_script(item.directory, [".env", "config.yaml", *item.extra_files], item.uid, item.gid,
                              item.label)]))
    if request.root_files:
        # One tar for every root file (two processes, not two per file; under emulation each
        # process start costs tens of milliseconds). -P keeps the names as asked; tar stores a
        # link as a link and never follows it; a missing file is left out.
        names = " ".join(shlex.quote(path) for path in request.root_files)
        sections.append(("rootfiles", [f"tar -c -P --no-recursion -f - -- {names} 2>/dev/null | base64 -w0; echo"]))
    swap = shlex.quote(request.swap_path)
    sections.append(("swap", [
        f"stat -c %s {swap} 2>/dev/null || echo -1",
        f"awk -v p={shlex.quote(request.swap_path)} 'FILENAME == \"/proc/swaps\" && FNR > 1 && $1 == p {{on = 1}} "
        "FILENAME == \"/etc/fstab\" && $1 == p && $3 == \"swap\" {{listed = 1}} FILENAME ~ /swappiness$/ {{s = $1}} "
        "END {{print (on ? \"active\" : \"inactive\"); print (listed ? \"fstab\" : \"nofstab\"); print s}}' "
        "/proc/swaps /etc/fstab /proc/sys/vm/swappiness",
        # What is at the path before anything replaces or removes it: the lstat (a link is never
        # followed) and, for a regular file only, mkswap's signature at the end of the first page.
        f"LC_ALL=C stat -c '%F|%h' -- {swap} 2>/dev/null || echo 'missing|0'",
        f"case \"$(LC_ALL=C stat -c '%F' -- {swap} 2>/dev/null)\" in 'regular file') "
        f"timeout 5 dd if={swap} iflag=nofollow,nonblock bs={SWAP_SIGNATURE_OFFSET} skip=1 count=1 status=none "
        f"2>/dev/null | head -c {len(SWAP_SIGNATURE)} | tr -cd 'A-Z0-9'; echo;; *) echo;; esac"]))
    if request.packages:
        names = " ".join(shlex.quote(name) for name in request.packages)
        sections.append(("packages", [f"dpkg-query -W -f '${{Package}} ${{db:Status-Status}}\\n' {names} 2>/dev/null || true"]))
    # Who holds one of apt's locks: the lock files' device and inode (one stat), matched in
    # /proc/locks (one awk) on maj:min:inode as aptwait does (an inode number alone also matches a
    # lock an agent holds on another filesystem). Where the device differs (btrfs reports another
    # st_dev), the holder must have the lock file itself open, as aptwait confirms it.
    sections.append(("aptlock", [APT_LOCK_HOLDER]))
    sections.append(("firewall", FIREWALL_READS))
    if request.sshd:
        sections.append(("sshd", SSHD_READS))
    if request.apt_timers:
        # The timers that start apt's daily runs (setting unattended_upgrades; a unit's state a line).
        sections.append(("apttimers", [f"for t in {' '.join(APT_TIMERS)}; do echo \"$t $(systemctl is-enabled $t 2>/dev/null)\"; done"]))
    # A Docker from the snap store (Ubuntu offers it at install time) has its own dockerd and
    # socket: the plan refuses it before apt installs a second engine beside it. `snap list`
    # answers only where snapd is (timeout: a snapd that does not answer must not hang the read).
    sections.append(("snap", ["if command -v snap >/dev/null 2>&1; then timeout 10 snap list docker 2>/dev/null; fi; true"]))
    if request.apt_repositories:
        # Every other apt source file naming one of these repositories (Docker's install guide
        # leaves a docker.list with its own keyring), each line behind "| " so no line of it is
        # taken for a marker: apt refuses two entries of one repository with different Signed-By.
        needles = " ".join(f"-e {shlex.quote(url)}" for url in request.apt_repositories)
        sections.append(("aptsources", [
            "for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do "
            f"[ -f \"$f\" ] && [ \"$f\" != {OWN_APT_SOURCE} ] || continue; "
            f"if grep -q -s -F {needles} -- \"$f\"; then echo \"file $f\"; head -c 65536 -- \"$f\" | sed 's/^/| /'; echo; fi; "
            "done"]))
    sections.append(("dockerpath", ['echo "command $(command -v docker 2>/dev/null)"',
                                    "if [ -e /snap/bin/docker ] || [ -L /snap/bin/docker ]; then echo 'snapbin present'; fi"]))
    sections.append(("docker", ["command -v docker >/dev/null 2>&1 && echo installed || echo missing",
                                _engine_get(f"/containers/json?all=1&filters={quote(COMPOSE_FILTER)}",
                                            "docker ps -a --no-trunc --filter label=com.docker.compose.project "
                                            "--format '{{json .}}'")]))
    for probe in request.probes:
        # One curl for the three requests (each curl start counts under emulation); the key
        # reaches the third through stdin (`-H @-`), never an argument, and only the running
        # container's own address (container_api_script): a stopped gateway gets no key at all.
        published = (f"{CURL_OPTIONS} -o /dev/null {shlex.quote(probe.url + '/health')} "
                     f"-o /dev/null {shlex.quote(probe.url + '/v1/models')}")
        sections.append((f"probe {probe.label}", [
            "if command -v curl >/dev/null 2>&1; then "
            f"hi_api=$({container_api_script(probe.container)}); "
            'if [ -n "$hi_api" ]; then '
            f"{key_header_script(probe.data_dir)} | curl {published} --next {CURL_OPTIONS} -o /dev/null -H @- "
            '"$hi_api/v1/models" || true; '
            f"else curl {published} || true; echo 000; fi; "
            "else echo 000; echo 000; echo 000; fi"]))
    return sections


# mkswap writes "SWAPSPACE2" in the last 10 bytes of the first page (4 KiB on amd64 and Debian's
# arm64 kernels): offset 4086. Read as one 4086-byte block skipped, then 10 bytes.
SWAP_SIGNATURE = "SWAPSPACE2"
SWAP_SIGNATURE_OFFSET = 4096 - len(SWAP_SIGNATURE)
SERVICES = ("docker.service", "hermes-infra-backup.timer", "hermes-infra-alerts.timer", "prometheus-node-exporter.service",
            "caddy.service")
APT_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock",
             "/var/cache/apt/archives/lock")
# st_dev (decimal) to /proc/locks' "maj:min" (hex), in awk arithmetic (mawk has no bit operators):
# major = (dev >> 8) & 0xfff, minor = (dev & 0xff) | ((dev >> 12) & 0xfff00).
APT_LOCK_HOLDER = (
    f"stat -c '%i %d %n' {' '.join(APT_LOCKS)} 2>/dev/null | awk 'NR == FNR {{"
    "id = sprintf(\"%02x:%02x:%s\", int($2 / 256) % 4096, $2 % 256 + (int($2 / 1048576) % 4096) * 256, $1); "
    "exact[id] = 1; path[$1] = $3; next} "
    "$2 == \"POSIX\" && $5 ~ /^[0-9]+$/ {if ($6 in exact) {print $5; exit} "
    "n = split($6, part, \":\"); if (part[n] in path) print $5, path[part[n]]}' - /proc/locks "
    "| while read -r pid file; do if [ -z \"$file\" ]; then echo \"$pid $(cat /proc/$pid/comm 2>/dev/null)\"; break; fi; "
    "for fd in /proc/$pid/fd/*; do if [ \"$(readlink \"$fd\" 2>/dev/null)\" = \"$file\" ]; then "
    "echo \"$pid $(cat /proc/$pid/comm 2>/dev/null)\"; break 2; fi; done; done"
)
# --- firewall (setting firewall; plan/firewall.py) ---------------------------------------------
FIREWALL_TABLE = "inet hermes_infra"
FIREWALL_UNIT = "hermes-infra-firewall.service"
UFW_CONF = "/etc/ufw/ufw.conf"
# ufw (Ubuntu's images ship it): ENABLED in its ufw.conf, the last assignment, as ufw-init reads it
# (read line by line here, never sourced), and only when that may say yes, ufw.service's state:
# its stop flushes ufw's rules, so a stopped service with ENABLED=yes filters nothing.
UFW_READ = (
    f"if command -v ufw >/dev/null 2>&1 || [ -x /usr/sbin/ufw ]; then e=; if [ -f {UFW_CONF} ]; then "
    "while read -r l || [ -n \"$l\" ]; do case \"$l\" in ENABLED=*) e=${l#ENABLED=};; esac; l=; done "
    f"< {UFW_CONF}; fi; case \"$e\" in *[Yy][Ee][Ss]*) s=$(systemctl is-active ufw.service 2>/dev/null);; "
    "*) s=-;; esac; echo \"ufw installed ${s:-none} $e\"; else echo 'ufw missing'; fi")
FIREWALL_READS = [
    # Where this deploy's SSH connection comes from and arrives: sshd's SSH_CONNECTION, which sudo
    # drops from the environment, so else from the nearest parent (sudo, the login shell) that has it.
    'c=${SSH_CONNECTION:-}; p=$PPID; n=0; while [ -z "$c" ] && [ "${p:-0}" -gt 1 ] && [ "$n" -lt 8 ]; do '
    "c=$(tr '\\0' '\\n' 2>/dev/null < /proc/$p/environ | sed -n 's/^SSH_CONNECTION=//p' | head -n 1); "
    "p=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$p/status 2>/dev/null); n=$((n + 1)); done; echo \"ssh $c\"",
    "echo \"sshd $(ss -Hltnp 2>/dev/null | awk '/users:\\(\\(\"sshd\"/ {print $4}' | tr '\\n' ' ')\"",
    f"if command -v nft >/dev/null 2>&1; then echo nft; echo \"listing $(nft -s list table {FIREWALL_TABLE} "
    "2>/dev/null | base64 -w0)\"; else echo nonft; fi",
    f"echo \"unit $(systemctl is-enabled {FIREWALL_UNIT} 2>/dev/null)\"",
    UFW_READ,
]
UFW_SERVICE_STATES = ("active", "reloading", "activating", "inactive", "failed", "deactivating", "maintenance",
                      "refreshing")
"""What `systemctl is-active` prints; the first three: ufw's rules are loaded, or being loaded."""
_UFW_ENABLED = re.compile(r"""(["']?)([A-Za-z]{1,8})\1""")


def _ufw(text: str) -> str:
    """`installed <service state or -> <ENABLED's value>` or `missing`, as ufw itself would
    decide: "active" (ENABLED=yes, quoted or not, any case, and the service up), "inactive",
    "missing", or "unknown" for anything that does not parse (never shown, never believed)."""
    if text.strip() == "missing":
        return "missing"
    tag, _, rest = text.strip().partition(" ")
    service, _, value = rest.partition(" ")
    value = re.sub(r"\s+#.*$", "", value.strip())  # a shell comment after the assignment
    match = _UFW_ENABLED.fullmatch(value)
    enabled = match.group(2).lower() if match else ("no" if value == "" else "")
    if tag != "installed" or service not in (*UFW_SERVICE_STATES, "-", "none") or enabled not in ("yes", "no"):
        return "unknown"
    if enabled == "no":
        return "inactive"
    if service not in UFW_SERVICE_STATES:
        return "unknown"  # ENABLED=yes and no state read: cannot tell
    return "active" if service in UFW_SERVICE_STATES[:3] else "inactive"


def _ssh_connection(text: str) -> dict:
    """`client_ip client_port server_ip server_port`, believed only when it parses."""
    parts = text.split()
    if len(parts) != 4 or not (parts[1].isdigit() and parts[3].isdigit()):
        return {}
    try:
        client = str(ipaddress.ip_address(parts[0]))
    except ValueError:
        return {}
    port = int(parts[3])
    return {"client": client, "server_port": port} if 1 <= port <= 65535 else {}


def _firewall(body: list[str]) -> dict:
    found: dict = {"client": None, "server_port": None, "sshd_ports": (), "nft": False, "listing": None,
                   "unit_enabled": False, "ufw": "unknown"}
    for line in body:
        tag, _, rest = line.strip().partition(" ")
        if tag == "ssh":
            found.update(_ssh_connection(rest))
        elif tag == "sshd":
            ports = {int(p) for p in (a.rpartition(":")[2] for a in rest.split()) if p.isdigit() and 0 < int(p) < 65536}
            found["sshd_ports"] = tuple(sorted(ports))
        elif tag == "nft":
            found["nft"] = True
        elif tag == "listing" and rest.strip():
            try:
                found["listing"] = base64.b64decode(rest.strip(), validate=True).decode("utf-8", errors="replace")
            except ValueError:
                found["listing"] = ""
        elif tag == "unit":
            found["unit_enabled"] = rest.strip() == "enabled"
        elif tag == "ufw":
            found["ufw"] = _ufw(rest)
    return found


# --- sshd (setting ssh_hardening; plan/sshd.py) -------------------------------------------------
SSHD_CONFIG = "/etc/ssh/sshd_config"
SSHD_DROPIN_DIR = "/etc/ssh/sshd_config.d"
SSHD_KEYWORDS = ("passwordauthentication", "kbdinteractiveauthentication", "permitrootlogin", "maxauthtries",
                 "logingracetime", "x11forwarding", "permitemptypasswords", "hostbasedauthentication", "ignorerhosts",
                 "pubkeyauthentication", "authorizedkeysfile", "authorizedkeyscommand", "loglevel")
_SSHD_PATTERN = "^(" + "|".join(SSHD_KEYWORDS) + ")$"
# What a key line of authorized_keys looks like: options first maybe, then the key's type and base64.
_KEY_LINE = (r"^[[:space:]]*([^#[:space:]].*[[:space:]])?(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|"
             r"sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)[[:space:]]+AAAA")
SSHD_READS = [
    # sshd's effective settings (as root: -T reads the host keys), only the keywords the plan judges.
    f"if t=$(sshd -T 2>/dev/null || /usr/sbin/sshd -T 2>/dev/null); then printf '%s\\n' \"$t\" | "
    f"awk '$1 ~ /{_SSHD_PATTERN}/ {{print \"effective\", $0}}'; else echo 'effective-error'; fi",
    # The main file up to its first Match: the Include line, and what it sets before it (that wins).
    f"if [ -f {SSHD_CONFIG} ]; then awk '/^[[:space:]]*(#|$)/ {{next}} tolower($1) == \"match\" {{exit}} "
    f"tolower($1) == \"include\" {{print \"include\", $2; inc = 1; next}} "
    f"!inc && tolower($1) ~ /{_SSHD_PATTERN}/ {{print \"early\", tolower($1), $2}}' {SSHD_CONFIG}; fi",
    # Every drop-in by name, and the keywords it sets (first value per keyword counts).
    f"for f in {SSHD_DROPIN_DIR}/*.conf; do [ -f \"$f\" ] || continue; echo \"dropin ${{f##*/}}\"; "
    f"awk '/^[[:space:]]*(#|$)/ {{next}} tolower($1) == \"match\" {{exit}} tolower($1) ~ /{_SSHD_PATTERN}/ "
    "{print \"sets\", tolower($1), $2}' \"$f\"; done",
    # The deploy user's authorized keys (the login's, not root's under sudo), counted, never shown:
    # the files AuthorizedKeysFile names (%h, %u, %% expanded; relative ones under the home).
    # (set -f: the names are split into words, never expanded as globs.)
    'set -f; if [ -n "${SUDO_USER:-}" ]; then u=$SUDO_USER; else u=${LOGNAME:-$(id -un)}; fi; '
    'h=$(getent passwd "$u" | cut -d: -f6); '
    "files=$({ sshd -T 2>/dev/null || /usr/sbin/sshd -T 2>/dev/null; } | awk '$1 == \"authorizedkeysfile\" {$1 = \"\"; print}'); "
    '[ -n "$files" ] || files=".ssh/authorized_keys .ssh/authorized_keys2"; n=0; '
    'for f in $files; do f=$(printf "%s" "$f" | sed -e "s|%h|$h|g" -e "s|%u|$u|g" -e "s|%%|%|g"); '
    'case "$f" in /*) ;; *) f="$h/$f";; esac; '
    f"if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then c=$(grep -c -E '{_KEY_LINE}' -- \"$f\" 2>/dev/null); n=$((n + ${{c:-0}})); fi; "
    'done; echo "keys $n"',
]
APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")
_DROPIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,80}\.conf")
# A value from sshd's files as the plan may name it in a message (anything else is not shown).
_SSHD_VALUE = re.compile(r"[A-Za-z0-9@._,:/*%+=-]{1,100}")


def _sshd_value(value: str) -> str:
    return value if _SSHD_VALUE.fullmatch(value) else "(a value not shown)"


def _sshd(body: list[str]) -> dict:
    """sshd's effective settings, the main file's Include and early keywords, the drop-ins and
    the keywords each sets, the number of authorized keys the deploy user has."""
    found: dict = {"effective": {}, "effective_error": False, "includes": (), "early": {}, "dropins": {},
                   "authorized_keys": None}
    dropins: dict[str, dict[str, str]] = {}
    current = None
    for line in body:
        tag, _, rest = line.strip().partition(" ")
        words = rest.split()
        if tag == "effective" and len(words) >= 2 and words[0] in SSHD_KEYWORDS:
            found["effective"].setdefault(words[0], " ".join(_sshd_value(word) for word in words[1:]))
        elif tag == "effective-error":
            found["effective_error"] = True
        elif tag == "include" and words:
            found["includes"] += (words[0],)
        elif tag == "early" and len(words) >= 2 and words[0] in SSHD_KEYWORDS:
            found["early"].setdefault(words[0], _sshd_value(words[1]))
        elif tag == "dropin":
            current = dropins.setdefault(rest if _DROPIN_NAME.fullmatch(rest) else "(a file with an unusual name)", {})
        elif tag == "sets" and current is not None and len(words) >= 2 and words[0] in SSHD_KEYWORDS:
            current.setdefault(words[0], _sshd_value(words[1]))
        elif tag == "keys" and rest.strip().isdigit():
            found["authorized_keys"] = int(rest.strip())
    found["dropins"] = dict(sorted(dropins.items()))
    return found


COMPOSE_FILTER = json.dumps({"label": ["com.docker.compose.project"]}, separators=(",", ":"))
DOCKER_SOCKET = "/var/run/docker.sock"


def _engine_get(path: str, cli: str) -> str:
    """GET from the Docker engine's API: curl on its socket when there is curl, else the docker
    CLI (a Go program: about half a second per start on a small emulated VM, curl a tenth of it).
    Prints nothing when there is no engine."""
    return (f"if [ -S {DOCKER_SOCKET} ] && command -v curl >/dev/null 2>&1; then "
            f"curl -sf --max-time 20 --unix-socket {DOCKER_SOCKET} {shlex.quote('http://docker' + path)}; echo; "
            f"elif command -v docker >/dev/null 2>&1; then {cli} 2>/dev/null || true; fi")


def _run_section(name: str, commands: list[str]) -> str:
    # Each command in its own subshell: one failing read must not hide the others.
    return "; ".join([_section(name)] + [f"( {command} )" for command in commands])


def state_command(request: StateRequest) -> str:
    sections = state_sections(request)
    background = [(n, c) for n, c in sections if n.split(" ", 1)[0] in BACKGROUND]
    foreground = [(n, c) for n, c in sections if n.split(" ", 1)[0] not in BACKGROUND]
    # The temp dir is root's, 0700 (mktemp), and holds no secret: only background sections.
    parallel = " ".join(f"( {_run_section(n, c)} ) > \"$d/{i}\" 2>/dev/null &" for i, (n, c) in enumerate(background))
    inline = "; ".join(_run_section(n, c) for n, c in background)
    # `true` stands in for an empty foreground (a request without data dirs or root files).
    return (f"if d=$(mktemp -d 2>/dev/null); then {parallel} else d=; {inline}; fi; "
            + ("; ".join(_run_section(n, c) for n, c in foreground) or "true")
            + '; if [ -n "$d" ]; then wait; cat "$d"/* 2>/dev/null; rm -rf "$d"; fi; true')


@dataclass
class HostState:
    """The parsed answer: what the plan compares the settings with."""

    ssh_user: str = "root"
    ssh_home: str = "/root"
    machine: str = ""
    data_dirs: dict[str, dict] = field(default_factory=dict)
    root_files: dict[str, dict | None] = field(default_factory=dict)
    swap: dict = field(default_factory=lambda: {"size_bytes": -1, "active": False, "in_fstab": False, "swappiness": 60,
                                                 "kind": "missing", "signature": False})
    packages: dict[str, str] = field(default_factory=dict)
    apt_lock_holder: str | None = None
    docker_installed: bool = False
    containers: dict[str, dict] = field(default_factory=dict)
    probes: dict[str, dict[str, str]] = field(default_factory=dict)
    os_release: dict = field(default_factory=dict)
    memory_mb: int = 0
    cpus: int = 1
    image_inspect: list | None = None
    docker_enabled: bool = False
    docker_active: bool = False
    backup_timer_enabled: bool = False
    backup_timer_active: bool = False
    alerts_timer_enabled: bool = False
    alerts_timer_active: bool = False
    exporter_enabled: bool = False
    exporter_active: bool = False
    caddy_enabled: bool = False
    caddy_active: bool = False
    """caddy.service (setting tls_proxy) is enabled, and active."""
    apt_lists_age: int | None = None
    """Seconds since apt's lists were last updated (None: never)."""
    firewall: dict = field(default_factory=lambda: _firewall([]))
    """The SSH connection's addresses, sshd's ports, the loaded hermes-infra nft table, its unit, and
    ufw's state ("active", "inactive", "missing" or "unknown")."""
    sshd: dict = field(default_factory=lambda: _sshd([]))
    """sshd's effective settings (`sshd -T`), its Include, the drop-ins, the deploy user's key count."""
    apt_timers: dict[str, str] = field(default_factory=dict)
    """`systemctl is-enabled` of apt's daily timers, by unit (enabled, masked, disabled, '')."""
    apt_sources: dict[str, RootFile] = field(default_factory=dict)
    """Other apt source files naming Docker's repository, by path (their text, as apt reads it)."""
    snap_docker: tuple[str, ...] = ()
    """What shows a Docker installed from the snap store (empty: none), as the plan names it."""

    def __repr__(self) -> str:
        return f"<HostState: {len(self.data_dirs)} data dirs, {len(self.root_files)} files, contents not shown>"


def _json_records(lines: list[str]) -> list[dict]:
    """Containers from the engine API (one JSON array) or from `docker ps` (a JSON object a line)."""
    records: list[dict] = []
    for line in lines:
        line = line.strip()
        if not line.startswith(("[", "{")):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        records += [item for item in (value if isinstance(value, list) else [value]) if isinstance(item, dict)]
    return records


def _unit_states(lines: list[str]) -> dict[str, dict[str, str]]:
    """`systemctl show -p Id,...` blocks (a blank line between units), by unit name."""
    units: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in lines + [""]:
        key, equals, value = line.strip().partition("=")
        if equals:
            current[key] = value
        elif current:
            units[current.get("Id", "")] = current
            current = {}
    return units


def _container(record: dict) -> tuple[str, dict]:
    """One container, from the API (Names a list, Labels a dict) or `docker ps` (strings)."""
    labels = record.get("Labels") or {}
    if isinstance(labels, str):
        labels = dict(item.split("=", 1) for item in labels.split(",") if "=" in item)
    names = record.get("Names") or ""
    if isinstance(names, list):  # the API: ["/hermes"]; `docker ps`: "hermes"
        names = names[0] if names else ""
    name = names.lstrip("/")
    return name, {"id": record.get("Id") or record.get("ID"), "state": record.get("State"), "name": name,
                  "status": record.get("Status", ""),
                  "project": labels.get("com.docker.compose.project"),
                  "service": labels.get("com.docker.compose.service", name),
                  "config_hash": labels.get("com.docker.compose.config-hash"),
                  "image": record.get("Image"), "image_identity": labels.get("io.hermes-infra.image-identity")}


def parse_state(lines: list[str]) -> HostState:
    sections: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith(SECTION + " "):
            current = line[len(SECTION) + 1:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line.rstrip("\n"))
    state = HostState()
    who = sections.get("whoami", []) + ["", "", ""]
    state.ssh_user, state.ssh_home, state.machine = who[0] or "root", who[1] or "/root", who[2]
    for name, body in sections.items():
        kind, _, rest = name.partition(" ")
        if kind == "dirmeta":
            meta = [_meta4(line) for line in body[:2]] + [_meta4("missing|0|0|0")] * 2
            state.data_dirs.setdefault(rest, _no_data_dir()).update(
                meta=meta[0], parent=meta[1], foreign=(body[2:3] or ["clean"])[0].strip() == "foreign",
                empty=(body[3:4] or ["notempty"])[0].strip() == "empty")
        elif kind == "datadir":
            reads = safeio.parse_reads(body).get(rest, {"dir": "missing", "files": {}})
            state.data_dirs.setdefault(rest, _no_data_dir()).update(dir=reads["dir"], files=reads["files"])
        elif kind == "rootfiles":
            state.root_files.update(_root_files("".join(body).strip()))
        elif kind == "swap":
            values = [line.strip() for line in body] + ["-1", "inactive", "nofstab", "60", "missing|0", ""][len(body):]
            kind_name, _, links = values[4].partition("|")
            found = safeio.KIND_NAMES.get(kind_name, "other")
            state.swap = {"size_bytes": int(values[0] or -1), "active": values[1] == "active",
                          "in_fstab": values[2] == "fstab", "swappiness": int(values[3] or 60),
                          "kind": "hardlink" if found == "regular" and links != "1" else found,
                          "signature": values[5] == SWAP_SIGNATURE}
        elif kind == "packages":
            for line in body:
                parts = line.split()
                if len(parts) >= 2:
                    state.packages[parts[0]] = parts[1]
        elif kind == "aptlock":
            holder = "".join(body).strip()
            state.apt_lock_holder = holder or None
        elif kind == "docker":
            state.docker_installed = bool(body) and body[0].strip() == "installed"
            for record in _json_records(body[1:]):
                name, info = _container(record)
                state.containers[name] = info
        elif kind == "pyinfra":
            value = PYINFRA_FACTS[rest]().process([line for line in body if line.strip()]) if any(body) else None
            if rest == "os_release":
                state.os_release = value or {}
            elif rest == "memory":
                state.memory_mb = int(value or 0)
            else:
                state.cpus = int(value or 1)
        elif kind == "services":
            units = _unit_states(body)
            docker, timer, alerts, exporter, caddy = (units.get(name, {}) for name in SERVICES)
            state.docker_enabled, state.docker_active = docker.get("UnitFileState") == "enabled", \
                docker.get("ActiveState") == "active"
            state.backup_timer_enabled, state.backup_timer_active = timer.get("UnitFileState") == "enabled", \
                timer.get("ActiveState") == "active"
            state.alerts_timer_enabled, state.alerts_timer_active = alerts.get("UnitFileState") == "enabled", \
                alerts.get("ActiveState") == "active"
            state.exporter_enabled, state.exporter_active = exporter.get("UnitFileState") == "enabled", \
                exporter.get("ActiveState") == "active"
            state.caddy_enabled, state.caddy_active = caddy.get("UnitFileState") == "enabled", \
                caddy.get("ActiveState") == "active"
        elif kind == "aptlists":
            values = [int(line) for line in (line.strip() for line in body) if line.lstrip("-").isdigit()]
            if len(values) >= 2:
                state.apt_lists_age = values[0] - max(values[1:])
        elif kind == "image":
            text = "".join(body).strip()
            try:
                found = json.loads(text) if text else None
            except json.JSONDecodeError:
                found = None
            # The API answers one object, `docker image inspect` a list of them.
            state.image_inspect = [found] if isinstance(found, dict) else found or None
        elif kind == "snap":
            state.snap_docker += _snap_listed(body)
        elif kind == "aptsources":
            state.apt_sources.update(_apt_source_files(body))
        elif kind == "dockerpath":
            state.snap_docker += _snap_paths(body)
        elif kind == "firewall":
            state.firewall = _firewall(body)
        elif kind == "sshd":
            state.sshd = _sshd(body)
        elif kind == "apttimers":
            state.apt_timers = {unit: state_ for unit, _, state_ in (line.strip().partition(" ") for line in body)
                                if unit in APT_TIMERS}
        elif kind == "probe":
            codes = [line.strip() or "000" for line in body] + ["000"] * 3
            state.probes[rest] = {"health": codes[0], "anonymous": codes[1], "models": codes[2]}
    return state


# What a snap's version or revision may look like before it is named in a message.
_SNAP_FIELD = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~:_-]{0,39}")


def _snap_listed(lines: list[str]) -> tuple[str, ...]:
    """`snap list docker`: a header row (`Name Version Rev Tracking Publisher Notes`), then one
    row per snap. Only a row named exactly `docker` below that header counts."""
    rows = [line.split() for line in lines if line.strip()]
    if not rows or rows[0][:1] != ["Name"]:
        return ()
    for row in rows[1:]:
        if row[0] == "docker":
            version, revision = (field if _SNAP_FIELD.fullmatch(field) else None for field in (row + ["", ""])[1:3])
            detail = f" {version}" + (f" (revision {revision})" if revision else "") if version else ""
            return (f"`snap list` shows the snap docker{detail}",)
    return ()


def _apt_source_files(lines: list[str]) -> dict[str, RootFile]:
    """`file PATH` then its lines behind "| "; anything else (an empty line) ends nothing."""
    found: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith("file /etc/apt/"):
            current = found.setdefault(line[len("file "):], [])
        elif current is not None and line.startswith("| "):
            current.append(line[2:])
        elif current is not None and line == "|":
            current.append("")
    return {path: RootFile("\n".join(text) + "\n") for path, text in found.items()}


def _snap_paths(lines: list[str]) -> tuple[str, ...]:
    found = []
    for line in (line.strip() for line in lines):
        if line == "snapbin present":
            found.append("/snap/bin/docker exists")
        elif line.startswith("command /snap/"):
            found.append("`command -v docker` finds a docker under /snap/ first on the PATH")
    return tuple(found)


def _root_files(encoded: str) -> dict[str, dict]:
    """The regular files in the tar stream; links, directories and the like count as missing
    (the plan writes a regular file over them)."""
    found: dict[str, dict] = {}
    if not encoded:
        return found
    try:
        archive = tarfile.open(fileobj=io.BytesIO(base64.b64decode(encoded, validate=True)), mode="r:")
        for member in archive:
            content = archive.extractfile(member) if member.isreg() or member.islnk() else None
            if content is None:
                continue
            text = content.read().decode("utf-8", errors="surrogateescape")
            found[member.name] = {"uid": member.uid, "gid": member.gid, "mode": f"{member.mode & 0o7777:04o}",
                                  "text": RootFile(text)}
    except (tarfile.TarError, ValueError, KeyError) as error:
        # Never plan from half a read: every file would look missing and be rewritten.
        raise ValueError(f"the host's root-owned files came back unreadable ({type(error).__name__}); "
                         "nothing was changed. Fix: re-run; if it persists, check the host's disk and tar") from None
    return found


def _no_data_dir() -> dict:
    missing = _meta4("missing|0|0|0")
    return {"meta": missing, "parent": missing, "foreign": False, "empty": False, "dir": "missing", "files": {}}


def _meta4(line: str) -> dict:
    kind, uid, gid, mode = (line.strip().split("|") + ["0"] * 4)[:4]
    return {"kind": safeio.KIND_NAMES.get(kind, "other"), "uid": int(uid or 0), "gid": int(gid or 0),
            "mode": mode.rjust(4, "0")}


class HermesHostState(FactBase):
    """Everything hermes-infra's plan needs from one host, in one command (see module doc)."""

    def command(self, request: StateRequest) -> str:
        return state_command(request)

    def process(self, output) -> HostState:
        return parse_state(list(output))
