"""The TLS proxy (setting tls_proxy): the settings judged by meaning; the Caddyfile on a fresh,
converged, drifted, hostile and turned-off host; the package in the same apt run as the
automatic updates; the firewall opening its port and nothing else; the facts it is planned from;
its controls."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pyinfra.context import ctx_host

from hermes_infra.checks.runner import instances
from hermes_infra.host import hostfacts
from hermes_infra.operations import files as file_ops
from hermes_infra.operations import tlsproxy as ops
from hermes_infra.plan import firewall as fw
from hermes_infra.plan import tlsproxy as tls
from hermes_infra.plan.hostplan import fact_request
from hermes_infra.release import deploy
from hermes_infra.settings.loading import SettingsError
from hermes_infra.settings.schema import HostSettings, check_domain_name
from tests.unit.hostfakes import FakeHost, fresh, plan_for, root_file, run_op, settings
from tests.unit.test_checks_controls import FakeHost as CheckHost
from tests.unit.test_checks_controls import Out, context, gateway_record, outcome

INTERNAL = {"enabled": True, "domain": "hermes.test", "ca": "internal"}
ACME = {"enabled": True, "domain": "hermes.example.org", "acme_email": "ops@example.org"}
SSH_FACTS = ["ssh 198.51.100.4 40000 10.0.0.5 22", "sshd 0.0.0.0:22 [::]:22", "nft", "unit disabled"]
DASHBOARD = {"enabled": True, "basic_auth_username": "ops", "basic_auth_password_hash": "$2b$12$abcdefghijklmnopqrstuv"}
SECRET_KEY = "Zq8" + "x7Yp" * 9
PROXY_RUNNING = ops.proxy_running  # run_deploy replaces it in the module


def proxy_plan(facts=None, **sections) -> tls.TlsProxyPlan:
    sections.setdefault("tls_proxy", INTERNAL)
    return plan_for(settings(**sections), facts or fresh()).tls_proxy


def converged_facts(host_settings, **state):
    text = plan_for(host_settings, fresh()).tls_proxy.caddyfile.content
    values = dict(packages={tls.PACKAGE: "installed"}, caddy_enabled=True, caddy_active=True,
                  root_files={tls.CADDYFILE: root_file(text)})
    values.update(state)
    return fresh(**values)


# --- settings -------------------------------------------------------------------------------------

def test_the_domain_is_stored_lowercased_and_the_defaults_front_the_first_gateways_api():
    proxy = settings(tls_proxy={**INTERNAL, "domain": "Hermes.Test"}).tls_proxy
    assert (proxy.domain, proxy.ca, proxy.upstream, proxy.port, proxy.gateway) == ("hermes.test", "internal", "api",
                                                                                    443, None)
    assert not HostSettings().tls_proxy.enabled


@pytest.mark.parametrize(("value", "message"), [
    ("https://hermes.example.org", "has a scheme"),
    ("hermes.example.org:8443", "has a port: set tls_proxy.port instead"),
    ("hermes.example.org/v1", "has a path"),
    ("203.0.113.7", "is an IP address"),
    ("[2001:db8::1]", "is an IP address"),
    ("*.example.org", "is a wildcard"),
    ("hermes.example.org.", "ends with a dot"),
    ("bücher.example.org", "not in ASCII"),
    ("localhost", "is not a DNS name"),
    ("-hermes.example.org", "is not a DNS name"),
    ("hermes..example.org", "is not a DNS name"),
    ("hermes_1.example.org", "is not a DNS name"),
    ("hermes.test {\n", "is not a DNS name"),
    ("a" * 64 + ".example.org", "is not a DNS name"),
    ("host.10", "ends in a number"),
])
def test_a_domain_that_is_not_a_host_name_is_refused_with_the_setting_and_the_fix(value, message):
    with pytest.raises(ValueError, match="tls_proxy.domain") as error:
        check_domain_name(value, "tls_proxy.domain")
    assert message in str(error.value) and "Fix:" in str(error.value)


@pytest.mark.parametrize(("section", "message"), [
    ({"enabled": True}, "tls_proxy.domain is unset"),
    ({"enabled": True, "domain": "hermes.test"}, "is under .test, for which no public CA issues certificates"),
    ({"enabled": True, "domain": "hermes.example.org", "port": 80}, "ACME's HTTP challenge needs"),
    ({**ACME, "acme_email": "ops at example.org"}, "tls_proxy.acme_email 'ops at example.org' is not an e-mail"),
    ({**ACME, "acme_email": "{ops}@example.org"}, "is not an e-mail address"),
    ({**ACME, "acme_email": "ops@localhost"}, "does not end in a domain name"),
    ({**INTERNAL, "allow_from": ["10.0.0.1/8"]}, "tls_proxy.allow_from[0]"),
    ({**INTERNAL, "gateway": "work"}, "tls_proxy.gateway is 'work', which is not a profile. Fix: one of hermes"),
    ({**INTERNAL, "upstream": "dashboard"}, "dashboard.enabled is false"),
])
def test_settings_that_make_no_sense_are_refused_before_any_connection(section, message):
    with pytest.raises(SettingsError) as error:
        settings(tls_proxy=section)
    assert message in str(error.value)


def test_a_proxied_dashboard_must_keep_its_basic_auth_and_the_password_hash_is_never_shown():
    with pytest.raises(SettingsError, match="has no basic auth: the proxy would put an open dashboard") as error:
        settings(gateways=[{"name": "hermes", "dashboard": {"enabled": True}}],
                 tls_proxy={**INTERNAL, "upstream": "dashboard"})
    assert "$2b$" not in str(error.value)
    ok = settings(gateways=[{"name": "hermes", "dashboard": DASHBOARD}], tls_proxy={**INTERNAL, "upstream": "dashboard"})
    assert ok.tls_proxy.upstream == "dashboard"


@pytest.mark.parametrize(("sections", "message"), [
    ({"gateways": [{"name": "hermes", "api": {"port": 443}}], "tls_proxy": INTERNAL},
     "tls_proxy.port is 443, already used by gateways[hermes].api.port"),
    ({"gateways": [{"name": "hermes", "api": {"port": 80}}], "tls_proxy": ACME},
     "tls_proxy (port 80, ACME's HTTP challenge) is 80, already used by gateways[hermes].api.port"),
])
def test_the_proxy_ports_are_claimed_like_published_ones(sections, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        settings(**sections)
    # The internal CA needs no port 80: a gateway may use it.
    assert settings(gateways=[{"name": "hermes", "api": {"port": 80}}], tls_proxy=INTERNAL).tls_proxy.enabled


# --- the Caddyfile --------------------------------------------------------------------------------

def test_the_internal_ca_site_proxies_to_loopback_without_port_80_or_hsts():
    plan = proxy_plan()
    text = plan.caddyfile.content
    assert plan.caddyfile.path == "/etc/caddy/Caddyfile" and text.startswith(tls.MARKER)
    assert "\thermes.test {\n" not in text and "\nhermes.test {\n\ttls internal\n" in text
    assert "\treverse_proxy 127.0.0.1:8642\n" in text
    assert "\tadmin unix//var/lib/caddy/admin.sock\n" in text  # not TCP 127.0.0.1:2019, which every local user reaches
    assert "\tauto_https disable_redirects\n" in text  # caddy never listens on :80 for it
    assert "\t\tprotocols h1 h2\n" in text  # no HTTP/3: no UDP listener the firewall keeps closed
    assert "Strict-Transport-Security" not in text and "\t\t-Server\n" in text
    assert (plan.url, plan.upstream, plan.warnings) == ("https://hermes.test", "127.0.0.1:8642", ())
    assert tls.ROOT_CERT == "/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt"


def test_an_acme_site_gets_hsts_its_contact_and_caddys_automatic_https():
    text = proxy_plan(tls_proxy=ACME).caddyfile.content
    assert "\temail ops@example.org\n" in text and "tls internal" not in text and "auto_https" not in text
    assert '\t\tStrict-Transport-Security "max-age=31536000"\n' in text
    assert "\nhermes.example.org {\n" in text
    port = proxy_plan(tls_proxy={**ACME, "port": 8443, "acme_email": None})
    assert "\nhermes.example.org:8443 {\n" in port.caddyfile.content and "email" not in port.caddyfile.content
    assert port.url == "https://hermes.example.org:8443"


def test_the_named_gateway_or_its_dashboard_is_fronted_and_no_secret_is_in_the_file():
    gateways = [{"name": "hermes", "api": {"key": SECRET_KEY}},
                {"name": "work", "api": {"port": 8650, "publish_addresses": ["::1"]}, "dashboard": {**DASHBOARD, "port": 9200}}]
    api = proxy_plan(gateways=gateways, tls_proxy={**INTERNAL, "gateway": "work"})
    assert api.upstream == "[::1]:8650" and "reverse_proxy [::1]:8650" in api.caddyfile.content
    dashboard = proxy_plan(gateways=gateways, tls_proxy={**INTERNAL, "gateway": "work", "upstream": "dashboard"})
    assert dashboard.upstream == "127.0.0.1:9200"
    assert "gateways[work].dashboard on 127.0.0.1:9200" in dashboard.caddyfile.content
    for plan in (api, dashboard, proxy_plan(gateways=gateways)):
        assert SECRET_KEY not in plan.caddyfile.content and "$2b$" not in plan.caddyfile.content


def test_a_gateway_published_beyond_loopback_is_reached_on_loopback_and_warned_about():
    public = [{"name": "hermes", "api": {"publish_addresses": ["0.0.0.0"], "allow_public": True}}]
    plan = proxy_plan(gateways=public)
    assert plan.upstream == "127.0.0.1:8642"
    assert plan.warnings == (
        "tls_proxy serves https://hermes.test from gateways[hermes].api, which is also published on 0.0.0.0:8642: "
        "whoever reaches that port walks around the proxy (plain HTTP, the key in clear on the wire). Fix: publish "
        "it on 127.0.0.1 only (gateways[hermes].api.publish_addresses unset, allow_public false) and let clients "
        "use the proxy",)
    # A companion's bridge address is not a way around it.
    hub = proxy_plan(companions=[{"name": "hub", "image": "example/hub:1.0", "topology": "host-gateway"}])
    assert hub.warnings == () and hub.upstream == "127.0.0.1:8642"


# setup.sh puts Debian's caddy binary here (the package itself would start a web server on :80).
CADDY = shutil.which("caddy") or next((p for p in ("/usr/local/lib/hermes-infra/caddy",) if Path(p).exists()), None)


@pytest.mark.skipif(CADDY is None, reason="no caddy binary here: run ./setup.sh")
def test_caddy_itself_accepts_every_caddyfile_and_refuses_a_broken_one(tmp_path):
    """Debian's caddy (2.6.2 in Debian 12 and 13), as the deploy's check runs it."""
    broken = proxy_plan().caddyfile.content.replace("reverse_proxy", "reverse_proxyy")
    home, temp = tmp_path / "home", tmp_path / "temp"
    home.mkdir(), temp.mkdir()
    for section in (INTERNAL, ACME, {**ACME, "port": 8443, "acme_email": None}, None):
        path = tmp_path / "Caddyfile"
        path.write_text(proxy_plan(tls_proxy=section).caddyfile.content if section else broken)
        checked = subprocess.run(["bash", "-c", ops.caddy_accepts(str(path))], capture_output=True, text=True,
                                 env={"PATH": f"{Path(CADDY).parent}:/usr/bin:/bin", "HOME": str(home),
                                      "TMPDIR": str(temp)})
        if section is None:
            assert checked.returncode != 0 and "caddy refuses the new Caddyfile" in checked.stderr
            assert "unrecognized directive: reverse_proxyy" in checked.stderr
        else:
            assert checked.returncode == 0, checked.stderr[-2000:]
        # The internal CA caddy validate sets up went to the throwaway HOME, and that is gone.
        assert list(home.iterdir()) == [] and list(temp.iterdir()) == []


# --- the deploy -----------------------------------------------------------------------------------

def run_deploy(plan, monkeypatch):
    calls = []
    monkeypatch.setattr(ops, "root_file", lambda **kw: calls.append(
        ("file", kw["file"].path, kw["file"].content_changed, kw["check"]("/stage/x"))))
    monkeypatch.setattr(ops, "proxy_running", lambda **kw: calls.append(("running", kw["caddyfile_changed"])))
    with ctx_host.use(FakeHost()):
        ops.tls_proxy._inner(plan, plan_for(settings(), fresh()).writer)
    return calls


def test_fresh_host_gets_the_checked_file_then_caddy_started(monkeypatch):
    plan = proxy_plan()
    calls = run_deploy(plan, monkeypatch)  # caddy itself comes before: the apt-run test below
    assert [c[0] for c in calls] == ["file", "running"]
    assert calls[0][:3] == ("file", "/etc/caddy/Caddyfile", True) and calls[1] == ("running", True)
    check = calls[0][3]
    assert check.startswith("( d=$(mktemp -d)") and check.endswith("exit $rc )")  # a subshell: root_file runs it in { }
    assert "HOME=$d XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config caddy validate --config /stage/x --adapter caddyfile" \
        in check
    assert run_op(PROXY_RUNNING, plan=plan, caddyfile_changed=True).commands == [
        "systemctl enable --quiet caddy.service", f"systemctl restart caddy.service || {ops.FAILED_START}"]


def test_the_check_keeps_the_old_file_when_caddy_refuses_the_new_one():
    plan = proxy_plan()
    result = run_op(file_ops.root_file, file=plan.caddyfile, writer=plan_for(settings(), fresh()).writer,
                    check=ops.caddy_accepts)
    install = result.commands[-1]
    assert install.startswith("{ ( d=$(mktemp -d)") and "; } && install -m 0644 -o 0 -g 0 -T" in install
    assert install.index("caddy validate") < install.index("mv -fT")


def test_converged_host_changes_nothing_and_drift_is_rewritten_and_reloaded(monkeypatch):
    host_settings = settings(tls_proxy=INTERNAL)
    facts = converged_facts(host_settings)
    plan = plan_for(host_settings, facts).tls_proxy
    assert not plan.caddyfile.content_changed and not plan.caddyfile.meta_changed and not plan.needs_start
    assert run_deploy(plan, monkeypatch) == [("file", tls.CADDYFILE, False, ops.caddy_accepts("/stage/x")),
                                             ("running", False)]
    assert run_op(PROXY_RUNNING, plan=plan).commands == []
    facts.state.root_files[tls.CADDYFILE] = root_file(plan.caddyfile.content.replace("-Server", "Server hermes"))
    drifted = plan_for(host_settings, facts).tls_proxy
    assert drifted.caddyfile.content_changed and drifted.warnings == ()  # still ours: no warning
    assert run_op(PROXY_RUNNING, plan=drifted, caddyfile_changed=True).commands == [
        f"systemctl reload caddy.service || systemctl restart caddy.service || {ops.FAILED_START}"]
    stopped = plan_for(host_settings, converged_facts(host_settings, caddy_active=False)).tls_proxy
    assert run_op(PROXY_RUNNING, plan=stopped).commands == [f"systemctl restart caddy.service || {ops.FAILED_START}"]


def test_an_operators_own_caddyfile_is_backed_up_before_it_is_replaced_and_named_in_a_warning():
    facts = fresh(packages={tls.PACKAGE: "installed"}, caddy_enabled=True, caddy_active=True,
                  root_files={tls.CADDYFILE: root_file("example.org {\n\tfile_server\n}\n")})
    plan = proxy_plan(facts)
    assert plan.warnings == (f"{tls.CADDYFILE} on this host is not hermes-infra's: it is replaced, and the previous one "
                             "kept in /var/backups/hermes-infra. Fix: nothing, unless caddy served other sites there: "
                             "caddy serves only tls_proxy.domain now",)
    commands = run_op(file_ops.root_file, file=plan.caddyfile, writer=plan_for(settings(), facts).writer).commands
    assert "cp -a /etc/caddy/Caddyfile /var/backups/hermes-infra/etc__caddy__Caddyfile." in commands[0]


def test_turned_off_hermes_infras_file_goes_and_caddy_stops_but_an_operators_file_is_left(monkeypatch):
    facts = converged_facts(settings(tls_proxy=INTERNAL))
    plan = plan_for(settings(), facts).tls_proxy
    assert not plan.enabled and plan.present and plan.caddyfile is None
    assert run_deploy(plan, monkeypatch) == [("running", False)]
    assert run_op(PROXY_RUNNING, plan=plan).commands == [
        "systemctl disable --now --quiet caddy.service 2>/dev/null || true", "rm -f /etc/caddy/Caddyfile"]
    facts.state.root_files[tls.CADDYFILE] = root_file("example.org {\n\tfile_server\n}\n")
    theirs = plan_for(settings(), facts).tls_proxy
    assert not theirs.present and run_deploy(theirs, monkeypatch) == []
    assert run_deploy(plan_for(settings(), fresh()).tls_proxy, monkeypatch) == []  # never had one


def test_caddy_comes_in_the_same_apt_run_as_unattended_upgrades_before_either_files(monkeypatch):
    calls = []
    monkeypatch.setattr(deploy.sshd_ops, "ssh_hardening", lambda *args, **kw: None)
    monkeypatch.setattr(deploy.docker_engine, "apt_installed", lambda **kw: calls.append(("apt", kw["packages"], kw["name"])))
    monkeypatch.setattr(deploy.unattended_ops, "unattended_upgrades", lambda plan, writer: calls.append(
        ("updates", None)))
    monkeypatch.setattr(deploy.tls_ops, "tls_proxy", lambda plan, writer: calls.append(("proxy", None)))
    deploy.hardening(plan_for(settings(unattended_upgrades={"enabled": True}, tls_proxy=INTERNAL), fresh()))
    assert calls == [("apt", ("unattended-upgrades", "caddy"),
                      "Install unattended-upgrades, caddy (automatic security updates, TLS proxy)"),
                     ("updates", None), ("proxy", None)]
    calls.clear()
    deploy.hardening(plan_for(settings(tls_proxy=INTERNAL), fresh(packages={"unattended-upgrades": "installed"})))
    assert calls[0] == ("apt", ("caddy",), "Install caddy (TLS proxy)")
    calls.clear()
    deploy.hardening(plan_for(settings(tls_proxy=INTERNAL), converged_facts(settings(tls_proxy=INTERNAL))))
    assert [c[0] for c in calls] == ["updates", "proxy"]  # nothing to install
    calls.clear()
    both = settings(unattended_upgrades={"enabled": True}, tls_proxy=INTERNAL)
    deploy.hardening(plan_for(both, converged_facts(both, packages={tls.PACKAGE: "installed",
                                                                    "unattended-upgrades": "installed"})))
    assert [c[0] for c in calls] == ["updates", "proxy"]  # both installed: no apt run


def test_the_package_the_file_and_the_unit_are_in_the_one_batched_read():
    request = fact_request(settings())
    assert tls.PACKAGE in request.packages and tls.CADDYFILE in request.root_files
    assert "caddy.service" in hostfacts.state_command(request)
    state = hostfacts.parse_state(["@@hermes-infra-section services", "Id=caddy.service", "UnitFileState=enabled",
                                   "ActiveState=active", "", "Id=docker.service", "UnitFileState=enabled",
                                   "ActiveState=inactive"])
    assert (state.caddy_enabled, state.caddy_active, state.docker_active) == (True, True, False)


# --- the firewall ---------------------------------------------------------------------------------

def fw_plan(**sections) -> fw.FirewallPlan:
    return plan_for(settings(firewall={"enabled": True}, **sections),
                    fresh(firewall=hostfacts._firewall(SSH_FACTS))).firewall


def test_the_firewall_opens_the_proxy_port_on_input_only_and_80_only_for_acme():
    internal = fw_plan(tls_proxy=INTERNAL)
    inputs = internal.text[:internal.text.index("chain forward")]
    published = internal.text[internal.text.index("chain published"):]
    assert "        tcp dport 443 accept\n" in inputs and "dport 80 " not in internal.text
    assert "443" not in published  # a host process: never forwarded to a container
    acme = fw_plan(tls_proxy={**ACME, "allow_from": ["203.0.113.0/24", "2001:db8::/32"]})
    assert "ip saddr 203.0.113.0/24 tcp dport 443 accept" in acme.text
    assert "ip6 saddr 2001:db8::/32 tcp dport 443 accept" in acme.text
    assert "        tcp dport 80 accept\n" in acme.text  # ACME's HTTP challenge, from anywhere
    # Off, the rules (and their digest: a host already converged reloads nothing) are as before.
    assert fw_plan(tls_proxy={"enabled": False, "domain": "hermes.test"}).digest == fw_plan().digest


@pytest.mark.skipif(not shutil.which("nft"), reason="nft is not installed here")
def test_nft_itself_accepts_the_ruleset_with_the_proxy_ports(tmp_path):
    path = tmp_path / "firewall.nft"
    path.write_text(fw_plan(tls_proxy={**ACME, "allow_from": ["203.0.113.0/24", "2001:db8::/32"]}).text)
    checked = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    if checked.returncode != 0 and "not permitted" in checked.stderr.lower():
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert checked.returncode == 0, checked.stderr


def test_ufw_is_told_about_the_proxy_ports_with_or_without_hermes_infras_firewall():
    ufw = hostfacts._firewall([*SSH_FACTS, "ufw installed active yes"])
    beside = plan_for(settings(firewall={"enabled": True}, tls_proxy=ACME), fresh(firewall=ufw)).firewall
    assert "`ufw allow 443/tcp`, `ufw allow 80/tcp`" in beside.warnings[-1]
    alone = proxy_plan(fresh(firewall=ufw), tls_proxy=ACME)
    assert alone.warnings == ("ufw is active on this host: it filters caddy's ports like any other, and hermes-infra "
                              "does not change ufw. Fix: `ufw allow 443/tcp`, `ufw allow 80/tcp` (or set "
                              "firewall.enabled: true and let hermes-infra's table open them)",)


# --- the controls ---------------------------------------------------------------------------------

PROXIED = HostSettings(tls_proxy=INTERNAL)
CURL = "curl -sS -o /dev/null"


def proxy_host(status="200", rc=0, error="", cert=Out(0, "1234\n"), enabled="enabled", active="active",
               caddyfile=None):
    return CheckHost({
        "command -v curl": Out(0, "/usr/bin/curl\n"),
        "stat -c %s": cert,
        CURL: Out(rc, status, error),
        "systemctl is-enabled caddy.service": Out(0, enabled + "\n"),
        "systemctl is-active caddy.service": Out(0, active + "\n"),
        "cat /etc/caddy/Caddyfile": Out(0, tls.caddyfile_text(PROXIED) if caddyfile is None else caddyfile),
    })


def test_the_tls_controls_pass_on_a_host_as_deployed_and_exist_only_where_it_is_on():
    host = proxy_host()
    ctx = context(PROXIED, record=gateway_record(), host=host)
    for control_id in ("HI-TLS-001", "HI-TLS-002", "HI-TLS-003"):
        result = outcome(control_id, ctx)
        assert result.status == "passed", (control_id, result.message)
    probe = next(c for c in host.commands if c.startswith(CURL))
    assert ("--resolve hermes.test:443:127.0.0.1 --cacert /var/lib/caddy/.local/share/caddy/pki/authorities/local/"
            "root.crt https://hermes.test:443/health") in probe and "--proto =https" in probe
    assert not [c for c, _ in instances(HostSettings()) if c.id.startswith("HI-TLS")]
    acme = HostSettings(tls_proxy=ACME)
    acme_host = proxy_host()
    assert outcome("HI-TLS-001", context(acme, host=acme_host)).status == "passed"
    assert "--cacert" not in next(c for c in acme_host.commands if c.startswith(CURL))  # the system's CAs


@pytest.mark.parametrize(("control_id", "host", "status", "message"), [
    ("HI-TLS-001", dict(rc=60, status="000", error="curl: (60) SSL certificate problem: unable to get local issuer"),
     "failed", "the certificate chain does not verify (curl: (60) SSL certificate problem"),
    ("HI-TLS-001", dict(rc=7, status="000"), "failed", "nothing accepts connections there"),
    ("HI-TLS-001", dict(status="502"), "failed", "answered 502; want 200 from the gateway's /health (502: the proxy "
                                                 "cannot reach the gateway)"),
    ("HI-TLS-001", dict(cert=Out(1, "", "stat: cannot statx: No such file or directory")), "failed",
     "root.crt does not exist: caddy never started its internal CA"),
    ("HI-TLS-001", dict(cert=Out(1, "", "stat: cannot statx: Permission denied")), "error", "run the check as root"),
    ("HI-TLS-003", dict(active="failed"), "failed", "caddy.service is enabled and failed; want enabled and active"),
    ("HI-TLS-003", dict(caddyfile="hermes.test {\n\treverse_proxy 127.0.0.1:8642\n}\n"), "failed",
     "/etc/caddy/Caddyfile is not the one these settings write"),
])
def test_proxy_drift_fails_the_matching_control(control_id, host, status, message):
    result = outcome(control_id, context(PROXIED, record=gateway_record(), host=proxy_host(**host)))
    assert result.status == status, result.message
    assert message in result.message


def test_a_fronted_port_published_beyond_loopback_fails_hi_tls_002_and_a_dashboard_must_answer_401():
    public = gateway_record(PortBindings={"8642/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8642"}]})
    result = outcome("HI-TLS-002", context(PROXIED, record=public, host=proxy_host()))
    assert result.status == "failed"
    assert result.message == "hermes's port 8642 is also published on 0.0.0.0:8642: the proxy can be walked around"
    dashboard = HostSettings(gateways=[{"name": "hermes", "dashboard": DASHBOARD}],
                             tls_proxy={**INTERNAL, "upstream": "dashboard"})
    open_door = outcome("HI-TLS-001", context(dashboard, host=proxy_host(status="200")))
    assert open_door.status == "failed" and "want 401 from the dashboard's basic auth" in open_door.message
    assert outcome("HI-TLS-001", context(dashboard, host=proxy_host(status="401"))).status == "passed"


def test_the_dry_run_shows_the_caddyfile_and_its_removal():
    from hermes_infra.plan.plandiff import plan_diff

    lines = plan_diff(plan_for(settings(tls_proxy=INTERNAL), fresh()))
    assert "+++ /etc/caddy/Caddyfile (planned)" in lines
    assert "/etc/caddy/Caddyfile: removed" in plan_diff(plan_for(settings(), converged_facts(settings(tls_proxy=INTERNAL))))
    assert not any("Caddyfile" in line for line in plan_diff(plan_for(settings(), fresh())))
