"""A public HTTPS endpoint (setting tls_proxy): Debian's caddy and its Caddyfile, pure.

Caddy is the distribution's package (2.6.2 in Debian 12 and 13 and in Ubuntu 24.04), run by its
own unit (`caddy.service`, user caddy, `caddy run --config /etc/caddy/Caddyfile`, reload through
the admin endpoint). hermes-infra writes that one file, checked by `caddy validate` before it
replaces the old one (a file that was not hermes-infra's is kept in the backup dir first):

- one site, `tls_proxy.domain`, reverse-proxied to the gateway's published port on loopback, so
  the gateway itself stays bound to 127.0.0.1 and nothing about its container changes;
- `ca: acme`: Caddy's automatic HTTPS (Let's Encrypt, ZeroSSL as its fallback), its HTTP
  challenge and HTTP-to-HTTPS redirect on port 80, HSTS on the answers;
  `ca: internal`: `tls internal` (Caddy's local CA, root in ROOT_CERT), no port 80 at all
  (`auto_https disable_redirects`), no HSTS (a test name must not stick in a browser);
- HTTP/1.1 and HTTP/2 only (no HTTP/3: it would listen on UDP, which the firewall keeps closed);
- the admin endpoint on a unix socket in caddy's own home instead of TCP 127.0.0.1:2019, which
  every local user could reach and reconfigure the proxy through; the socket is caddy's (and
  root's) alone, and `caddy reload` (the unit's ExecReload) finds it in the Caddyfile;
- no `Server` header, `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`.

No secret is in the file: the API still asks for its key, the dashboard for its basic auth.
Off: the Caddyfile is removed only when it carries hermes-infra's marker, and caddy is then
stopped and disabled; the package stays, as unattended-upgrades does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hermes_infra.host.hostfacts import HostState
from hermes_infra.settings.schema import HostSettings, classify_address, proxied_addresses, proxied_gateway

PACKAGE = "caddy"
UNIT = "caddy.service"
CADDYFILE = "/etc/caddy/Caddyfile"
PATHS = (CADDYFILE,)
HOME = "/var/lib/caddy"
"""The caddy user's home (the package's postinst): Caddy keeps certificates and its CA below it."""
ADMIN_SOCKET = f"{HOME}/admin.sock"
ROOT_CERT = f"{HOME}/.local/share/caddy/pki/authorities/local/root.crt"
"""The internal CA's root certificate (Caddy's data dir is $HOME/.local/share/caddy)."""
MARKER = "# Written by hermes-infra (setting tls_proxy)."
HSTS = "max-age=31536000"
INDENT = "\t"
"""Tabs, as `caddy fmt` writes them: caddy logs a warning on every load of a file it would
reformat (the dry run's diff shows a tab as `?`)."""


@dataclass(frozen=True)
class TlsProxyPlan:
    enabled: bool
    caddyfile: Any = None
    """RootFilePlan of CADDYFILE (None when off)."""
    installed: bool = False
    """The caddy package is installed."""
    service_enabled: bool = False
    service_active: bool = False
    present: bool = False
    """A Caddyfile with hermes-infra's marker is on the host (removed when off)."""
    url: str = ""
    upstream: str = ""
    """What the site forwards to, as `127.0.0.1:8642`."""
    warnings: tuple[str, ...] = ()

    @property
    def needs_start(self) -> bool:
        """caddy is not (yet) installed, enabled or running: enabled and (re)started."""
        return not (self.installed and self.service_enabled and self.service_active)


# --- from settings ------------------------------------------------------------------------------

def listen_ports(settings: HostSettings) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """(protocol, port, source networks; none: anywhere) the firewall opens for the proxy: its
    HTTPS port, and 80 for ACME's HTTP challenge (from anywhere: the CA's vantage points are
    not published). Nothing when the proxy is off."""
    proxy = settings.tls_proxy
    if not proxy.enabled:
        return ()
    ports = [("tcp", proxy.port, tuple(proxy.allow_from))]
    if proxy.acme:
        ports.append(("tcp", 80, ()))
    return tuple(ports)


def site_url(settings: HostSettings) -> str:
    proxy = settings.tls_proxy
    return f"https://{proxy.domain}" + ("" if proxy.port == 443 else f":{proxy.port}")


def upstream_of(settings: HostSettings) -> str:
    address, port, _ = proxied_addresses(settings)
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def fronted(settings: HostSettings) -> str:
    """The setting whose port the proxy fronts, as messages name it."""
    return f"gateways[{proxied_gateway(settings).name}].{settings.tls_proxy.upstream}"


def caddyfile_text(settings: HostSettings) -> str:
    proxy = settings.tls_proxy
    internal = proxy.ca == "internal"
    signer = "Caddy's internal CA, root " + ROOT_CERT if internal else "ACME (" + (
        f"account {proxy.acme_email}" if proxy.acme_email else "no contact address") + ")"
    options = [f"admin unix/{ADMIN_SOCKET}", "skip_install_trust"]
    if internal:
        options.append("auto_https disable_redirects")
    elif proxy.acme_email:
        options.append(f"email {proxy.acme_email}")
    options += ["servers {", INDENT + "protocols h1 h2", "}"]
    headers = ([f'Strict-Transport-Security "{HSTS}"'] if not internal else []) + [
        "X-Content-Type-Options nosniff", "Referrer-Policy no-referrer", "-Server"]
    site = [*(["tls internal"] if internal else []), "header {", *(INDENT + h for h in headers), "}",
            f"reverse_proxy {upstream_of(settings)}"]
    address = proxy.domain if proxy.port == 443 else f"{proxy.domain}:{proxy.port}"
    return "\n".join([
        MARKER,
        "# Replaced by each deploy (a file that was not hermes-infra's is kept in its backup dir first).",
        f"# {site_url(settings)} -> {fronted(settings)} on {upstream_of(settings)}; certificate: {signer}.",
        "{", *(INDENT + o for o in options), "}",
        "",
        f"{address} {{", *(INDENT + line for line in site), "}",
    ]) + "\n"


def bypass_warnings(settings: HostSettings) -> list[str]:
    """The fronted port is also published where strangers reach it: the proxy can be walked around."""
    _, port, addresses = proxied_addresses(settings)
    bridge = settings.docker.bridge_gateway_ip
    wide = [a for a in addresses if classify_address(a, "address", bridge).reach not in ("loopback", "bridge")]
    if not wide:
        return []
    shown = ", ".join(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in wide)
    where = (f"{fronted(settings)}.publish_addresses" if settings.tls_proxy.upstream == "api"
             else f"{fronted(settings)}.publish_address")
    return [f"tls_proxy serves {site_url(settings)} from {fronted(settings)}, which is also published on {shown}: "
            "whoever reaches that port walks around the proxy (plain HTTP, the key in clear on the wire). Fix: "
            f"publish it on 127.0.0.1 only ({where} unset, allow_public false) and let clients use the proxy"]


def ufw_warnings(settings: HostSettings, state: HostState) -> list[str]:
    """ufw filters caddy like any host process: without hermes-infra's firewall it must allow the ports."""
    if settings.firewall.enabled or state.firewall.get("ufw") != "active":
        return []
    ports = ", ".join(f"`ufw allow {port}/{protocol}`" for protocol, port, _ in listen_ports(settings))
    return [f"ufw is active on this host: it filters caddy's ports like any other, and hermes-infra does not "
            f"change ufw. Fix: {ports} (or set firewall.enabled: true and let hermes-infra's table open them)"]


# --- the plan -----------------------------------------------------------------------------------

def ours(current: dict | None) -> bool:
    return current is not None and current["text"].text.startswith(MARKER)


def plan_tls_proxy(settings: HostSettings, state: HostState, root_file: Callable[..., Any],
                   backup_dir: str = "") -> TlsProxyPlan:
    """`root_file(path, content)` builds a RootFilePlan against the host's facts."""
    current = state.root_files.get(CADDYFILE)
    common = dict(installed=state.packages.get(PACKAGE) == "installed", service_enabled=state.caddy_enabled,
                  service_active=state.caddy_active, present=ours(current))
    if not settings.tls_proxy.enabled:
        return TlsProxyPlan(enabled=False, **common)
    warnings = [*bypass_warnings(settings), *ufw_warnings(settings, state)]
    if current is not None and not ours(current):
        warnings.append(f"{CADDYFILE} on this host is not hermes-infra's: it is replaced, and the previous one "
                        f"kept in {backup_dir or 'the backup dir'}. Fix: nothing, unless caddy served other sites "
                        "there: caddy serves only tls_proxy.domain now")
    return TlsProxyPlan(enabled=True, caddyfile=root_file(CADDYFILE, caddyfile_text(settings)),
                        url=site_url(settings), upstream=upstream_of(settings), warnings=tuple(warnings), **common)
