"""The host firewall (setting firewall): the ruleset text on a fresh, converged, drifted and hostile
host; the load that reverts itself unless a second, new SSH connection confirms it; the facts it
is planned from; its controls."""
from __future__ import annotations

import dataclasses
import hashlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import FunctionCommand
from pyinfra.context import ctx_host

from hermes_infra.host import hostfacts
from hermes_infra.host.hostfacts import HostState
from hermes_infra.operations import firewall as ops
from hermes_infra.plan import firewall as fw
from hermes_infra.plan.hostplan import PlanError
from hermes_infra.release import firewall_confirm
from hermes_infra.settings.loading import SettingsError
from hermes_infra.settings.schema import HostSettings
from tests.unit.hostfakes import FakeHost, fresh, plan_for, root_file, run_confirmed, run_op, settings
from tests.unit.test_checks_controls import Out, context, outcome
from tests.unit.test_checks_controls import FakeHost as CheckHost

# What the batched read prints on a host the deploy reached from 198.51.100.4 on port 22.
SSH_FACTS = ["ssh 198.51.100.4 40000 10.0.0.5 22", "sshd 0.0.0.0:22 [::]:22", "nft", "unit disabled"]
PUBLIC_API = {"name": "hermes", "api": {"port": 8643, "publish_addresses": ["0.0.0.0"], "allow_public": True}}


def on(**firewall):
    return {"enabled": True, **firewall}


def host_facts(lines=SSH_FACTS, **state):
    return fresh(firewall=hostfacts._firewall(lines), **state)


def fw_plan(facts=None, **sections):
    sections.setdefault("firewall", on())
    return plan_for(settings(**sections), facts or host_facts()).firewall


def listing_of(plan: fw.FirewallPlan, extra: str = "") -> str:
    """What `nft -s list table` prints, near enough: the marked table (nft reorders the rest)."""
    return f'table inet hermes_infra {{\n\tcomment "hermes-infra {plan.digest}"\n{extra}}}\n'


def converged_facts(host_settings, extra_listing: str = ""):
    """The host after a confirmed load of `host_settings`' ruleset."""
    plan = plan_for(host_settings, host_facts()).firewall
    listing = listing_of(plan)
    firewall = hostfacts._firewall(SSH_FACTS) | {"listing": listing + extra_listing, "unit_enabled": True}
    files = {fw.RULESET_PATH: root_file(plan.ruleset.content, "0600"), fw.UNIT_PATH: root_file(plan.unit.content),
             fw.LOADED_PATH: root_file(hashlib.sha256(listing.encode()).hexdigest() + "\n")}
    return fresh(firewall=firewall, root_files=files)


# --- the ruleset text ------------------------------------------------------------------------

def test_fresh_host_gets_default_deny_with_ssh_the_allowed_ports_and_icmp():
    plan = fw_plan(gateways=[PUBLIC_API], firewall=on(allow=[8643, {"port": 9000, "allow_from": ["203.0.113.0/24",
                                                                                               "2001:db8::/32"]}]))
    text = plan.text
    assert plan.needs_load and plan.ssh_ports == (22,) and plan.warnings == ()
    assert "type filter hook input priority -10; policy drop;" in text
    assert "type filter hook forward priority -10; policy accept;" in text
    for rule in ("ct state established,related accept", 'iifname "lo" accept', "tcp dport 22 accept",
                 "tcp dport 8643 accept", "ip saddr 203.0.113.0/24 tcp dport 9000 accept",
                 "ip6 saddr 2001:db8::/32 tcp dport 9000 accept", "icmpv6 type {", "nd-neighbor-solicit",
                 "ct status dnat jump published", "meta l4proto tcp ct original proto-dst 8643 accept",
                 "ip saddr 203.0.113.0/24 meta l4proto tcp ct original proto-dst 9000 accept",
                 'oifname "docker0" drop', 'oifname "br-*" drop'):
        assert rule in text, rule
    # Only our table is replaced, in one transaction; Docker's tables are never named.
    assert text.splitlines()[3:6] == ["table inet hermes_infra", "delete table inet hermes_infra",
                                      "table inet hermes_infra {"]
    assert "flush ruleset" not in text and "DOCKER" not in text and "ip filter" not in text
    published = text[text.index("chain published"):]
    assert published.splitlines()[-3].strip() == "drop"
    assert f'comment "hermes-infra {plan.digest}"' in text


def test_the_unit_loads_before_docker_and_the_network():
    unit = fw_plan().unit.content
    assert "Before=network-pre.target docker.service shutdown.target" in unit
    assert "After=nftables.service" in unit  # Debian's own loader flushes the whole ruleset
    assert "ExecStart=/usr/sbin/nft -f /etc/hermes-infra/firewall.nft" in unit
    assert "DefaultDependencies=no" in unit and "WantedBy=sysinit.target" in unit
    assert "flush" not in unit


@pytest.mark.skipif(not shutil.which("nft"), reason="nft is not installed here")
def test_nft_itself_accepts_the_ruleset(tmp_path):
    plan = fw_plan(gateways=[PUBLIC_API, {"name": "work", "api": {"port": 8650}}],
                   companions=[{"name": "hub", "image": "example/hub:1.0", "gateway": "work"}],
                   firewall=on(allow=[8643, {"port": 5353, "protocol": "udp", "allow_from": ["10.0.0.0/8", "fd00::/8"]}],
                               ssh_allow_from=["198.51.100.0/24", "2001:db8::/32"]))
    path = tmp_path / "firewall.nft"
    path.write_text(plan.text)
    checked = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    if checked.returncode != 0 and "not permitted" in checked.stderr.lower():
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert checked.returncode == 0, checked.stderr


