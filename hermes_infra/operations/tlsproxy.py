"""The TLS proxy (setting tls_proxy): the caddy package, its Caddyfile (checked by `caddy validate`
before it replaces the old one), the service enabled and running the file; off, the Caddyfile
hermes-infra wrote goes and caddy is stopped and disabled (the package stays: it may serve
something else once the operator writes their own file)."""
from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import deploy, operation

from hermes_infra.operations.files import root_file
from hermes_infra.plan import tlsproxy as tls
from hermes_infra.plan.hostplan import Writer
from hermes_infra.plan.tlsproxy import TlsProxyPlan

CADDYFILE = shlex.quote(tls.CADDYFILE)
FAILED_START = ("{ echo 'hermes-infra: caddy did not start (another server on its port? journalctl -u caddy):' >&2; "
                "journalctl -u caddy -n 15 --no-pager -o cat >&2; false; }")


def caddy_accepts(staged: str) -> str:
    """caddy's own parser and provisioning judge the staged file, in a subshell (the check runs
    inside `{ ...; }`). `caddy validate` sets up every app it configures, the internal CA among
    them, under $HOME: a throwaway one, so root gets no CA of its own and caddy's stays as it is."""
    return (f"( d=$(mktemp -d) || exit 1; HOME=$d XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config "
            f"caddy validate --config {staged} --adapter caddyfile >\"$d/log\" 2>&1; rc=$?; "
            "if [ $rc -ne 0 ]; then tail -n 5 \"$d/log\" >&2; echo 'hermes-infra: caddy refuses the new Caddyfile "
            "(above); the current one is kept and caddy was not reloaded' >&2; fi; rm -rf \"$d\"; exit $rc )")


@operation()
def proxy_running(plan: TlsProxyPlan, caddyfile_changed: bool = False):
    """caddy enabled and running the Caddyfile: a changed file is reloaded (a restart when the
    running caddy cannot be reached on the new admin socket, as right after the package's own
    first start); off, stopped and disabled, and hermes-infra's Caddyfile removed."""
    if not plan.enabled:
        if not plan.present:
            host.noop("no hermes-infra Caddyfile is installed")
            return
        yield f"systemctl disable --now --quiet {tls.UNIT} 2>/dev/null || true"
        yield f"rm -f {CADDYFILE}"
        return
    if not plan.needs_start and not caddyfile_changed:
        host.noop(f"caddy serves {plan.url}")
        return
    if not (plan.installed and plan.service_enabled):
        yield f"systemctl enable --quiet {tls.UNIT}"
    if plan.needs_start:
        # Just installed, the package started it with its own Caddyfile (a file server on :80).
        yield f"systemctl restart {tls.UNIT} || {FAILED_START}"
    else:
        yield f"systemctl reload {tls.UNIT} || systemctl restart {tls.UNIT} || {FAILED_START}"


@deploy("TLS proxy")
def tls_proxy(plan: TlsProxyPlan, writer: Writer):
    """caddy is already installed: `release.deploy.hardening` installs it with unattended-upgrades
    in one apt run, before either's files."""
    for warning in plan.warnings:
        logger.warning(f"{host.print_prefix}tls_proxy: {warning}")
    if not plan.enabled and not plan.present:
        return  # never had one: no operations to show
    changed = False
    if plan.enabled:
        changed = plan.caddyfile.content_changed
        root_file(name=f"TLS proxy: {tls.CADDYFILE} ({plan.url} -> {plan.upstream})", file=plan.caddyfile,
                  writer=writer, check=caddy_accepts)
    proxy_running(name="TLS proxy: caddy " + (f"serves {plan.url}" if plan.enabled else "stopped, its Caddyfile removed"),
                  plan=plan, caddyfile_changed=changed)
