"""SSH hardening (setting ssh_hardening): the drop-in's text; the sshd facts it is planned from
(Debian's and Ubuntu's defaults, Ubuntu's cloud-init drop-in); the refusals before anything
changes (a password login, no authorized key, a file read before ours); the apply that reverts
itself unless a second, new login confirms it; the controls."""
from __future__ import annotations

import inspect
import os
import subprocess

import pytest
from pyinfra.context import ctx_host

from hermes_infra.host import hostfacts
from hermes_infra.operations import sshd as ops
from hermes_infra.plan import sshd
from hermes_infra.plan.hostplan import PlanError
from hermes_infra.release import sshd_confirm
from hermes_infra.settings.loading import SettingsError
from hermes_infra.settings.schema import HostSettings
from tests.unit.hostfakes import FakeHost, fresh, plan_for, root_file, run_confirmed, settings
from tests.unit.test_checks_controls import FakeHost as CheckHost
from tests.unit.test_checks_controls import Out, context, outcome

# What the batched read prints on a Debian 12/13 host as installed (sshd -T trimmed to the
# keywords asked for; the main file's Include at its top; no drop-ins; one key).
DEBIAN = ["effective passwordauthentication yes", "effective kbdinteractiveauthentication no",
          "effective permitrootlogin without-password", "effective maxauthtries 6", "effective logingracetime 120",
          "effective x11forwarding yes", "effective permitemptypasswords no", "effective hostbasedauthentication no",
          "effective ignorerhosts yes", "effective pubkeyauthentication yes",
          "effective authorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2",
          "effective authorizedkeyscommand none", "effective loglevel INFO",
          "include /etc/ssh/sshd_config.d/*.conf", "keys 1"]
# Ubuntu 24.04's cloud image where the cloud asked for password logins.
UBUNTU_CLOUD = DEBIAN + ["dropin 50-cloud-init.conf", "sets passwordauthentication yes",
                         "dropin 60-cloudimg-settings.conf", "sets passwordauthentication no"]
ON = {"enabled": True}


def hardened_effective(host_settings=None) -> list[str]:
    """sshd -T after the drop-in is in use."""
    host_settings = host_settings or settings(ssh_hardening=ON)
    lines = [f"effective {k.lower()} {sshd.SAME.get(v, v)}" for k, v in sshd.directives(host_settings)]
    return lines + ["effective authorizedkeyscommand none", "include /etc/ssh/sshd_config.d/*.conf", "keys 2"]


def facts_with(lines, **state):
    return fresh(sshd=hostfacts._sshd(lines), **state)


def sshd_plan(lines=DEBIAN, **sections) -> sshd.SshdPlan:
    sections.setdefault("ssh_hardening", ON)
    return plan_for(settings(**sections), facts_with(lines)).sshd


# --- the drop-in ------------------------------------------------------------------------------

def test_the_dropin_turns_passwords_off_and_sorts_before_the_distributions_files():
    plan = sshd_plan()
    text = plan.dropin.content
    assert plan.dropin.path == "/etc/ssh/sshd_config.d/05-hermes-infra-hardening.conf" and plan.needs_apply
    for line in ("PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitEmptyPasswords no",
                 "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "MaxAuthTries 4",
                 "LoginGraceTime 60", "X11Forwarding no", "HostbasedAuthentication no", "IgnoreRhosts yes",
                 "LogLevel VERBOSE"):
        assert line in text.splitlines(), line
    # Nothing that could refuse a key login or the SSH tunnel to the API.
    for keyword in ("AllowTcpForwarding", "AllowUsers", "AllowGroups", "Port", "ListenAddress", "UsePAM", "Match"):
        assert keyword not in text
    assert text.startswith(sshd.MARKER)
    assert sorted([sshd.DROPIN_NAME, "50-cloud-init.conf", "60-cloudimg-settings.conf"])[0] == sshd.DROPIN_NAME


def test_the_limits_come_from_the_settings_and_are_bounded():
    plan = sshd_plan(ssh_hardening={"enabled": True, "max_auth_tries": 3, "login_grace_seconds": 30})
    assert "MaxAuthTries 3" in plan.dropin.content and "LoginGraceTime 30" in plan.dropin.content
    with pytest.raises(SettingsError, match="max_auth_tries"):
        settings(ssh_hardening={"enabled": True, "max_auth_tries": 1})