def test_bridge_published_ports_are_open_to_containers_only_and_need_no_allow():
    plan = fw_plan(companions=[{"name": "hub", "image": "example/hub:1.0"}])
    assert 'iifname "docker0" ip daddr 172.17.0.1 tcp dport 8642 accept' in plan.text
    assert 'iifname "br-*" ip daddr 172.17.0.1 tcp dport 8642 accept' in plan.text
    assert "        tcp dport 8642 accept\n" not in plan.text and "8642" not in plan.text[plan.text.index("chain published"):]
    assert plan.warnings == ()


def test_a_public_port_that_is_not_allowed_is_a_warning_not_an_open_port():
    plan = fw_plan(gateways=[PUBLIC_API])
    assert "8643" not in plan.text
    assert plan.warnings == (
        "gateways[hermes].api is published on 0.0.0.0:8643/tcp, which the firewall does not allow: other "
        "machines cannot reach it. Fix: add {port: 8643} to firewall.allow (with allow_from to narrow it), or "
        "publish it on 127.0.0.1",)
    dashboard = {"name": "hermes", "dashboard": {"enabled": True, "publish_address": "192.168.1.5",
                                                 "allow_public": True, "basic_auth_username": "ops",
                                                 "basic_auth_password_hash": "$2b$12$abcdefghijklmnopqrstuv"}}
    assert [w.split(" is published")[0] for w in fw_plan(gateways=[dashboard]).warnings] == [
        "gateways[hermes].dashboard"]
    assert fw_plan(gateways=[PUBLIC_API], firewall=on(allow=[8643])).warnings == ()


def test_the_port_the_deploy_arrived_on_is_always_allowed():
    # Behind a NAT or a forward: sshd listens on 22, this connection arrived on 2222.
    facts = host_facts(["ssh 10.0.2.2 51000 10.0.2.15 2222", "sshd 0.0.0.0:22", "nft"])
    assert fw_plan(facts).ssh_ports == (22, 2222)
    assert "tcp dport { 22, 2222 } accept" in fw_plan(facts).text
    # Set: the setting and the connection's port, never only the setting.
    assert fw_plan(facts, firewall=on(ssh_port=22)).ssh_ports == (22, 2222)
    # Under sudo the walk up the parents found nothing, but sshd's sockets still say.
    assert fw_plan(host_facts(["ssh ", "sshd 0.0.0.0:2200", "nft"])).ssh_ports == (2200,)


def test_converged_host_changes_nothing():
    host_settings = settings(firewall=on(allow=[8643]), gateways=[PUBLIC_API])
    plan = plan_for(host_settings, converged_facts(host_settings)).firewall
    assert not plan.needs_load
    assert not run_op(ops.rules_loaded, plan, plan_for(host_settings, host_facts()).writer, confirm=None).changed
    assert not plan.ruleset.content_changed and not plan.unit.content_changed
    assert not run_op(ops.boot_unit, plan).changed


def test_drifted_host_is_reloaded():
    host_settings = settings(firewall=on(allow=[8643]), gateways=[PUBLIC_API])
    writer = plan_for(host_settings, host_facts()).writer
    # A rule added by hand inside our table: the listing is not the one recorded at the last load.
    edited = plan_for(host_settings, converged_facts(host_settings, extra_listing="\tchain x {\n\t}\n")).firewall
    assert edited.needs_load and run_op(ops.rules_loaded, edited, writer, confirm=None).functions
    # The settings changed: a new digest.
    changed = plan_for(settings(firewall=on(allow=[8643, 9000]), gateways=[PUBLIC_API]),
                       converged_facts(host_settings)).firewall
    assert changed.needs_load and changed.ruleset.content_changed
    # Someone else's table of that name (no hermes-infra comment) is replaced too.
    facts = converged_facts(host_settings)
    facts.state.firewall["listing"] = "table inet hermes_infra {\n}\n"
    assert plan_for(host_settings, facts).firewall.loaded_digest == "unmarked"
    assert plan_for(host_settings, facts).firewall.needs_load
    # The unit was disabled by hand: enabled again.
    facts = converged_facts(host_settings)
    facts.state.firewall["unit_enabled"] = False
    assert run_op(ops.boot_unit, plan_for(host_settings, facts).firewall).commands == [
        "systemctl daemon-reload && systemctl enable --quiet hermes-infra-firewall.service"]


def test_turned_off_everything_hermes_infra_installed_leaves_the_host():
    host_settings = settings(firewall=on())
    off = plan_for(settings(), converged_facts(host_settings)).firewall
    assert not off.enabled and off.table_loaded and set(off.present) == set(fw.PATHS)
    removed = run_op(ops.rules_loaded, off, plan_for(settings(), fresh()).writer, confirm=None).commands
    assert removed == ["{ systemctl stop hermes-infra-firewall-revert.timer 2>/dev/null; true; } && "
                       "/usr/sbin/nft delete table inet hermes_infra && rm -f /var/lib/hermes-infra/firewall.revert.nft"]
    unit = run_op(ops.boot_unit, off).commands
    assert unit == ["systemctl disable --quiet hermes-infra-firewall.service 2>/dev/null || true",
                    "rm -f /etc/hermes-infra/firewall.nft /etc/systemd/system/hermes-infra-firewall.service "
                    "/var/lib/hermes-infra/firewall.loaded /var/lib/hermes-infra/firewall.revert.nft && systemctl daemon-reload"]
    # A host that never had one: nothing to do, and no nftables installed for it.
    never = plan_for(settings(), host_facts()).firewall
    assert not never.table_loaded and not never.present
    assert not run_op(ops.rules_loaded, never, plan_for(settings(), fresh()).writer, confirm=None).changed


