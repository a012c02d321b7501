"""The host firewall (setting `firewall`): the nftables ruleset text, pure.

Why a table of its own and not rules in Docker's `DOCKER-USER` chain: Docker 26/27 (iptables
backend; iptables-nft on Debian 12 and 13) creates `DOCKER-USER` in `ip filter` and owns that
table: it is IPv4 only, it must exist before a rule can be inserted (so at boot the rules can
only come after docker.service, leaving a window), and the chain is Docker's to recreate. A
separate `inet` table with base chains at priority -10 runs on the same hooks before Docker's
`filter` chains (priority 0); in nftables a `drop` in any base chain is final, an `accept`
only ends this chain and the packet still meets Docker's rules. Docker never lists, flushes or
deletes a table it did not create (restart included), and the table loads at boot before
docker.service (hermes-infra-firewall.service), for IPv4 and IPv6 at once.

A published port is DNATed by Docker in `prerouting` and then forwarded, never seen by
`input`: the forward chain matches it by conntrack's original destination port (the host
port), so `firewall.allow` speaks of host ports as the settings do. New connections from
outside into a container bridge that Docker did not DNAT (someone routing to 172.17.0.2
directly) are dropped. Traffic from containers (egress, companions reaching a port on the
bridge address) is left to Docker's own rules.

The TLS proxy (setting tls_proxy) is a host process: its ports (`tls_proxy.port`, and 80 for
ACME's HTTP challenge) are accepted on `input` only (`Rules.host_ports`), never forwarded.

ufw (on Ubuntu's images) is never changed, only read: where it is active, its chains and this
table both filter the host's own traffic, while Docker's published ports bypass ufw: only this
table filters them. The plan says so (`ufw_warnings`), with the firewall on or off.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hermes_infra.host.hostfacts import HostState
from hermes_infra.plan import tlsproxy
from hermes_infra.settings.schema import HostSettings, classify_address, parse_port_spec, publish_addresses

TABLE = "hermes_infra"
RULESET_PATH = "/etc/hermes-infra/firewall.nft"
UNIT = "hermes-infra-firewall.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
LOADED_PATH = "/var/lib/hermes-infra/firewall.loaded"
"""sha256 of `nft -s list table inet hermes_infra` right after the last confirmed load."""
REVERT_UNIT = "hermes-infra-firewall-revert"
REVERT_PATH = "/var/lib/hermes-infra/firewall.revert.nft"
PACKAGE = "nftables"
NFT = "/usr/sbin/nft"
PATHS = (RULESET_PATH, UNIT_PATH, LOADED_PATH)
# Spaces, not nft's tabs: the dry run's diff shows a tab as an escaped control character.
INDENT = "    "
# Docker's default bridge and the bridges of compose networks.
CONTAINER_INTERFACES = ("docker0", "br-*")
COMMENT = re.compile(r'^\s*comment "hermes-infra ([0-9a-f]{16})"\s*$', re.MULTILINE)
ICMP_TYPES = ("echo-request", "destination-unreachable", "time-exceeded", "parameter-problem")
# Neighbour discovery and router advertisements: without them a VPS loses its IPv6 address.
ICMPV6_TYPES = ("echo-request", "destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem",
                "nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert")


class FirewallError(ValueError):
    """Settings that would lock the operator out, or a host whose SSH cannot be told."""


@dataclass(frozen=True)
class Published:
    """A port some setting publishes on an address other than loopback."""

    setting: str
    address: str
    port: int
    protocol: str
    reach: str


@dataclass(frozen=True)
class Rules:
    """What the ruleset says, decided from settings and facts (the text is rendered from it)."""

    ssh_ports: tuple[int, ...]
    ssh_sources: tuple[str, ...]
    allow: tuple[tuple[str, int, tuple[str, ...]], ...]
    """(protocol, port, source networks; none: anywhere)."""
    bridge: tuple[tuple[str, str, int], ...]
    """(address, protocol, port) published on the docker bridge address: open to containers only."""
    host_ports: tuple[tuple[str, int, tuple[str, ...]], ...] = ()
    """(protocol, port, source networks) of host processes hermes-infra runs (the TLS proxy's
    caddy): accepted on input only, never forwarded to a container."""


@dataclass(frozen=True)
class FirewallPlan:
    enabled: bool
    digest: str = ""
    ruleset: Any = None
    """RootFilePlan of RULESET_PATH (None when the firewall is off)."""
    unit: Any = None
    """RootFilePlan of the boot unit (None when the firewall is off)."""
    text: str = ""
    loaded_digest: str | None = None
    """The digest in the loaded table's comment (None: no hermes-infra table in the kernel)."""
    loaded_intact: bool = False
    """The loaded table is the one recorded after the last confirmed load (not edited by hand)."""
    unit_enabled: bool = False
    nft_installed: bool = False
    present: tuple[str, ...] = ()
    """hermes-infra's firewall files found on the host (removed when the firewall is off)."""
    confirm_seconds: int = 60
    ssh_ports: tuple[int, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def needs_load(self) -> bool:
        return self.enabled and (self.loaded_digest != self.digest or not self.loaded_intact)

    @property
    def table_loaded(self) -> bool:
        return self.loaded_digest is not None


# --- from settings ------------------------------------------------------------------------------

def published_ports(settings: HostSettings) -> list[Published]:
    """Every port a setting publishes on a non-loopback address (bridge ones included)."""
    bridge = settings.docker.bridge_gateway_ip
    found: list[Published] = []

    def add(setting: str, address: str, port: int, protocol: str = "tcp") -> None:
        reach = classify_address(address, setting, bridge).reach
        if reach != "loopback":
            found.append(Published(setting, address, port, protocol, reach))

    for gateway in settings.gateways:
        for address in publish_addresses(settings, gateway):
            add(f"gateways[{gateway.name}].api", address, gateway.api.port)
        if gateway.dashboard.enabled:
            add(f"gateways[{gateway.name}].dashboard", gateway.dashboard.publish_address, gateway.dashboard.port)
    for companion in settings.companions:
        for index, spec in enumerate(companion.ports):
            parsed = parse_port_spec(spec)
            for port in parsed.host_ports:
                add(f"companions[{companion.name}].ports[{index}]", parsed.address, port, parsed.protocol)
    if settings.metrics is not None:
        add("metrics", settings.metrics.listen_address, settings.metrics.port)
    return found


def unallowed_warnings(settings: HostSettings) -> list[str]:
    """A published port strangers were meant to reach that the firewall keeps closed."""
    allowed = {(rule.protocol, rule.port) for rule in settings.firewall.allow}
    warnings = []
    for item in published_ports(settings):
        if item.reach == "bridge" or (item.protocol, item.port) in allowed:
            continue
        warnings.append(
            f"{item.setting} is published on {_shown(item)}, which the firewall does not "
            f"allow: other machines cannot reach it. Fix: add {{port: {item.port}"
            + ("" if item.protocol == "tcp" else f", protocol: {item.protocol}")
            + "} to firewall.allow (with allow_from to narrow it), or publish it on 127.0.0.1")
    return warnings


# Published by Docker (DNAT, then its own forward rules): what ufw's chains never see. The
# metrics exporter is a host process: ufw filters it as any other.
DOCKER_PUBLISHED = ("gateways[", "companions[")


def _shown(item: Published) -> str:
    address = f"[{item.address}]" if ":" in item.address else item.address
    return f"{address}:{item.port}/{item.protocol}"


def ufw_warnings(settings: HostSettings, state: HostState, ssh: tuple[int, ...] = ()) -> list[str]:
    """ufw active on the host: what it does not filter, and what to do about it (nothing when it
    is not active, or the host's answer did not parse)."""
    if state.firewall.get("ufw") != "active":
        return []
    docker = [p for p in published_ports(settings) if p.setting.startswith(DOCKER_PUBLISHED)]
    return _ufw_beside_table(settings, docker, ssh) if settings.firewall.enabled else _ufw_bypassed(docker)


def _ufw_bypassed(docker: list[Published]) -> list[str]:
    """No table of ours: each port Docker publishes where others reach it is open whatever ufw says."""
    return [f"{item.setting} is published on {_shown(item)} and ufw is active on this host, but ufw does not "
            "protect that port: Docker's published ports bypass ufw (Docker's own forward rules accept them "
            "before ufw's chains see them), so whoever reaches the host reaches the port, whatever `ufw status` "
            "says. Fix: set firewall.enabled: true and list the port in firewall.allow (with allow_from to "
            "narrow it): hermes-infra's nftables table filters published ports before Docker's rules; or "
            "publish it on 127.0.0.1 and reach it through an SSH tunnel or a proxy"
            for item in docker if item.reach != "bridge"]


def _ufw_beside_table(settings: HostSettings, docker: list[Published], ssh: tuple[int, ...]) -> list[str]:
    """Both filter the host's own traffic; only our table filters published ports."""
    published = {(p.protocol, p.port) for p in docker}
    host_ports = [f"{port}/tcp" for port in ssh] + [
        f"{rule.port}/{rule.protocol}" for rule in settings.firewall.allow if (rule.protocol, rule.port) not in published] + [
        f"{port}/{protocol}" for protocol, port, _ in tlsproxy.listen_ports(settings)]
    return ["ufw is active on this host beside hermes-infra's nftables table (table inet hermes_infra); a packet "
            "must pass both. ufw does not filter the ports Docker publishes (Docker's forward rules accept them "
            "before ufw's chains see them): for those, hermes-infra's table and firewall.allow decide. Everything "
            "else (SSH, the host's own services) meets ufw's rules too, so a port firewall.allow opens that ufw "
            "does not allow stays closed, and SSH is only as open as ufw's rules leave it. Fix: make "
            "hermes-infra's table the one firewall with `ufw disable` (it keeps inbound denied, SSH and "
            "firewall.allow open); or keep ufw and allow there what the host itself must answer: "
            + ", ".join(f"`ufw allow {port}`" for port in dict.fromkeys(host_ports))]


def ssh_ports(settings: HostSettings, state: HostState) -> tuple[int, ...]:
    """The SSH ports always allowed: the setting, else what sshd listens on; and, in every case,
    the port this deploy's own connection arrived on (the host's own word, not the inventory's:
    behind a NAT or a forward the two differ)."""
    facts = state.firewall
    wanted = settings.firewall.ssh_port
    listening = tuple(facts.get("sshd_ports", ()))
    connection = facts.get("server_port")
    if wanted is not None and listening and wanted not in listening:
        raise FirewallError(
            f"firewall.ssh_port is {wanted}, but sshd on this host listens on {', '.join(map(str, listening))}: "
            f"the rules would open a port nobody answers on and rely on the deploy's own port alone. Fix: set "
            f"firewall.ssh_port to {listening[0]}, or leave it unset")
    ports = [wanted] if wanted is not None else list(listening)
    if connection:
        ports.append(connection)
    if not ports:
        raise FirewallError(
            "firewall.enabled is true, but the host did not say which port SSH arrives on (no SSH_CONNECTION, no "
            "sshd listening socket found): the rules could cut this deploy off. Nothing was changed. Fix: set "
            "firewall.ssh_port to the port sshd listens on")
    return tuple(sorted(set(ports)))


def check_ssh_sources(settings: HostSettings, state: HostState) -> None:
    """`ssh_allow_from` must contain the address this deploy connects from."""
    sources = settings.firewall.ssh_allow_from
    if not sources:
        return
    client = state.firewall.get("client")
    if client is None:
        raise FirewallError(
            "firewall.ssh_allow_from is set, but the host did not say which address this deploy connects from "
            "(no SSH_CONNECTION): the rules might cut it off. Nothing was changed. Fix: leave ssh_allow_from empty "
            "for this deploy, or deploy over a plain SSH login")
    address = ipaddress.ip_address(client)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if not any(address in ipaddress.ip_network(network) for network in sources):
        raise FirewallError(
            f"firewall.ssh_allow_from is {sources}, which does not contain {client}, the address this deploy "
            "connects from: the rules would lock it (and you) out. Nothing was changed. Fix: add that address or "
            "its network to firewall.ssh_allow_from")


def rules_of(settings: HostSettings, state: HostState) -> Rules:
    check_ssh_sources(settings, state)
    ports = ssh_ports(settings, state)
    bridge = tuple(sorted({(p.address, p.protocol, p.port) for p in published_ports(settings) if p.reach == "bridge"}))
    allow = tuple((rule.protocol, rule.port, tuple(rule.allow_from)) for rule in settings.firewall.allow)
    proxy = tuple(item for item in tlsproxy.listen_ports(settings) if item not in allow)
    return Rules(ssh_ports=ports, ssh_sources=tuple(settings.firewall.ssh_allow_from), allow=allow, bridge=bridge,
                 host_ports=proxy)


# --- the text -----------------------------------------------------------------------------------

def _set(values) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _by_family(networks: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """`ip saddr` and `ip6 saddr` matches for the networks (nothing: one match-all entry)."""
    if not networks:
        return [("", ())]
    v4 = tuple(n for n in networks if ipaddress.ip_network(n).version == 4)
    v6 = tuple(n for n in networks if ipaddress.ip_network(n).version == 6)
    return [(family, group) for family, group in (("ip", v4), ("ip6", v6)) if group]


def _source(family: str, group: tuple[str, ...]) -> str:
    return f"{family} saddr {_set(group)} " if group else ""


def body_lines(rules: Rules) -> list[str]:
    """The table's chains (the digest is taken over these)."""
    ssh = _set(rules.ssh_ports)
    inputs = ["ct state established,related accept", "ct state invalid drop", 'iifname "lo" accept',
              f"icmp type {_set(ICMP_TYPES)} accept", f"icmpv6 type {_set(ICMPV6_TYPES)} accept",
              # DHCPv6 replies come from the server's link-local address, not as conntrack replies.
              "ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept"]
    inputs += [f"{_source(family, group)}tcp dport {ssh} accept" for family, group in _by_family(rules.ssh_sources)]
    for protocol, port, sources in rules.host_ports:
        inputs += [f"{_source(family, group)}{protocol} dport {port} accept" for family, group in _by_family(sources)]
    forwarded = []
    for protocol, port, sources in rules.allow:
        for family, group in _by_family(sources):
            inputs.append(f"{_source(family, group)}{protocol} dport {port} accept")
            forwarded.append(f"{_source(family, group)}meta l4proto {protocol} ct original proto-dst {port} accept")
    for address, protocol, port in rules.bridge:
        family = "ip6" if ":" in address else "ip"
        for interface in CONTAINER_INTERFACES:
            inputs.append(f'iifname "{interface}" {family} daddr {address} {protocol} dport {port} accept')
    forward = ["ct state established,related accept",
               *(f'iifname "{interface}" accept' for interface in CONTAINER_INTERFACES),
               "ct status dnat jump published",
               *(f'oifname "{interface}" drop' for interface in CONTAINER_INTERFACES)]
    lines = ["chain input {", INDENT + "type filter hook input priority -10; policy drop;", *(INDENT + r for r in inputs), "}",
             "chain forward {", INDENT + "type filter hook forward priority -10; policy accept;",
             *(INDENT + r for r in forward), "}",
             "chain published {", *(INDENT + r for r in forwarded), INDENT + "drop", "}"]
    return lines


def digest_of(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def ruleset_text(rules: Rules) -> str:
    """The file `nft -f` loads: our table replaced in one transaction (the empty `table` line
    makes the `delete` valid when it does not exist yet), nothing else in the ruleset touched."""
    lines = body_lines(rules)
    return "\n".join([
        "#!/usr/sbin/nft -f",
        "# Written by hermes-infra (setting firewall). Loaded at boot by hermes-infra-firewall.service,",
        "# before docker.service. Only this table is replaced: Docker's tables are never touched.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        f'{INDENT}comment "hermes-infra {digest_of(lines)}"',
        *(INDENT + line for line in lines),
        "}",
    ]) + "\n"


def unit_text(ruleset: str = RULESET_PATH) -> str:
    """Before the network and before docker.service, as Debian's nftables.service (which
    would `flush ruleset` Docker's tables too, so it is not used). Not `RequiredBy=docker.service`:
    with Requires, stopping or restarting this loader would stop or restart Docker and every
    gateway with it; a table that failed to load at boot is HI-FW-001's finding instead. After
    nftables.service: where an operator enabled it, its `flush ruleset` must come first."""
    return f"""[Unit]
Description=hermes-infra firewall (nftables table inet {TABLE})
Documentation=file:{ruleset}
DefaultDependencies=no
Wants=network-pre.target
After=nftables.service
Before=network-pre.target docker.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={NFT} -f {ruleset}

[Install]
WantedBy=sysinit.target
"""


# --- the plan -----------------------------------------------------------------------------------

def loaded_digest(listing: str | None) -> str | None:
    if listing is None:
        return None
    match = COMMENT.search(listing)
    return match.group(1) if match else "unmarked"


def listing_sha(listing: str | None) -> str | None:
    return None if listing is None else hashlib.sha256(listing.encode()).hexdigest()


def plan_firewall(settings: HostSettings, state: HostState, root_file: Callable[..., Any]) -> FirewallPlan:
    """`root_file(path, content)` builds a RootFilePlan against the host's facts."""
    facts = state.firewall
    listing = facts.get("listing")
    present = tuple(path for path in PATHS if state.root_files.get(path) is not None)
    common = dict(loaded_digest=loaded_digest(listing), unit_enabled=bool(facts.get("unit_enabled")),
                  nft_installed=bool(facts.get("nft")), present=present)
    if not settings.firewall.enabled:
        return FirewallPlan(enabled=False, warnings=tuple(ufw_warnings(settings, state)), **common)
    rules = rules_of(settings, state)
    text = ruleset_text(rules)
    recorded = state.root_files.get(LOADED_PATH)
    intact = recorded is not None and recorded["text"].text.strip() == listing_sha(listing)
    return FirewallPlan(enabled=True, digest=digest_of(body_lines(rules)), ruleset=root_file(RULESET_PATH, text, "0600"),
                        unit=root_file(UNIT_PATH, unit_text()), text=text, loaded_intact=intact,
                        confirm_seconds=settings.firewall.confirm_seconds, ssh_ports=rules.ssh_ports,
                        warnings=(*unallowed_warnings(settings), *ufw_warnings(settings, state, rules.ssh_ports)),
                        **common)