def test_off_by_default_and_nothing_to_do_on_a_host_that_never_had_it():
    plan = plan_for(settings(), facts_with(DEBIAN)).sshd
    assert not plan.enabled and not plan.present and not plan.needs_apply
    # the defaults do not even ask sshd anything it could refuse
    assert plan_for(settings(), fresh()).sshd.enabled is False


# --- the facts --------------------------------------------------------------------------------

def test_the_facts_section_runs_in_the_background_and_parses_what_it_prints():
    command = hostfacts.state_command(hostfacts.StateRequest(sshd=True, apt_timers=True))
    assert "@@hermes-infra-section sshd" in command and "sshd -T" in command
    assert "sshd" in hostfacts.BACKGROUND
    found = hostfacts._sshd(UBUNTU_CLOUD + ["dropin ../evil name.conf", "sets passwordauthentication yes",
                                            "effective bogus 1", "keys x"])
    assert found["effective"]["permitrootlogin"] == "without-password"
    assert found["includes"] == ("/etc/ssh/sshd_config.d/*.conf",)
    assert found["dropins"]["50-cloud-init.conf"] == {"passwordauthentication": "yes"}
    assert "(a file with an unusual name)" in found["dropins"] and "bogus" not in found["effective"]
    assert found["authorized_keys"] == 1
    assert hostfacts.parse_state(["@@hermes-infra-section sshd", *DEBIAN]).sshd["authorized_keys"] == 1
    assert hostfacts.HostState().sshd["effective"] == {}


def test_the_facts_script_reads_the_main_file_the_dropins_and_counts_keys(tmp_path):
    """The section's shell, run by sh with sshd a stand-in and the paths under a temp dir."""
    etc = tmp_path / "etc" / "ssh"
    (etc / "sshd_config.d").mkdir(parents=True)
    (etc / "sshd_config").write_text("# comment\nPermitRootLogin yes\nInclude /etc/ssh/sshd_config.d/*.conf\n"
                                     "KbdInteractiveAuthentication no\nX11Forwarding yes\nMatch User x\n"
                                     "PasswordAuthentication yes\n")
    (etc / "sshd_config.d" / "50-cloud-init.conf").write_text("PasswordAuthentication yes\n")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text(
        "# a comment\nssh-ed25519 AAAAC3Nza one\nrestrict,command=\"x\" ssh-rsa AAAAB3Nza two\nnot a key\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sshd").write_text("#!/bin/sh\nprintf 'port 22\\npasswordauthentication yes\\n"
                                  "authorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2\\n'\n")
    (bin_dir / "sshd").chmod(0o755)
    (bin_dir / "getent").write_text(f"#!/bin/sh\necho \"$2:x:1000:1000::{home}:/bin/sh\"\n")
    (bin_dir / "getent").chmod(0o755)
    script = "; ".join(f"( {c} )" for c in hostfacts.SSHD_READS).replace("/etc/ssh", str(etc))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOGNAME": "deploy"}
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=10).stdout
    found = hostfacts._sshd(out.splitlines())
    assert found["effective"] == {"passwordauthentication": "yes",
                                  "authorizedkeysfile": ".ssh/authorized_keys .ssh/authorized_keys2"}
    assert found["includes"] == ("/etc/ssh/sshd_config.d/*.conf",)
    assert found["early"] == {"permitrootlogin": "yes"}  # above the Include only
    assert found["dropins"] == {"50-cloud-init.conf": {"passwordauthentication": "yes"}}
    assert found["authorized_keys"] == 2


# --- refused before anything changes -------------------------------------------------------

def test_ubuntus_cloud_init_password_login_is_reported_and_overridden():
    plan = sshd_plan(UBUNTU_CLOUD)
    assert plan.enabled and len(plan.warnings) == 1
    warning = plan.warnings[0]
    assert "50-cloud-init.conf sets PasswordAuthentication yes (cloud-init" in warning
    assert "05-hermes-infra-hardening.conf is read first" in warning