def test_the_dry_run_shows_the_ruleset_and_what_leaves():
    from hermes_infra.plan import plandiff

    host_settings = settings(firewall=on(allow=[8643]), gateways=[PUBLIC_API])
    lines = plandiff.plan_diff(plan_for(host_settings, host_facts()))
    assert f"+++ {fw.RULESET_PATH} (planned)" in lines and f"+++ {fw.UNIT_PATH} (planned)" in lines
    assert "+        tcp dport 8643 accept" in lines, lines
    off = plandiff.plan_diff(plan_for(settings(gateways=[PUBLIC_API]), converged_facts(host_settings)))
    assert [line for line in off if "firewall" in line] == [f"{path}: removed" for path in fw.PATHS]


def test_the_default_settings_leave_the_firewall_off():
    assert HostSettings().firewall.enabled is False


# --- hostile: settings that would lock SSH out are refused before any change --------------

@pytest.mark.parametrize(("firewall", "lines", "message"), [
    (on(ssh_allow_from=["203.0.113.0/24"]), SSH_FACTS,
     "firewall.ssh_allow_from is ['203.0.113.0/24'], which does not contain 198.51.100.4, the address this deploy "
     "connects from: the rules would lock it (and you) out. Nothing was changed. Fix: add that address or its "
     "network to firewall.ssh_allow_from"),
    (on(ssh_allow_from=["203.0.113.0/24"]), ["ssh ", "sshd 0.0.0.0:22", "nft"],
     "the host did not say which address this deploy connects from"),
    (on(ssh_port=2200), SSH_FACTS, "firewall.ssh_port is 2200, but sshd on this host listens on 22"),
    (on(), ["ssh garbage", "sshd ", "nft"], "the host did not say which port SSH arrives on"),
])
def test_settings_that_would_lock_ssh_out_are_refused(firewall, lines, message):
    with pytest.raises(PlanError) as error:
        plan_for(settings(firewall=firewall), host_facts(lines))
    assert message in str(error.value)


def test_ssh_from_the_deploys_own_network_is_accepted():
    plan = fw_plan(firewall=on(ssh_allow_from=["198.51.100.0/24", "2001:db8::/32"]))
    assert "ip saddr 198.51.100.0/24 tcp dport 22 accept" in plan.text
    assert "ip6 saddr 2001:db8::/32 tcp dport 22 accept" in plan.text
    assert "        tcp dport 22 accept" not in plan.text


@pytest.mark.parametrize(("firewall", "message"), [
    ({"allow": [8643, {"port": 8643}]}, "firewall.allow[1] opens tcp 8643 a second time"),
    ({"allow": [{"port": 9000, "allow_from": ["10.0.0.1/8"]}]}, "has host bits set"),
    ({"allow": [{"port": 9000, "allow_from": ["example.com"]}]}, "is not an IP address or network"),
    ({"ssh_allow_from": ["0177.0.0.1"]}, "is not an IP address or network"),
    ({"allow": [0]}, "firewall.allow.0.port"),
    ({"confirm_seconds": 5}, "firewall.confirm_seconds"),
])
def test_bad_firewall_settings_are_refused_with_the_setting_named(firewall, message):
    with pytest.raises(SettingsError) as error:
        settings(firewall=firewall)
    assert message in str(error.value).replace("firewall.allow[0].port", "firewall.allow.0.port")


# --- the load that reverts itself unless confirmed ------------------------------------------

def execute(plan, confirm, sudo=None):
    return run_confirmed(ops.rules_loaded, plan, confirm, sudo)


def test_a_new_ruleset_is_checked_then_armed_then_loaded_then_confirmed_then_persisted():
    plan = fw_plan(firewall=on(confirm_seconds=45))
    calls = []

    def confirm(state, host, seconds):
        calls.append(seconds)
        return None

    done, host, ok = execute(plan, confirm)
    assert ok and calls == [45] and host.ran == []
    # Staged where only root reads it, then judged by nft before anything changes.
    assert done[0].endswith("/.hermes-infra-upload && chmod 0700 /root/.hermes-infra-upload") and done[1] == "upload"
    assert done[2].startswith("/usr/sbin/nft -c -f /var/lib/hermes-infra/stage/")
    armed = done[3]
    assert armed.index("/usr/sbin/nft -s list table inet hermes_infra") < armed.index(
        "systemd-run --quiet --unit=hermes-infra-firewall-revert --on-active=45 /usr/sbin/nft -f "
        "/var/lib/hermes-infra/firewall.revert.nft") < armed.index("&& /usr/sbin/nft -f /var/lib/hermes-infra/stage/")
    # A revert already pending keeps its saved (last good) table.
    assert "if systemctl is-active --quiet hermes-infra-firewall-revert.timer && [ -s " in armed
    assert done[4] == "confirm"
    assert done[5].startswith("systemctl stop hermes-infra-firewall-revert.timer && /usr/sbin/nft -s list table inet "
                              "hermes_infra | sha256sum")
    assert len(done) == 6


