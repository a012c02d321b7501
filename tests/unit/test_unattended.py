"""Automatic security updates (setting unattended_upgrades): the apt files on a fresh, converged,
drifted and turned-off host; apt's own parser reads them as meant; the controls; and the deploy's
apt-lock wait naming unattended-upgrades when it holds the lock."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyinfra.context import ctx_host

from hermes_infra.host.aptwait import WAIT_MARK, wait_for_apt_locks_script
from hermes_infra.operations import unattended as ops
from hermes_infra.plan import unattended
from hermes_infra.settings.loading import SettingsError
from hermes_infra.settings.schema import HostSettings
from tests.unit.hostfakes import FakeHost, fresh, plan_for, root_file, run_op, settings
from tests.unit.test_checks_controls import FakeHost as CheckHost
from tests.unit.test_checks_controls import Out, context, outcome

ON = {"enabled": True}
NOBLE = {"id": "ubuntu", "version_codename": "noble", "pretty_name": "Ubuntu 24.04 LTS"}


def uu_plan(facts=None, **section) -> unattended.UnattendedPlan:
    return plan_for(settings(unattended_upgrades={**ON, **section}), facts or fresh()).unattended


def test_debian_gets_the_security_origin_only_and_dockers_packages_blacklisted():
    plan = uu_plan()
    periodic, config = (file.content for file in plan.files)
    assert [file.path for file in plan.files] == ["/etc/apt/apt.conf.d/20auto-upgrades",
                                                  "/etc/apt/apt.conf.d/52hermes-infra-unattended-upgrades"]
    assert 'APT::Periodic::Update-Package-Lists "1";' in periodic and 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    # read after the package's 50unattended-upgrades, whose origin lists are cleared first
    assert sorted(["50unattended-upgrades", "52hermes-infra-unattended-upgrades"])[-1].startswith("52")
    assert config.index("#clear Unattended-Upgrade::Origins-Pattern;") < config.index("Unattended-Upgrade::Origins-Pattern {")
    assert '"origin=Debian,codename=${distro_codename}-security,label=Debian-Security";' in config
    assert "Allowed-Origins {" not in config and "label=Debian\"" not in config
    for name in ("docker-ce", "docker-compose-plugin$", r"containerd\.io$", r"docker\.io$", "docker-buildx-plugin$"):
        assert f'"{name}";' in config
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in config
    assert 'Unattended-Upgrade::Automatic-Reboot-Time "03:30";' in config
    assert not plan.installed and all(file.content.startswith(unattended.MARKER) for file in plan.files)


def test_ubuntu_gets_its_security_pocket_and_the_reboot_as_set():
    from tests.unit.hostfakes import Facts, HostState

    facts = Facts(os_release=dict(NOBLE), memory_mb=3915, cpus=2, image_inspect=None, state=HostState(machine="x86_64"))
    config = uu_plan(facts, automatic_reboot=True, reboot_time="04:15").files[1].content
    assert 'Unattended-Upgrade::Allowed-Origins {\n    "${distro_id}:${distro_codename}-security";\n};' in config
    assert "Origins-Pattern {" not in config
    assert 'Automatic-Reboot "true";' in config and 'Automatic-Reboot-Time "04:15";' in config


@pytest.mark.parametrize("value", ["3:30", "24:00", "03:60", "noon", ""])
def test_a_reboot_time_that_is_not_hh_mm_is_refused_with_the_setting_named(value):
    with pytest.raises(SettingsError, match="unattended_upgrades.reboot_time"):
        settings(unattended_upgrades={"enabled": True, "reboot_time": value})


@pytest.mark.skipif(not shutil.which("apt-config"), reason="needs apt-config")
def test_apt_reads_the_files_as_meant(tmp_path):
    """apt's own parser, with Debian's 50unattended-upgrades before ours: only our origin is left."""
    config = tmp_path / "apt.conf.d"
    config.mkdir()
    (config / "50unattended-upgrades").write_text(
        'Unattended-Upgrade::Origins-Pattern {\n "origin=Debian,codename=${distro_codename},label=Debian";\n'
        ' "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";\n};\n'
        'Unattended-Upgrade::Package-Blacklist {\n "mine$";\n};\n')
    plan = uu_plan()
    (config / "20auto-upgrades").write_text(plan.files[0].content)
    (config / "52hermes-infra-unattended-upgrades").write_text(plan.files[1].content)
    main = tmp_path / "apt.conf"
    main.write_text(f'Dir::Etc::parts "{config}";\n')
    out = subprocess.run(["apt-config", "-c", str(main), "dump", "Unattended-Upgrade"], capture_output=True,
                         text=True, env={"APT_CONFIG": str(main), "PATH": "/usr/bin:/bin"}).stdout
    origins = [line for line in out.splitlines() if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")]
    assert origins == ['Unattended-Upgrade::Origins-Pattern:: "origin=Debian,codename=${distro_codename}-security,'
                       'label=Debian-Security";']
    blacklist = [line.split(":: ", 1)[1] for line in out.splitlines()
                 if line.startswith("Unattended-Upgrade::Package-Blacklist:: ")]
    assert blacklist[0] == '"mine$";' and '"docker-ce";' in blacklist  # the operator's entries stay
    periodic = subprocess.run(["apt-config", "-c", str(main), "dump", "APT::Periodic"], capture_output=True,
                              text=True, env={"APT_CONFIG": str(main), "PATH": "/usr/bin:/bin"}).stdout
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic


def converged_facts(host_settings):
    plan = plan_for(host_settings, fresh()).unattended
    return fresh(packages={unattended.PACKAGE: "installed"},
                 apt_timers={"apt-daily.timer": "enabled", "apt-daily-upgrade.timer": "enabled"},
                 root_files={file.path: root_file(file.content) for file in plan.files})


def run_deploy(plan, monkeypatch):
    """What the deploy asks for: each file (changed? its check), the timers, the removal. (The
    package comes before, from release.deploy.hardening: test_tls_proxy's apt-run test.)"""
    calls = []
    monkeypatch.setattr(ops, "root_file", lambda **kw: calls.append(
        ("file", kw["file"].path, kw["file"].content_changed, kw["check"]("/stage/x"))))
    monkeypatch.setattr(ops, "files_removed", lambda **kw: calls.append(("remove", kw["plan"].remove)))
    monkeypatch.setattr(ops, "timers_enabled", lambda **kw: calls.append(("timers", kw["plan"].timers_off)))
    with ctx_host.use(FakeHost()):
        ops.unattended_upgrades._inner(plan, plan_for(settings(), fresh()).writer)
    return calls


def test_fresh_host_gets_the_files_each_checked_by_apt_then_the_timers(monkeypatch):
    calls = run_deploy(uu_plan(), monkeypatch)
    assert [c[1] for c in calls[0:2]] == list(unattended.PATHS)
    assert all(c[2] and c[3] == "apt-config -c /stage/x dump >/dev/null" for c in calls[0:2])
    assert calls[2] == ("timers", ("apt-daily.timer", "apt-daily-upgrade.timer"))


def test_converged_host_changes_nothing_and_drift_is_rewritten(monkeypatch):
    host_settings = settings(unattended_upgrades=ON)
    facts = converged_facts(host_settings)
    plan = plan_for(host_settings, facts).unattended
    assert plan.installed and not any(file.content_changed for file in plan.files)
    assert plan.timers_off == () and run_op(ops.timers_enabled, plan=plan).commands == []
    assert [c for c in run_deploy(plan, monkeypatch) if c[0] == "file" and c[2]] == []
    facts.state.root_files[unattended.CONFIG_PATH] = root_file("// edited\n")
    drifted = plan_for(host_settings, facts).unattended
    assert [file.path for file in drifted.files if file.content_changed] == [unattended.CONFIG_PATH]


def test_turned_off_only_the_files_hermes_infra_wrote_are_removed(monkeypatch):
    facts = converged_facts(settings(unattended_upgrades=ON))
    facts.state.root_files[unattended.PERIODIC_PATH] = root_file('APT::Periodic::Unattended-Upgrade "1";\n')  # the distro's
    plan = plan_for(settings(), facts).unattended
    assert plan.remove == (unattended.CONFIG_PATH,) and not plan.enabled
    result = run_op(ops.files_removed, plan=plan)
    assert run_deploy(plan, monkeypatch) == [("remove", (unattended.CONFIG_PATH,))]
    assert result.commands == ["rm -f /etc/apt/apt.conf.d/52hermes-infra-unattended-upgrades"]
    # never had it: nothing at all
    assert run_deploy(plan_for(settings(), fresh()).unattended, monkeypatch) == []


def test_masked_daily_timers_are_unmasked_and_enabled_and_their_state_is_read():
    from hermes_infra.host import hostfacts

    state = hostfacts.parse_state(["@@hermes-infra-section apttimers", "apt-daily.timer enabled",
                                   "apt-daily-upgrade.timer masked", "other.timer enabled"])
    assert state.apt_timers == {"apt-daily.timer": "enabled", "apt-daily-upgrade.timer": "masked"}
    plan = uu_plan(fresh(apt_timers=state.apt_timers))
    assert plan.timers_off == ("apt-daily-upgrade.timer",)
    assert run_op(ops.timers_enabled, plan=plan).commands == [
        "systemctl unmask apt-daily-upgrade.timer && systemctl enable --now apt-daily-upgrade.timer"]
    assert "@@hermes-infra-section apttimers" in hostfacts.state_command(hostfacts.StateRequest(sshd=True, apt_timers=True))


def test_the_package_state_is_asked_of_dpkg_in_the_batched_read():
    from hermes_infra.plan.hostplan import fact_request

    request = fact_request(settings())
    assert unattended.PACKAGE in request.packages
    assert set(unattended.PATHS) <= set(request.root_files)


# --- the controls -----------------------------------------------------------------------------

def apt_dump(origins=('origin=Debian,codename=${distro_codename}-security,label=Debian-Security',),
             blacklist=unattended.DOCKER_BLACKLIST, reboot="false", periodic="1"):
    lines = [f'APT::Periodic::Update-Package-Lists "{periodic}";', f'APT::Periodic::Unattended-Upgrade "{periodic}";',
             'Unattended-Upgrade "";', 'Unattended-Upgrade::Origins-Pattern "";',
             *(f'Unattended-Upgrade::Origins-Pattern:: "{o}";' for o in origins),
             'Unattended-Upgrade::Package-Blacklist "";',
             *(f'Unattended-Upgrade::Package-Blacklist:: "{b}";' for b in blacklist),
             f'Unattended-Upgrade::Automatic-Reboot "{reboot}";']
    return "\n".join(lines) + "\n"


def updates_host(dump=None, status="installed", timer="enabled"):
    return CheckHost({
        "dpkg-query -W": Out(0, status),
        "apt-config dump": Out(0, apt_dump() if dump is None else dump),
        "systemctl is-enabled apt-daily-upgrade.timer": Out(0, timer + "\n"),
    })


UPDATES = HostSettings(unattended_upgrades=ON)


def test_the_update_controls_pass_on_a_host_as_deployed_and_exist_only_where_it_is_on():
    from hermes_infra.checks.runner import instances

    ctx = context(UPDATES, host=updates_host())
    for control_id in ("HI-UPD-001", "HI-UPD-002"):
        result = outcome(control_id, ctx)
        assert result.status == "passed", (control_id, result.message)
    assert not [c for c, _ in instances(HostSettings()) if c.id.startswith("HI-UPD")]


@pytest.mark.parametrize(("control_id", "host", "message"), [
    ("HI-UPD-001", dict(status="not-installed"), "unattended-upgrades is not-installed"),
    ("HI-UPD-001", dict(dump=apt_dump(periodic="0")), "APT::Periodic::Update-Package-Lists, "
                                                      "APT::Periodic::Unattended-Upgrade is 0 or unset"),
    ("HI-UPD-001", dict(timer="disabled"), "apt-daily-upgrade.timer is disabled"),
    ("HI-UPD-002", dict(dump=apt_dump(origins=("origin=Debian,codename=${distro_codename},label=Debian",
                                               "origin=Debian,codename=${distro_codename}-security,label=Debian-Security"))),
     "origins beyond security: origin=Debian,codename=${distro_codename},label=Debian"),
    ("HI-UPD-002", dict(dump=apt_dump(blacklist=("docker-ce",))), "missing docker-buildx-plugin$"),
    ("HI-UPD-002", dict(dump=apt_dump(reboot="true")), "Automatic-Reboot is true, the settings say false"),
])
def test_update_drift_fails_the_matching_control(control_id, host, message):
    result = outcome(control_id, context(UPDATES, host=updates_host(**host)))
    assert result.status == "failed", result.message
    assert message in result.message


# --- the apt-lock wait names unattended-upgrades ------------------------------------------

HOLDER = r"""
import fcntl, sys, time
open("/proc/self/comm", "w").write("unattended-upgrade")  # as the kernel names the real one
handle = open(sys.argv[1], "r+")
fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_the_apt_lock_wait_names_unattended_upgrades_as_the_holder(tmp_path):
    lock = tmp_path / "var/lib/dpkg/lock-frontend"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = subprocess.run(["sh", "-c", wait_for_apt_locks_script(5, root=str(tmp_path), poll_seconds=0.1)],
                                capture_output=True, text=True, timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"{WAIT_MARK} 5s for the apt lock held by unattended-upgrades "
                                          f"(pid {holder.pid}) on /var/lib/dpkg/lock-frontend"]