@pytest.mark.parametrize(("lines", "message"), [
    ([line for line in DEBIAN if not line.startswith("include")], "has no `Include /etc/ssh/sshd_config.d/*.conf`"),
    (DEBIAN + ["early passwordauthentication yes"], "sets PasswordAuthentication yes above its Include line"),
    (DEBIAN + ["dropin 00-provider.conf", "sets permitrootlogin yes"],
     "00-provider.conf sets PermitRootLogin yes and is read before 05-hermes-infra-hardening.conf"),
    ([line for line in DEBIAN if line != "keys 1"] + ["keys 0"], "has no key in its authorized_keys (none found)"),
    (["effective-error", "include /etc/ssh/sshd_config.d/*.conf", "keys 1"], "`sshd -T` failed on the host"),
])
def test_a_host_where_the_dropin_would_not_hold_or_lock_out_is_refused(lines, message):
    with pytest.raises(PlanError) as error:
        sshd_plan(lines)
    assert message in str(error.value) and "Nothing was changed" in str(error.value)


def test_an_earlier_file_that_agrees_and_a_keys_command_are_accepted():
    lines = [line for line in DEBIAN if line not in ("keys 1", "effective authorizedkeyscommand none")]
    plan = sshd_plan(lines + ["keys 0", "effective authorizedkeyscommand /usr/bin/google_authorized_keys",
                              "dropin 00-provider.conf", "sets passwordauthentication no"])
    assert plan.enabled and plan.warnings == ()