def test_a_failed_confirmation_leaves_the_revert_to_fire_and_fails_the_deploy(caplog):
    plan = fw_plan()
    done, host, ok = execute(plan, lambda state, host, seconds: "NoValidConnectionsError: port 22 refused",
                             sudo={"_sudo": True, "_sudo_password": "not-shown-anywhere", "_timeout": 5})
    assert not ok and done[-1] == "confirm"
    # Never cancelled, never persisted (the disarm is never reached); started now as well.
    assert not any("systemctl stop hermes-infra-firewall-revert.timer &&" in c for c in done)
    assert host.ran == ["systemctl start --no-block hermes-infra-firewall-revert.service"]
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "a second SSH connection failed (NoValidConnectionsError: port 22 refused)" in message
    assert "restores the previous rules within 60 s" in message and "nothing was persisted" in message
    assert "not-shown-anywhere" not in message


def namespace_works() -> bool:
    if not (shutil.which("nft") and shutil.which("unshare")):
        return False
    return subprocess.run(["unshare", "-rn", "nft", "list", "tables"], capture_output=True).returncode == 0


@pytest.mark.skipif(not namespace_works(), reason="needs nft and unprivileged network namespaces")
def test_arm_load_and_revert_for_real_in_a_private_network_namespace(tmp_path, monkeypatch):
    """The shell the operation sends, run by sh with nft in a network namespace of its own:
    systemctl and systemd-run are stand-ins that record how they were called."""
    monkeypatch.setattr(fw, "REVERT_PATH", str(tmp_path / "state" / "firewall.revert.nft"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text('#!/bin/sh\necho "systemctl $*" >> "$CALLS"\n'
                                       '[ "$1" = is-active ] && exit "${ACTIVE:-3}"; exit 0\n')
    (bin_dir / "systemd-run").write_text('#!/bin/sh\necho "systemd-run $*" >> "$CALLS"\n')
    for tool in ("systemctl", "systemd-run"):
        (bin_dir / tool).chmod(0o755)
    old = fw_plan(firewall=on(allow=[8643]))
    new = fw_plan(firewall=on(allow=[9000]))
    (tmp_path / "old.nft").write_text(old.text)
    (tmp_path / "new.nft").write_text(new.text)
    revert = fw.REVERT_PATH
    script = "; ".join([
        "set -e",
        # A fresh host: no table yet. Armed, loaded, then the timer "fires": no table again.
        f"{ops.arm_revert_command(30)} && {ops.load_command(str(tmp_path / 'new.nft'))}",
        "nft -s list table inet hermes_infra | grep -q 'dport 9000'",
        f"/usr/sbin/nft -f {revert}",
        "! nft list table inet hermes_infra >/dev/null 2>&1",
        # A host with the old rules: the revert brings exactly those back.
        f"/usr/sbin/nft -f {tmp_path / 'old.nft'}",
        f"{ops.arm_revert_command(30)} && {ops.load_command(str(tmp_path / 'new.nft'))}",
        "nft -s list table inet hermes_infra | grep -q 'dport 9000'",
        f"/usr/sbin/nft -f {revert}",
        "nft -s list table inet hermes_infra | grep -q 'dport 8643'",
        "! nft -s list table inet hermes_infra | grep -q 'dport 9000'",
        # A revert still pending from an unconfirmed run: its saved (good) table is kept.
        f"/usr/sbin/nft -f {tmp_path / 'new.nft'}",
        f"ACTIVE=0 sh -c {shlex.quote(ops.arm_revert_command(30))}",
        f"/usr/sbin/nft -f {revert}",
        "nft -s list table inet hermes_infra | grep -q 'dport 8643'",
    ])
    calls = tmp_path / "calls"
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "CALLS": str(calls)}
    run = subprocess.run(["unshare", "-rn", "sh", "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"systemd-run --quiet --unit=hermes-infra-firewall-revert --on-active=30 /usr/sbin/nft -f {revert}" in \
        calls.read_text().splitlines()
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"


KERNEL_SETUP = r"""set -e
mount -t tmpfs none /run
mkdir -p /run/netns
ip netns add outside
ip netns add ctr
ip link set lo up
ip link add out0 type veth peer name out1
ip link set out1 netns outside
ip addr add 10.9.0.1/24 dev out0
ip link set out0 up
ip -n outside addr add 10.9.0.2/24 dev out1
ip -n outside link set out1 up
ip -n outside route add default via 10.9.0.1
ip link add docker0 type bridge
ip addr add 172.31.0.1/24 dev docker0
ip link set docker0 up
ip link add ctr0 type veth peer name ctr1
ip link set ctr0 master docker0
ip link set ctr0 up
ip link set ctr1 netns ctr
ip -n ctr addr add 172.31.0.2/24 dev ctr1
ip -n ctr link set ctr1 up
ip -n ctr route add default via 172.31.0.1
echo 1 > /proc/sys/net/ipv4/ip_forward
# What Docker's iptables rules do for `-p 8643:8000 -p 8644:8001`: DNAT in prerouting.
nft -f - <<'NFT'
table ip dockerlike {
    chain pre { type nat hook prerouting priority -100; tcp dport 8643 dnat to 172.31.0.2:8000; tcp dport 8644 dnat to 172.31.0.2:8001; }
}
NFT
servers=
trap 'kill $servers 2>/dev/null' EXIT
serve() { ns=$1; address=$2; port=$3
  ${ns:+nsenter --net=/run/netns/$ns} python3 -m http.server $port --bind $address >/dev/null 2>&1 &
  servers="$servers $!"; }
serve ctr 172.31.0.2 8000; serve ctr 172.31.0.2 8001; serve outside 10.9.0.2 9000
serve '' 10.9.0.1 22; serve '' 0.0.0.0 7000; serve '' 172.31.0.1 8642
ready() { n=0; until ${1:+nsenter --net=/run/netns/$1} curl -s -o /dev/null --max-time 1 "$2"; do
  n=$((n + 1)); [ $n -lt 150 ] || { echo "not ready: $2" >&2; exit 9; }; sleep 0.2; done; }
ready '' http://172.31.0.2:8000/; ready '' http://172.31.0.2:8001/; ready ctr http://10.9.0.2:9000/
ready '' http://10.9.0.1:22/; ready '' http://10.9.0.1:7000/; ready '' http://172.31.0.1:8642/
"""
# (name, network namespace the client runs in, URL) and the answer wanted with the rules loaded.
KERNEL_PROBES = [
    ("published and allowed from this network", "outside", "http://10.9.0.1:8643/", "200"),
    ("published, allowed from another network only", "outside", "http://10.9.0.1:8644/", "000"),
    ("routed straight to the container", "outside", "http://172.31.0.2:8000/", "000"),
    ("SSH", "outside", "http://10.9.0.1:22/", "200"),
    ("a host service nobody listed", "outside", "http://10.9.0.1:7000/", "000"),
    ("container egress", "ctr", "http://10.9.0.2:9000/", "200"),
    ("container to the bridge-published API", "ctr", "http://172.31.0.1:8642/", "200"),
    ("container to another host port", "ctr", "http://172.31.0.1:7000/", "000"),
]


def kernel_namespaces_work() -> bool:
    if not all(shutil.which(tool) for tool in ("nft", "unshare", "ip", "nsenter", "curl")):
        return False
    probe = subprocess.run(["unshare", "-rnm", "sh", "-c", "mount -t tmpfs none /run && ip link add t0 type bridge"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not kernel_namespaces_work(), reason="needs nft, ip, nsenter, curl and user+network namespaces")
def test_the_kernel_filters_published_ports_as_planned(tmp_path):
    """The ruleset loaded into a real kernel (a private network namespace standing in for the
    host, one for the internet, one for a container behind a `docker0` bridge, Docker's DNAT
    rules copied): what passes and what is dropped, before and after."""
    # 8643 from the internet's own network; 8644 only from another one.
    plan = fw_plan(docker={"bridge_gateway_ip": "172.31.0.1"},
                   firewall=on(allow=[{"port": 8643, "allow_from": ["10.9.0.0/24"]},
                                      {"port": 8644, "allow_from": ["10.8.0.0/24"]}]),
                   gateways=[{"name": "hermes", "api": {"publish_addresses": ["127.0.0.1", "172.31.0.1"]}}])
    rules = tmp_path / "firewall.nft"
    rules.write_text(plan.text)
    probes = " ".join(
        f"( printf '%s\\n' \"$({'nsenter --net=/run/netns/' + ns + ' ' if ns else ''}curl -s -o /dev/null "
        f"-w '%{{http_code}}' --max-time 2 {url} || true)\" > {tmp_path}/after{index} ) & probes=\"$probes $!\";"
        for index, (_, ns, url, _) in enumerate(KERNEL_PROBES))
    script = KERNEL_SETUP + f"/usr/sbin/nft -f {rules}\nprobes=; {probes} wait $probes\n"
    run = subprocess.run(["unshare", "-rnm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    found = {name: (tmp_path / f"after{index}").read_text().strip() for index, (name, *_) in enumerate(KERNEL_PROBES)}
    assert found == {name: want for name, _, _, want in KERNEL_PROBES}


def test_the_confirmation_does_not_show_the_sudo_password():
    confirmation = ops.Confirmation(lambda *a: None, 60, {"_sudo_password": "hunter2-secret"})
    assert "hunter2" not in repr(FunctionCommand(ops.confirmed, (confirmation,), {}))


def test_the_ruleset_is_persisted_only_after_the_confirmed_load(monkeypatch):
    order = []
    monkeypatch.setattr(ops, "rules_loaded", lambda **kw: order.append("load+confirm"))
    monkeypatch.setattr(ops, "root_file", lambda **kw: order.append(kw["file"].path))
    monkeypatch.setattr(ops, "boot_unit", lambda **kw: order.append("enable"))
    installs = []
    plan = dataclasses.replace(fw_plan(gateways=[PUBLIC_API]), nft_installed=False)
    with ctx_host.use(FakeHost()):
        ops.firewall._inner(plan, None, None, install=lambda: installs.append("nftables"))
    assert installs == ["nftables"]
    assert order == ["load+confirm", fw.RULESET_PATH, fw.UNIT_PATH, "enable"]
    # Off on a host that never had it: no operation at all.
    order.clear()
    with ctx_host.use(FakeHost()):
        ops.firewall._inner(fw_plan(firewall={"enabled": False}), None, None, install=None)
    assert order == []


def test_the_second_connection_is_retried_within_the_window_then_given_up():
    now = [0.0]
    answers = iter(["refused", "refused", None])
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    assert firewall_confirm.new_connection(None, None, 60, attempt=lambda s, h: next(answers),
                                           clock=lambda: now[0], sleep=sleep) is None
    assert sleeps == [2, 2]
    now[0] = 0.0
    problem = firewall_confirm.new_connection(None, None, 20, attempt=lambda s, h: (now.__setitem__(0, now[0] + 3),
                                                                                   "timed out")[1],
                                              clock=lambda: now[0], sleep=sleep)
    assert problem == "timed out" and now[0] < 20 - 2


class FakeConnector:
    made: list = []

    def __init__(self, state, host):
        self.host, self.client = host, None
        FakeConnector.made.append(self)

    def connect(self):
        if self.host.data.get("ssh_port") == 1:
            raise OSError("Connection refused")
        self.client = type("Client", (), {"close": lambda _: setattr(self, "closed", True)})()

    def run_shell_command(self, command):
        return command.get_raw_value() == "true", []


def test_the_second_connection_is_a_new_connector_of_the_hosts_kind(monkeypatch):
    data = {"ssh_port": 22, "ssh_hostname": "203.0.113.10"}
    host = type("Host", (), {"connector": FakeConnector.__new__(FakeConnector), "name": "prod",
                             "data": type("Data", (), {"get": lambda _, k, d=None: data.get(k, d)})()})()
    FakeConnector.made.clear()
    assert firewall_confirm.attempt(None, host) is None
    assert len(FakeConnector.made) == 1 and FakeConnector.made[0].closed
    monkeypatch.setenv(firewall_confirm.TEST_PORT_ENV, "1")
    assert firewall_confirm.attempt(None, host) == "OSError: Connection refused"


# --- the facts ------------------------------------------------------------------------------

def test_the_facts_section_runs_in_the_background_and_parses_what_it_prints():
    command = hostfacts.state_command(hostfacts.StateRequest())
    assert "@@hermes-infra-section firewall" in command and "nft -s list table inet hermes_infra" in command
    listing = "table inet hermes_infra {\n}\n"
    import base64
    found = hostfacts._firewall(["ssh 2001:db8::7 40000 2001:db8::1 22", "sshd 0.0.0.0:22 [::]:22 *:2222",
                                 "nft", "listing " + base64.b64encode(listing.encode()).decode(), "unit enabled"])
    assert found == {"client": "2001:db8::7", "server_port": 22, "sshd_ports": (22, 2222), "nft": True,
                     "listing": listing, "unit_enabled": True, "ufw": "unknown"}
    # Nothing believed that does not parse: an address, a port out of range.
    for line in ("ssh 198.51.100.4; 40000 10.0.0.5 22", "ssh 198.51.100.4 40000 10.0.0.5 99999",
                 "ssh not-an-ip 1 2 22"):
        assert hostfacts._firewall([line])["server_port"] is None
    assert hostfacts._firewall(["nonft", "listing "])["listing"] is None
    state = hostfacts.parse_state(["@@hermes-infra-section firewall", *SSH_FACTS])
    assert state.firewall["client"] == "198.51.100.4" and HostState().firewall["client"] is None


def test_the_facts_script_walks_up_to_a_parent_with_ssh_connection(tmp_path):
    script = tmp_path / "fw.sh"
    script.write_text("; ".join(hostfacts.FIREWALL_READS) + "\n")
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SSH_CONNECTION": "198.51.100.4 40000 10.0.0.5 2200"}
    # As under sudo: the shell itself has no SSH_CONNECTION, its parent does.
    out = subprocess.run(["sh", "-c", f"env -u SSH_CONNECTION sh {script}; true"], env=env, capture_output=True,
                         text=True).stdout
    assert hostfacts._firewall(out.splitlines())["server_port"] == 2200


# --- the controls ---------------------------------------------------------------------------

def good_listing() -> str:
    plan = fw_plan()
    body = plan.text.split("table inet hermes_infra {", 1)[1]
    body = body.replace("priority -10", "priority filter - 10").replace("    ", "\t")
    return "table inet hermes_infra {" + body


def firewall_host(listing=None, enabled="enabled", ports="hermes\t127.0.0.1:8642->8642/tcp\n", saved=None):
    listing = good_listing() if listing is None else listing
    return CheckHost({
        "nft -s list table": Out(0, listing) if listing else Out(1, "", "Error: No such file or directory"),
        "systemctl is-enabled": Out(0 if enabled == "enabled" else 1, enabled + "\n"),
        "systemctl show -p Before": Out(0, "network-pre.target docker.service shutdown.target\n"),
        "cat /etc/hermes-infra/firewall.nft": Out(0, fw_plan().text if saved is None else saved),
        "docker ps --format": Out(0, ports),
    })


FIREWALL_ON = HostSettings(firewall={"enabled": True, "allow": [8643]})


def test_the_firewall_controls_pass_on_a_host_as_deployed():
    ctx = context(FIREWALL_ON, host=firewall_host(ports="hermes\t0.0.0.0:8643->8642/tcp, [::]:8643->8642/tcp\n"))
    for control_id in ("HI-FW-001", "HI-FW-002", "HI-FW-003", "HI-FW-004"):
        result = outcome(control_id, ctx)
        assert result.status == "passed", (control_id, result.message)
    assert outcome("HI-FW-004", ctx).message == "2 non-loopback published port(s), all in firewall.allow"


def test_the_firewall_controls_are_not_part_of_a_host_without_one():
    from hermes_infra.checks.runner import instances

    assert not [c for c, _ in instances(HostSettings()) if c.id.startswith("HI-FW")]
    assert [c.id for c, _ in instances(FIREWALL_ON) if c.id.startswith("HI-FW")] == [
        "HI-FW-001", "HI-FW-002", "HI-FW-003", "HI-FW-004"]


@pytest.mark.parametrize(("control_id", "host", "message"), [
    ("HI-FW-001", dict(listing=""), "no `table inet hermes_infra` is loaded"),
    ("HI-FW-001", dict(listing="table inet hermes_infra {\n}\n"), "is not hermes-infra's"),
    ("HI-FW-001", dict(listing=good_listing().replace("ct status dnat jump published", "")),
     "does not filter published ports before Docker's rules"),
    ("HI-FW-002", dict(listing=good_listing().replace("policy drop;", "policy accept;")),
     "the input chain's policy is not drop"),
    ("HI-FW-002", dict(listing=good_listing().replace('iifname "lo" accept', "")), 'iifname "lo" accept'),
    ("HI-FW-003", dict(enabled="disabled"), "hermes-infra-firewall.service is disabled"),
    ("HI-FW-003", dict(saved="table inet hermes_infra {\n\tcomment \"hermes-infra 0123456789abcdef\"\n}\n"),
     "holds rules 0123456789abcdef, the kernel has"),
    ("HI-FW-004", dict(ports="hermes\t0.0.0.0:9000->8642/tcp\nhub\t172.17.0.1:8642->8642/tcp\n"),
     "published outside firewall.allow: hermes 0.0.0.0:9000->8642/tcp"),
])
def test_firewall_drift_fails_the_matching_control(control_id, host, message):
    result = outcome(control_id, context(FIREWALL_ON, host=firewall_host(**host)))
    assert result.status == "failed", result.message
    assert message in result.message


def test_a_check_without_root_is_an_error_not_a_finding():
    host = CheckHost({"nft -s list table": Out(1, "", "Error: Operation not permitted")})
    assert outcome("HI-FW-001", context(FIREWALL_ON, host=host)).status == "error"


# --- ufw beside the setting (Ubuntu's images ship it) -----------------------------------------

UFW_FIXTURES = Path(__file__).parent / "fixtures" / "ubuntu_2404"


def ufw_read(tmp_path, conf: str | None, service: str = "active", installed: bool = True) -> list[str]:
    """The batched read's ufw line, run here against a recorded ufw.conf (None: no file), with a
    stand-in `ufw` and a `systemctl` that answers `service` (and logs that it was asked)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if installed:
        (bin_dir / "ufw").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path}/asked\necho {shlex.quote(service)}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    path = tmp_path / "ufw.conf"
    if conf is not None:
        path.write_text(conf)
    script = hostfacts.UFW_READ.replace(hostfacts.UFW_CONF, str(path))
    assert script != hostfacts.UFW_READ and "/usr/sbin/ufw" in script
    run = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def ufw_state(lines: list[str]) -> str:
    return hostfacts._firewall(lines)["ufw"]


@pytest.mark.skipif(shutil.which("ufw", path="/usr/sbin:/sbin") is not None, reason="ufw is installed here")
def test_the_ufw_read_on_recorded_ubuntu_configs(tmp_path):
    shipped, enabled = ((UFW_FIXTURES / name).read_text() for name in ("ufw.conf-shipped", "ufw.conf-enabled"))
    assert ufw_state(ufw_read(tmp_path, enabled)) == "active"
    assert ufw_state(ufw_read(tmp_path, enabled, service="inactive")) == "inactive"  # its stop flushed ufw's rules
    # As installed: ENABLED=no while ufw.service is active (a oneshot that loaded nothing); not even asked.
    (tmp_path / "asked").unlink()
    assert ufw_state(ufw_read(tmp_path, shipped)) == "inactive" and not (tmp_path / "asked").exists()
    assert ufw_state(ufw_read(tmp_path, None)) == "inactive"
    assert ufw_state(ufw_read(tmp_path, enabled.replace("ENABLED=yes", 'ENABLED="yes"').rstrip("\n"))) == "active"
    # The last assignment counts, as when ufw-init sources the file; a commented one does not.
    assert ufw_state(ufw_read(tmp_path, enabled + "ENABLED=no\n")) == "inactive"
    assert ufw_state(ufw_read(tmp_path, shipped + "# ENABLED=yes\n")) == "inactive"


def test_the_ufw_read_without_ufw_says_missing(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    if shutil.which("ufw", path="/usr/sbin:/sbin"):
        pytest.skip("ufw is installed here")
    assert ufw_read(other, (UFW_FIXTURES / "ufw.conf-enabled").read_text(), installed=False) == ["ufw missing"]
    assert ufw_state(["ufw missing"]) == "missing"


@pytest.mark.parametrize("line", [
    "ufw", "ufw installed", "ufw installed none yes", "ufw installed - yes", "ufw installed \x1b[31mactive yes",
    "ufw installed active yes; reboot", "ufw installed active maybe", "ufw installed active \"yes'",
    "ufw garbage active yes", "ufw \x00\x01\x02",
])
def test_hostile_or_garbled_ufw_output_is_not_believed(line):
    assert ufw_state([line]) == "unknown"
    plan = fw_plan(host_facts(SSH_FACTS + [line]))
    assert not [w for w in plan.warnings if "ufw" in w]


def test_no_ufw_line_at_all_is_unknown_not_inactive():
    assert ufw_state(SSH_FACTS) == "unknown" and HostState().firewall["ufw"] == "unknown"


UFW_ACTIVE = "ufw installed active yes"


def ufw_warnings(plan) -> list[str]:
    return [w for w in plan.warnings if "ufw" in w]


def test_fresh_host_with_ufw_active_is_told_what_each_filters_and_the_fix():
    host_settings = dict(gateways=[PUBLIC_API], metrics={"listen_address": "0.0.0.0", "allow_public": True},
                         firewall=on(allow=[8643, 9100, {"port": 5353, "protocol": "udp"}]))
    plan = fw_plan(host_facts(SSH_FACTS + [UFW_ACTIVE]), **host_settings)
    assert plan.needs_load  # a warning, not a refusal: the table is loaded as on any host
    [warning] = ufw_warnings(plan)
    assert warning.startswith("ufw is active on this host beside hermes-infra's nftables table (table inet "
                              "hermes_infra); a packet must pass both. ufw does not filter the ports Docker publishes")
    assert "a port firewall.allow opens that ufw does not allow stays closed, and SSH is only as open as ufw's " \
        "rules leave it" in warning
    # The fix: ufw off, or ufw told about SSH and the host's own ports (not 8643: Docker publishes it).
    assert "Fix: make hermes-infra's table the one firewall with `ufw disable`" in warning
    assert warning.endswith("`ufw allow 22/tcp`, `ufw allow 9100/tcp`, `ufw allow 5353/udp`")
    assert "8643" not in warning.split("Fix:")[1]


@pytest.mark.parametrize("line", ["ufw installed - no", "ufw installed inactive yes", "ufw missing"],
                         ids=["inactive", "stopped", "not-installed"])
def test_ufw_inactive_or_not_installed_adds_no_warning(line):
    assert fw_plan(host_facts(SSH_FACTS + [line]), gateways=[PUBLIC_API], firewall=on(allow=[8643])).warnings == ()
    assert plan_for(settings(gateways=[PUBLIC_API]), host_facts(SSH_FACTS + [line])).firewall.warnings == ()


def test_converged_host_with_ufw_active_changes_nothing_and_still_says_so():
    host_settings = settings(firewall=on(allow=[8643]), gateways=[PUBLIC_API])
    facts = converged_facts(host_settings)
    facts.state.firewall["ufw"] = "active"
    plan = plan_for(host_settings, facts).firewall
    assert not plan.needs_load and not plan.ruleset.content_changed
    assert len(ufw_warnings(plan)) == 1 and ufw_warnings(plan)[0].endswith("`ufw allow 22/tcp`")


def test_firewall_off_and_ufw_active_a_public_port_is_said_to_be_unprotected():
    dashboard = {"enabled": True, "publish_address": "192.168.1.5", "allow_public": True,
                 "basic_auth_username": "ops", "basic_auth_password_hash": "$2b$12$abcdefghijklmnopqrstuv"}
    host_settings = settings(gateways=[{**PUBLIC_API, "dashboard": dashboard}],
                             metrics={"listen_address": "0.0.0.0", "allow_public": True})
    plan = plan_for(host_settings, host_facts(SSH_FACTS + [UFW_ACTIVE])).firewall
    assert not plan.enabled
    assert [w.split(" and ufw")[0] for w in plan.warnings] == [
        "gateways[hermes].api is published on 0.0.0.0:8643/tcp", "gateways[hermes].dashboard is published on "
        "192.168.1.5:9119/tcp"]  # not metrics: the exporter is a host process, which ufw does filter
    assert plan.warnings[0] == (
        "gateways[hermes].api is published on 0.0.0.0:8643/tcp and ufw is active on this host, but ufw does not "
        "protect that port: Docker's published ports bypass ufw (Docker's own forward rules accept them before "
        "ufw's chains see them), so whoever reaches the host reaches the port, whatever `ufw status` says. Fix: "
        "set firewall.enabled: true and list the port in firewall.allow (with allow_from to narrow it): "
        "hermes-infra's nftables table filters published ports before Docker's rules; or publish it on 127.0.0.1 "
        "and reach it through an SSH tunnel or a proxy")
    # Loopback and the docker bridge address (the defaults) are no one else's to reach.
    assert plan_for(settings(), host_facts(SSH_FACTS + [UFW_ACTIVE])).firewall.warnings == ()
    assert plan_for(settings(companions=[{"name": "hub", "image": "example/hub:1.0"}]),
                    host_facts(SSH_FACTS + [UFW_ACTIVE])).firewall.warnings == ()


def test_the_deploy_prints_the_ufw_warning_even_with_no_firewall_to_manage(caplog):
    plan = plan_for(settings(gateways=[PUBLIC_API]), host_facts(SSH_FACTS + [UFW_ACTIVE])).firewall
    assert not (plan.enabled or plan.table_loaded or plan.present or plan.unit_enabled)
    with ctx_host.use(FakeHost()):
        ops.firewall._inner(plan, None, None, install=None)
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "firewall: gateways[hermes].api is published on 0.0.0.0:8643/tcp and ufw is active" in logged