@pytest.mark.parametrize(("method", "message"), [
    ("password", "logs in with a password (ssh_password in the inventory)"),
    ("not-ssh", "does not reach the host over SSH"),
])
def test_a_deploy_that_would_lock_itself_out_is_refused(method, message):
    with pytest.raises(sshd.SshdError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sshd.check_login(method)
    sshd.check_login("publickey")
    sshd.check_login("unknown")  # an agent: the second login proves it


class Transport:
    def __init__(self, method):
        self.auth_handler = type("Auth", (), {"auth_method": method})()


class SshConnector:
    def __init__(self, method):
        self.client = type("Client", (), {"get_transport": lambda _: Transport(method)})()

    def make_paramiko_kwargs(self):
        return {}


def login_host(connector, **data):
    return type("Host", (), {"connector": connector, "data": type("D", (), {"get": lambda _, k, d=None: data.get(k, d)})()})()


def test_the_login_method_is_read_from_paramiko_then_from_the_host_data():
    assert sshd_confirm.login_method(login_host(SshConnector("publickey"), ssh_password="x")) == "publickey"
    assert sshd_confirm.login_method(login_host(SshConnector("password"))) == "password"
    assert sshd_confirm.login_method(login_host(SshConnector("keyboard-interactive"))) == "password"
    assert sshd_confirm.login_method(login_host(SshConnector(None), ssh_password="x")) == "password"
    assert sshd_confirm.login_method(login_host(SshConnector(None), ssh_password="x", ssh_key="k")) == "unknown"
    assert sshd_confirm.login_method(login_host(object())) == "not-ssh"


def test_the_deploy_refuses_a_password_login_before_any_operation(monkeypatch):
    from hermes_infra.release import deploy

    recorded = []
    monkeypatch.setattr(deploy, "gather", lambda s: facts_with(DEBIAN))
    monkeypatch.setattr(deploy.results, "record_failure", lambda host, message: recorded.append(message))
    fake = FakeHost()
    fake.connector = SshConnector("password")
    fake.name = "test"
    with ctx_host.use(fake), pytest.raises(sshd.SshdError):
        deploy.host_plan(settings(ssh_hardening=ON))
    assert "logs in with a password" in recorded[0]


# --- converged, drifted, turned off --------------------------------------------------------

def converged_facts(host_settings=None):
    host_settings = host_settings or settings(ssh_hardening=ON)
    return facts_with(hardened_effective(host_settings),
                      root_files={sshd.DROPIN_PATH: root_file(sshd.dropin_text(host_settings))})


def test_converged_host_changes_nothing():
    plan = plan_for(settings(ssh_hardening=ON), converged_facts()).sshd
    assert plan.effective_ok and not plan.needs_apply and plan.present
    done, _, ok = execute(plan, lambda *a: None)
    assert ok and done == []


def test_drift_in_the_file_or_in_what_sshd_uses_is_applied_again():
    facts = converged_facts()
    facts.state.root_files[sshd.DROPIN_PATH] = root_file(sshd.dropin_text(settings(ssh_hardening=ON)) + "X11Forwarding yes\n")
    assert plan_for(settings(ssh_hardening=ON), facts).sshd.needs_apply
    # the file as planned, but sshd still runs the old values (never reloaded)
    stale = facts_with(DEBIAN, root_files={sshd.DROPIN_PATH: root_file(sshd.dropin_text(settings(ssh_hardening=ON)))})
    plan = plan_for(settings(ssh_hardening=ON), stale).sshd
    assert not plan.dropin.content_changed and not plan.effective_ok and plan.needs_apply


def test_turned_off_only_hermes_infras_dropin_leaves_and_sshd_reloads():
    plan = plan_for(settings(), converged_facts()).sshd
    assert plan.present and not plan.enabled
    done, _, ok = execute(plan, None)
    assert ok and len(done) == 1
    assert done[0].startswith("{ systemctl stop hermes-infra-sshd-revert.timer 2>/dev/null; true; } && rm -f "
                              "/etc/ssh/sshd_config.d/05-hermes-infra-hardening.conf /var/lib/hermes-infra/sshd.revert.conf")
    assert done[0].endswith("/usr/sbin/sshd -t && { ! systemctl is-active --quiet ssh.service || systemctl reload "
                            "ssh.service; }")
    # someone else's file at that name is left alone
    foreign = facts_with(DEBIAN, root_files={sshd.DROPIN_PATH: root_file("PasswordAuthentication no\n")})
    plan = plan_for(settings(), foreign).sshd
    assert plan.foreign and not plan.present
    assert execute(plan, None)[0] == []


# --- the apply that reverts itself unless confirmed ----------------------------------------

def execute(plan, confirm, sudo=None):
    return run_confirmed(ops.dropin_applied, plan, confirm, sudo)


def test_a_new_dropin_is_armed_then_put_in_place_checked_reloaded_confirmed_then_kept():
    plan = sshd_plan(ssh_hardening={"enabled": True, "confirm_seconds": 45})
    calls = []
    done, host, ok = execute(plan, lambda state, host, seconds: calls.append(seconds))
    assert ok and calls == [45] and host.ran == []
    assert done[1] == "upload"
    armed, installed = done[2], done[3]
    # the previous drop-in saved (empty: none), then the timer that restores it
    assert "cat /etc/ssh/sshd_config.d/05-hermes-infra-hardening.conf; fi; } > /var/lib/hermes-infra/sshd.revert.conf.tmp" in armed
    assert "systemd-run --quiet --unit=hermes-infra-sshd-revert --on-active=45 /bin/sh -c " in armed
    assert "if systemctl is-active --quiet hermes-infra-sshd-revert.timer && [ -e " in armed
    # in place by a rename; sshd -t and sshd -T judge it before the reload
    assert installed.index("mv -f /etc/ssh/sshd_config.d/05-hermes-infra-hardening.conf.new "
                           "/etc/ssh/sshd_config.d/05-hermes-infra-hardening.conf") < installed.index("/usr/sbin/sshd -t") \
        < installed.index("grep -qixE 'passwordauthentication no'") < installed.index("systemctl reload ssh.service")
    assert "'permitrootlogin prohibit-password|permitrootlogin without-password'" in installed
    assert done[4] == "confirm"
    assert done[5].startswith("systemctl stop hermes-infra-sshd-revert.timer && rm -f /var/lib/hermes-infra/sshd.revert.conf ")
    assert len(done) == 6


def test_a_failed_confirmation_reverts_now_keeps_the_timer_and_fails_the_deploy(caplog):
    plan = sshd_plan()
    done, host, ok = execute(plan, lambda state, host, seconds: "AuthenticationException: Authentication failed.",
                             sudo={"_sudo": True, "_sudo_password": "not-shown-anywhere", "_timeout": 5})
    assert not ok and done[-1] == "confirm"
    assert not any(c.startswith("systemctl stop hermes-infra-sshd-revert.timer &&") for c in done)
    assert host.ran == ["systemctl start --no-block hermes-infra-sshd-revert.service"]
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "a second SSH connection with the deploy's key failed (AuthenticationException" in message
    assert "restores the previous /etc/ssh/sshd_config.d/05-hermes-infra-hardening.conf within 60 s" in message
    assert "not-shown-anywhere" not in message


def shell_paths(monkeypatch, tmp_path, sshd_script: str):
    """The operation's shell against a temp dir: sshd, systemctl and systemd-run are stand-ins."""
    dropin, revert = tmp_path / "sshd_config.d" / "05-hermes-infra-hardening.conf", tmp_path / "state" / "sshd.revert.conf"
    dropin.parent.mkdir()
    monkeypatch.setattr(sshd, "DROPIN_PATH", str(dropin))
    monkeypatch.setattr(sshd, "REVERT_PATH", str(revert))
    monkeypatch.setattr(ops, "DROPIN", str(dropin))
    monkeypatch.setattr(ops, "REVERT", str(revert))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_sshd = bin_dir / "sshd"
    fake_sshd.write_text("#!/bin/sh\n" + sshd_script)
    fake_sshd.chmod(0o755)
    monkeypatch.setattr(sshd, "SSHD", str(fake_sshd))
    log = tmp_path / "calls"
    for name in ("systemctl", "systemd-run"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {log}\n"
                                    + ("[ \"$1\" = is-active ] && exit 0\n" if name == "systemctl" else "") + "exit 0\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return dropin, revert, log, env


def sh(command, env):
    return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="install -o root needs root")
def test_a_dropin_sshd_refuses_is_undone_at_once_and_the_saved_one_restored(monkeypatch, tmp_path):
    dropin, revert, log, env = shell_paths(monkeypatch, tmp_path, "[ \"$1\" = -t ] && exit 255\nexit 0\n")
    dropin.write_text("# the operator's previous drop-in\n")
    staged = tmp_path / "staged"
    staged.write_text(sshd.dropin_text(settings(ssh_hardening=ON)))
    assert sh(ops.arm_revert_command(60), env).returncode == 0
    assert revert.read_text() == "# the operator's previous drop-in\n"
    assert "--on-active=60" in log.read_text()
    result = sh(ops.install_command(str(staged), sshd.directives(settings(ssh_hardening=ON))), env)
    assert result.returncode != 0 and "sshd refused the new drop-in" in result.stderr
    assert dropin.read_text() == "# the operator's previous drop-in\n" and not revert.exists()
    assert "reload" not in log.read_text().split("systemctl stop")[-1].split("is-active")[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="install -o root needs root")
def test_a_dropin_whose_values_sshd_does_not_use_is_undone_and_a_new_one_removed(monkeypatch, tmp_path):
    # sshd -t is happy but sshd -T shows password logins still on (a file read earlier wins)
    effective = "\\n".join(f"{k.lower()} {v}" for k, v in sshd.directives(settings(ssh_hardening=ON)))
    effective = effective.replace("passwordauthentication no", "passwordauthentication yes")
    dropin, revert, log, env = shell_paths(monkeypatch, tmp_path, f"[ \"$1\" = -T ] && printf '{effective}\\n'\nexit 0\n")
    staged = tmp_path / "staged"
    staged.write_text(sshd.dropin_text(settings(ssh_hardening=ON)))
    assert sh(ops.arm_revert_command(60), env).returncode == 0
    assert revert.read_text() == ""  # there was none
    result = sh(ops.install_command(str(staged), sshd.directives(settings(ssh_hardening=ON))), env)
    assert result.returncode != 0 and not dropin.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="install -o root needs root")
def test_an_accepted_dropin_is_reloaded_and_the_timers_restore_puts_the_old_one_back(monkeypatch, tmp_path):
    host_settings = settings(ssh_hardening=ON)
    effective = "\\n".join(f"{k.lower()} {sshd.SAME.get(v, v)}" for k, v in sshd.directives(host_settings))
    dropin, revert, log, env = shell_paths(monkeypatch, tmp_path, f"[ \"$1\" = -T ] && printf '{effective}\\n'\nexit 0\n")
    dropin.write_text("# before\n")
    staged = tmp_path / "staged"
    staged.write_text(sshd.dropin_text(host_settings))
    assert sh(ops.arm_revert_command(60), env).returncode == 0
    result = sh(ops.install_command(str(staged), sshd.directives(host_settings)), env)
    assert result.returncode == 0, result.stderr
    assert dropin.read_text() == sshd.dropin_text(host_settings)
    assert "systemctl reload ssh.service" in log.read_text()
    # what the timer runs when no new login confirmed it
    assert sh(ops.restore_script(), env).returncode == 0
    assert dropin.read_text() == "# before\n" and not revert.exists()
    # a second arm while a revert is pending keeps the save of the last good drop-in
    dropin.write_text("# unconfirmed\n")
    revert.parent.mkdir(exist_ok=True)
    revert.write_text("# last good\n")
    assert sh(ops.arm_revert_command(60), env).returncode == 0
    assert revert.read_text() == "# last good\n"


def test_the_confirmation_is_a_new_login_and_the_test_hook_changes_its_user(monkeypatch):
    seen = []
    monkeypatch.setattr(sshd_confirm.firewall_confirm, "attempt", lambda state, host: seen.append(host.data.get("ssh_user")))
    host = login_host(object(), ssh_user="deploy")
    sshd_confirm.attempt(None, host)
    monkeypatch.setenv(sshd_confirm.TEST_USER_ENV, "nobody-has-this-key")
    sshd_confirm.attempt(None, host)
    assert seen == ["deploy", "nobody-has-this-key"]


def test_the_deploy_orders_the_hardening_after_the_firewall():
    from hermes_infra.release import deploy

    source = inspect.getsource(deploy)
    body = source[source.index("def hermes_host"):]
    assert body.index("firewall(plan)") < body.index("hardening(plan)") < body.index("swap.swap(")


# --- the controls -----------------------------------------------------------------------------

def sshd_t(host_settings=HostSettings(ssh_hardening=ON), **changes) -> str:
    values = {k.lower(): sshd.SAME.get(v, v) for k, v in sshd.directives(host_settings)} | changes
    return "port 22\n" + "".join(f"{k} {v}\n" for k, v in values.items())


def check_host(effective=None, dropin=None, pending=False, rc=0):
    return CheckHost({
        "/usr/sbin/sshd -T": Out(rc, sshd_t() if effective is None else effective, "" if rc == 0 else "Permission denied"),
        "cat /etc/ssh/sshd_config.d/05-hermes-infra-hardening.conf": Out(0, sshd.dropin_text(HostSettings(ssh_hardening=ON))
                                                                 if dropin is None else dropin),
        "systemctl is-active --quiet hermes-infra-sshd-revert.timer": Out(0 if pending else 3),
    })


HARDENED = HostSettings(ssh_hardening=ON)


def test_the_ssh_controls_pass_on_a_host_as_deployed_and_exist_only_where_it_is_on():
    from hermes_infra.checks.runner import instances

    ctx = context(HARDENED, host=check_host())
    for control_id in ("HI-SSH-002", "HI-SSH-003"):
        result = outcome(control_id, ctx)
        assert result.status == "passed", (control_id, result.message)
    assert not [c for c, _ in instances(HostSettings()) if c.id in ("HI-SSH-002", "HI-SSH-003")]


@pytest.mark.parametrize(("control_id", "host", "message"), [
    ("HI-SSH-002", dict(effective=sshd_t(passwordauthentication="yes")), "PasswordAuthentication is yes (want no)"),
    ("HI-SSH-002", dict(effective=sshd_t(permitrootlogin="yes")), "PermitRootLogin is yes (want prohibit-password)"),
    ("HI-SSH-003", dict(effective=sshd_t(maxauthtries="6")), "MaxAuthTries is 6 (want 4)"),
    ("HI-SSH-003", dict(dropin="PasswordAuthentication no\n"), "is not the one these settings write"),
    ("HI-SSH-003", dict(pending=True), "hermes-infra-sshd-revert.timer is armed"),
])
def test_ssh_drift_fails_the_matching_control(control_id, host, message):
    result = outcome(control_id, context(HARDENED, host=check_host(**host)))
    assert result.status == "failed", result.message
    assert message in result.message


def test_an_ssh_check_without_root_is_an_error_not_a_finding():
    assert outcome("HI-SSH-002", context(HARDENED, host=check_host(rc=1))).status == "error"


def test_the_dry_run_shows_the_dropin_and_what_leaves():
    from hermes_infra.plan import plandiff

    lines = plandiff.plan_diff(plan_for(settings(ssh_hardening=ON, unattended_upgrades=ON), facts_with(DEBIAN)))
    assert "+PasswordAuthentication no" in "\n".join(lines)
    assert any("52hermes-infra-unattended-upgrades" in line for line in lines)
    facts = converged_facts()
    facts.state.root_files["/etc/apt/apt.conf.d/20auto-upgrades"] = root_file("// Written by hermes-infra (setting "
                                                                              "unattended_upgrades).\n")
    gone = plandiff.plan_diff(plan_for(settings(), facts))
    assert f"{sshd.DROPIN_PATH}: removed" in gone and "/etc/apt/apt.conf.d/20auto-upgrades: removed" in gone


def test_someone_elses_file_at_the_dropins_name_is_backed_up_before_it_is_replaced():
    foreign = facts_with(DEBIAN, root_files={sshd.DROPIN_PATH: root_file("PasswordAuthentication no\n")})
    plan = plan_for(settings(ssh_hardening=ON), foreign).sshd
    assert plan.foreign and plan.needs_apply
    done, _, ok = execute(plan, lambda *a: None)
    assert ok and "cp -a /etc/ssh/sshd_config.d/05-hermes-infra-hardening.conf /var/backups/hermes-infra/" \
                  "etc__ssh__sshd_config.d__05-hermes-infra-hardening.conf." in done[0]
    assert "cp -a" not in execute(sshd_plan(), lambda *a: None)[0][0]


def test_a_value_from_sshds_files_is_shown_only_when_it_is_plain():
    found = hostfacts._sshd(["dropin 00-x.conf", "sets permitrootlogin \x1b[2Jyes", "early passwordauthentication y\x07"])
    assert found["dropins"]["00-x.conf"] == {"permitrootlogin": "(a value not shown)"}
    assert found["early"] == {"passwordauthentication": "(a value not shown)"}


# --- HI-DOCKER-007: the CIS 2.2 audit over every network -----------------------------------

def networks_host(listing: str):
    return CheckHost({"docker network ls --quiet | xargs docker network inspect": Out(0, listing)})


DEPLOYED_NETWORKS = ("bridge: map[com.docker.network.bridge.default_bridge:true com.docker.network.bridge.enable_icc:false "
                     "com.docker.network.bridge.name:docker0]\nhermes_default: map[]\nhost: map[]\nnone: map[]\n")


def test_the_network_audit_passes_as_deployed_and_names_the_compose_networks():
    result = outcome("HI-DOCKER-007", context(HostSettings(), host=networks_host(DEPLOYED_NETWORKS)))
    assert result.status == "passed", result.message
    assert result.message == "no network shows enable_icc:true; hermes_default keep Docker's default between their own containers"


@pytest.mark.parametrize(("listing", "message"), [
    (DEPLOYED_NETWORKS.replace("enable_icc:false", "enable_icc:true"), "flags enable_icc:true on: bridge (docker0 runs with"),
    (DEPLOYED_NETWORKS + "lab\x1b[2J: map[com.docker.network.bridge.enable_icc:true]\n", "flags enable_icc:true on: lab\\x1b[2J"),
])
def test_the_network_audit_names_what_cis_2_2_flags(listing, message):
    result = outcome("HI-DOCKER-007", context(HostSettings(), host=networks_host(listing)))
    assert result.status == "failed" and message in result.message, result.message


def test_sshd_and_apts_timers_are_read_only_where_the_settings_turn_them_on():
    from hermes_infra.plan.hostplan import fact_request

    default = hostfacts.state_command(fact_request(settings()))
    assert "section sshd" not in default and "section apttimers" not in default
    on = hostfacts.state_command(fact_request(settings(ssh_hardening=ON, unattended_upgrades=ON)))
    assert "section sshd" in on and "section apttimers" in on
