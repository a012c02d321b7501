"""Ubuntu 22.04 (jammy) and 24.04 (noble) hosts, on RECORDED facts (tests/unit/fixtures/ubuntu_*):
the os-release files as Ubuntu ships them, `dpkg-query`, `snap list` and `command -v` as the batched
read sees them, parsed by the read's own parser. The whole plan and the Docker operations run for a
fresh, a converged, a drifted and a hostile (snap docker, someone else's engine) Ubuntu host, as
test_operations.py does for Debian. No Ubuntu host has run any of this here."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyinfra import logger

from hermes_infra.host import aptwait
from hermes_infra.host.hostfacts import BACKGROUND, SECTION, HostState, RootFile, parse_state, state_sections
from hermes_infra.operations import docker_engine, files as ops
from hermes_infra.plan import hostplan
from hermes_infra.plan.hostplan import DOCKER_SOURCES, PlanError, fact_request, make_plan, manifest_path
from tests.unit import hostfakes
from tests.unit.hostfakes import converged, plan_for, root_file, run_op, settings

FIXTURES = Path(__file__).parent / "fixtures"
HOSTS = {"jammy": FIXTURES / "ubuntu_2204", "noble": FIXTURES / "ubuntu_2404"}


def recorded(host: Path, packages: str = "fresh", docker: str | None = None, snap: bool = False) -> HostState:
    """The host's state parsed from the recordings, as `parse_state` gets the batched read's lines."""
    lines = [f"{SECTION} pyinfra os_release", *(host / "os-release").read_text().splitlines(),
             f"{SECTION} packages", *(host / f"dpkg-query-{packages}.txt").read_text().splitlines(),
             f"{SECTION} snap", *((host / "snap-list-docker.txt").read_text().splitlines() if snap else []),
             f"{SECTION} dockerpath", *((host / f"command-v-docker-{docker}.txt").read_text().splitlines()
                                        if docker else ["command "])]
    state = parse_state(lines)
    state.machine = "x86_64"
    return state


def facts_of(state: HostState) -> hostplan.Facts:
    return hostplan.Facts(os_release=state.os_release, memory_mb=3915, cpus=2, image_inspect=None, state=state)


def release_of(host: Path) -> dict:
    return parse_state([f"{SECTION} pyinfra os_release", *(host / "os-release").read_text().splitlines()]).os_release


@pytest.fixture(params=sorted(HOSTS))
def codename(request) -> str:
    return request.param


@pytest.fixture
def ubuntu(codename, monkeypatch):
    """hostfakes' converged host, made from this Ubuntu's recorded os-release."""
    monkeypatch.setattr(hostfakes, "TRIXIE", release_of(HOSTS[codename]))
    return HOSTS[codename]


# --- the release: accepted, and the others refused -----------------------------------------------

def test_recorded_os_release_is_read_as_ubuntu_and_accepted(codename):
    release = release_of(HOSTS[codename])
    assert (release["id"], release["id_like"], release["version_codename"], release["ubuntu_codename"]) == (
        "ubuntu", "debian", codename, codename)
    assert hostplan.check_release(settings(), release) == codename
    assert hostplan.check_release(settings(docker={"install_source": "distro"}), release) == codename


@pytest.mark.parametrize("release", [
    release_of(FIXTURES / "ubuntu_2004"),  # 20.04 focal: out of standard support, no compose v2 from Ubuntu
    release_of(FIXTURES / "ubuntu_2510"),  # 25.10 questing: not an LTS
    {"id": "linuxmint", "id_like": "ubuntu debian", "version_codename": "wilma", "ubuntu_codename": "noble",
     "pretty_name": "Linux Mint 22"},  # like Ubuntu is not Ubuntu: the ID decides
    {"id": "fedora", "version_id": "41", "pretty_name": "Fedora Linux 41 (Server Edition)"},
    {"id": "ubuntu", "pretty_name": "Ubuntu"},  # no codename at all
    {},
], ids=["focal", "questing", "mint", "fedora", "no-codename", "empty"])
def test_unsupported_releases_are_refused_naming_what_is_supported(release):
    facts = dataclasses.replace(facts_of(recorded(HOSTS["noble"])), os_release=release)
    with pytest.raises(PlanError) as error:
        make_plan(settings(), facts)
    message = str(error.value)
    assert hostplan.SUPPORTED_TEXT in message and "Ubuntu 24.04 LTS (noble)" in message and "Fix:" in message
    assert (release.get("pretty_name") or "an unknown OS") in message


# --- fresh Ubuntu hosts ----------------------------------------------------------------------------

def test_fresh_host_official_uses_dockers_ubuntu_repository_for_its_codename(codename):
    plan = make_plan(settings(), facts_of(recorded(HOSTS[codename])))
    docker = plan.docker
    assert docker.repo_url == "https://download.docker.com/linux/ubuntu"
    assert (f"URIs: https://download.docker.com/linux/ubuntu\nSuites: {codename}\nComponents: stable\n"
            f"Signed-By: {hostplan.DOCKER_KEYRING}\n") in docker.sources.content
    assert docker.packages_missing == hostplan.OFFICIAL_PACKAGES and docker.prerequisites_missing == ()
    result = run_op(ops.root_file, docker.sources, plan.writer)
    assert result.uploads and b"download.docker.com/linux/ubuntu" in result.uploads[0].src.getvalue()
    text = run_op(docker_engine.apt_installed, docker, docker.packages_missing, True).text()
    assert "install --no-install-recommends docker-ce docker-ce-cli containerd.io" in text
    assert not run_op(docker_engine.apt_removed, docker).changed


def test_fresh_host_distro_installs_ubuntus_docker_io_and_compose_v2(codename):
    plan = make_plan(settings(docker={"install_source": "distro"}), facts_of(recorded(HOSTS[codename])))
    docker = plan.docker
    assert docker.packages == ("docker.io", "docker-compose-v2") and docker.sources is None
    text = run_op(docker_engine.apt_installed, docker, docker.packages_missing, True).text()
    assert text.endswith("install --no-install-recommends docker.io docker-compose-v2")
    assert "docker-cli" not in text  # Debian 13's split; Ubuntu's docker.io holds the CLI


def test_the_fact_request_asks_dpkg_for_every_os_distro_names():
    packages = fact_request(settings(docker={"install_source": "distro"})).packages
    assert {"docker.io", "docker-cli", "docker-compose", "docker-compose-v2", "docker-ce"} <= set(packages)


def test_every_apt_call_keeps_needrestart_and_debconf_from_prompting(codename):
    host = settings()
    facts = facts_of(recorded(HOSTS[codename], packages="distro"))
    facts.state.root_files[manifest_path(host)] = root_file("{}\n")  # deployed here before: a switch
    docker = make_plan(host, facts).docker
    commands = (run_op(docker_engine.apt_installed, docker, docker.packages_missing, True).commands
                + run_op(docker_engine.apt_removed, docker).commands)
    assert len(commands) == 3
    for command in commands:
        assert command.startswith("DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l apt-get ")


# --- converged and drifted -------------------------------------------------------------------------

def test_converged_ubuntu_host_changes_nothing(ubuntu, codename):
    host = settings()
    facts = converged(host)
    facts = dataclasses.replace(facts, state=dataclasses.replace(
        facts.state, packages=recorded(ubuntu, packages="official").packages))
    plan = plan_for(host, facts)
    docker = plan.docker
    assert docker.packages_missing == () and docker.conflicts_installed == ()
    assert f"Suites: {codename}\n" in docker.sources.content
    assert not run_op(ops.root_file, docker.sources, plan.writer).changed
    assert not run_op(docker_engine.apt_installed, docker, docker.packages_missing, False).changed
    assert not run_op(docker_engine.apt_removed, docker).changed
    assert not run_op(docker_engine.docker_service, docker, False).changed
    assert not run_op(docker_engine.apt_locks_free, docker).changed


def test_converged_distro_host_on_recorded_packages_changes_nothing(ubuntu):
    host = settings(docker={"install_source": "distro"})
    facts = converged(host)
    facts = dataclasses.replace(facts, state=dataclasses.replace(
        facts.state, packages=recorded(ubuntu, packages="distro").packages))
    docker = plan_for(host, facts).docker
    assert docker.packages_missing == () and docker.conflicts_installed == ()


def test_a_release_upgrade_leaves_the_old_suite_and_the_deploy_rewrites_it(ubuntu, codename):
    """do-release-upgrade (jammy to noble) keeps third-party sources with the old codename."""
    host = settings()
    facts = converged(host)
    old = facts.state.root_files[DOCKER_SOURCES]["text"].text.replace(f"Suites: {codename}", "Suites: focal")
    facts.state.root_files[DOCKER_SOURCES] = root_file(old)
    plan = plan_for(host, facts)
    assert plan.docker.sources.content_changed
    result = run_op(ops.root_file, plan.docker.sources, plan.writer)
    assert f"Suites: {codename}\n".encode() in result.uploads[0].src.getvalue()


def test_drifted_host_compose_v2_beside_dockers_plugin_is_removed_and_a_stopped_engine_started(ubuntu):
    host = settings()
    facts = converged(host)
    facts.state.packages["docker-compose-v2"] = "installed"  # e.g. pulled in by Ubuntu's ansible package
    facts = dataclasses.replace(facts, state=dataclasses.replace(facts.state, docker_active=False))
    docker = plan_for(host, facts).docker
    assert run_op(docker_engine.apt_removed, docker).text().endswith("remove docker-compose-v2")
    assert run_op(docker_engine.docker_service, docker, False).commands == ["systemctl start docker"]


# --- hostile: engines that are not hermes-infra's to replace --------------------------------------

@pytest.mark.parametrize("source", ["official", "distro"])
def test_snap_docker_is_refused_before_anything(codename, source):
    state = recorded(HOSTS[codename], docker="snap", snap=True)
    with pytest.raises(PlanError) as error:
        make_plan(settings(docker={"install_source": source}), facts_of(state))
    message = str(error.value)
    assert "snap" in message and "snap remove --purge docker" in message and "nothing was changed" in message
    assert "/snap/bin/docker exists" in message and "`snap list` shows the snap docker" in message


@pytest.mark.parametrize("evidence", [{"snap": True}, {"docker": "snap"}], ids=["snap-list", "path"])
def test_either_sign_of_the_snap_is_enough(evidence):
    with pytest.raises(PlanError, match="snap store"):
        make_plan(settings(), facts_of(recorded(HOSTS["noble"], **evidence)))


def test_a_docker_row_before_snaps_header_or_in_odd_output_is_not_believed():
    assert parse_state([f"{SECTION} snap", "docker 1 2", "error: no matching snaps installed"]).snap_docker == ()
    shown = parse_state([f"{SECTION} snap", "Name Version Rev", "docker \x1b[31mred 1"]).snap_docker
    assert shown == ("`snap list` shows the snap docker",)  # the odd version is not printed
    assert parse_state([f"{SECTION} dockerpath", "command /usr/bin/docker"]).snap_docker == ()


def test_the_snap_read_runs_in_the_background_without_snapd_here():
    sections = dict(state_sections(fact_request(settings())))
    assert {"snap", "dockerpath"} <= set(BACKGROUND)
    script = "; ".join(f"( {command} )" for command in sections["snap"] + sections["dockerpath"])
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0 and run.stdout.splitlines()[0].startswith("command")


@pytest.mark.parametrize(("source", "installed", "engine"), [("official", "distro", "docker.io"),
                                                              ("distro", "official", "docker-ce")])
def test_someone_elses_engine_is_refused_on_a_host_hermes_infra_never_deployed(codename, source, installed, engine):
    with pytest.raises(PlanError) as error:
        make_plan(settings(docker={"install_source": source}), facts_of(recorded(HOSTS[codename], packages=installed)))
    message = str(error.value)
    other = "distro" if source == "official" else "official"
    assert f"docker.install_source is {source!r}" in message and f"{engine} is installed" in message
    assert f"docker.install_source: {other}" in message and f"apt-get remove {engine}" in message
    assert "nothing was changed" in message


def test_after_an_earlier_deploy_a_changed_install_source_replaces_the_engine(codename):
    host = settings()
    state = recorded(HOSTS[codename], packages="distro")
    state.root_files[manifest_path(host)] = root_file("{}\n")
    docker = make_plan(host, facts_of(state)).docker
    assert set(docker.conflicts_installed) == {"docker.io", "docker-compose-v2", "containerd", "runc"}


def test_the_same_holds_on_debian():
    host = settings()
    facts = hostfakes.fresh(packages={"docker.io": "installed"})
    with pytest.raises(PlanError, match="Debian's own Docker"):
        plan_for(host, facts)


# --- the repository URL and the version pin, by meaning -------------------------------------------

def test_a_debian_repository_url_on_an_ubuntu_host_is_refused_naming_the_setting(codename):
    host = settings(docker={"official_repo_url": "https://download.docker.com/linux/debian"})
    with pytest.raises(PlanError) as error:
        make_plan(host, facts_of(recorded(HOSTS[codename])))
    message = str(error.value)
    assert "docker.official_repo_url" in message and "https://download.docker.com/linux/debian" in message
    assert "Fix: remove docker.official_repo_url" in message and "https://download.docker.com/linux/ubuntu" in message


def test_an_ubuntu_url_on_debian_is_refused_and_unset_follows_debian():
    with pytest.raises(PlanError, match="docker.official_repo_url"):
        plan_for(settings(docker={"official_repo_url": "https://mirror.example/docker/linux/ubuntu/"}),
                 hostfakes.fresh())
    assert plan_for(settings(), hostfakes.fresh()).docker.repo_url == "https://download.docker.com/linux/debian"
    assert "Suites: trixie\n" in plan_for(settings(), hostfakes.fresh()).docker.sources.content


def test_an_explicit_mirror_url_is_kept(codename):
    for url in ("https://mirror.example/docker-ce", "https://mirror.example/docker/linux/ubuntu"):
        plan = make_plan(settings(docker={"official_repo_url": url}), facts_of(recorded(HOSTS[codename])))
        assert plan.docker.repo_url == url and f"URIs: {url}\n" in plan.docker.sources.content


def test_a_version_pin_built_for_another_release_is_refused():
    pin = "5:27.3.1-1~debian.13~trixie"
    with pytest.raises(PlanError) as error:
        make_plan(settings(docker={"version": pin}), facts_of(recorded(HOSTS["noble"])))
    assert "docker.version" in str(error.value) and pin in str(error.value) and "apt-cache madison" in str(error.value)
    with pytest.raises(PlanError, match="docker.version"):
        make_plan(settings(docker={"version": "5:27.3.1-1~ubuntu.22.04~jammy"}), facts_of(recorded(HOSTS["noble"])))
    plan = make_plan(settings(docker={"version": "5:27.3.1-1~ubuntu.24.04~noble"}), facts_of(recorded(HOSTS["noble"])))
    assert "docker-ce=5:27.3.1-1~ubuntu.24.04~noble" in plan.docker.packages
    assert plan_for(settings(docker={"version": pin}), hostfakes.fresh()).docker.packages[0] == f"docker-ce={pin}"


# --- apt's lock holders on Ubuntu ------------------------------------------------------------------

@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_the_lock_wait_names_unattended_upgrades_as_such(tmp_path):
    from tests.unit.test_aptwait import HOLDER

    root = tmp_path / "root"
    lock = root / "var/lib/dpkg/lock-frontend"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    # The kernel names a process after the file it was started from, cut to 15 characters.
    named = tmp_path / "unattended-upgrades"
    named.symlink_to(os.path.realpath(sys.executable))
    holder = subprocess.Popen([str(named), "-c", HOLDER, "20", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert Path(f"/proc/{holder.pid}/comm").read_text().strip() == "unattended-upgr"
        run = subprocess.run(["sh", "-c", aptwait.wait_for_apt_locks_script(0, root=str(root))],
                             capture_output=True, text=True, timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == aptwait.APT_LOCK_EXIT
    assert f"still held by unattended-upgrades (pid {holder.pid})" in run.stderr
    assert "systemctl stop packagekit" in run.stderr


def test_the_deploy_warning_names_the_holder_too():
    plan = plan_for(settings(), hostfakes.fresh(apt_lock_holder="812 apt.systemd.dai"))
    seen = []
    handler = type("H", (), {"level": 0, "handle": lambda self, record: seen.append(record.getMessage())})()
    logger.addHandler(handler)
    try:
        run_op(docker_engine.apt_locks_free, plan.docker)
    finally:
        logger.removeHandler(handler)
    assert any("held by apt.systemd.daily (apt-daily.service) (pid 812)" in line for line in seen)


# --- a Docker source left by Docker's install guide ------------------------------------------------

def with_sources(state: HostState, **files: str) -> HostState:
    """The read's `aptsources` section as it prints these files (each line behind "| ")."""
    lines = [f"{SECTION} aptsources"]
    for path, name in files.items():
        lines += [f"file /etc/apt/sources.list.d/{path.replace('_', '.')}",
                  *(f"| {line}" for line in (FIXTURES / "ubuntu_2404" / name).read_text().splitlines()), ""]
    state.apt_sources = parse_state(lines).apt_sources
    return state


def test_the_guides_docker_list_with_another_key_is_refused_before_apt_breaks():
    state = with_sources(recorded(HOSTS["noble"]), docker_list="docker.list-guide-2023")
    with pytest.raises(PlanError) as error:
        make_plan(settings(), facts_of(state))
    message = str(error.value)
    assert "/etc/apt/sources.list.d/docker.list already lists Docker's repository" in message
    assert "Signed-By /etc/apt/keyrings/docker.gpg" in message and "nothing was changed" in message
    assert "Fix: remove /etc/apt/sources.list.d/docker.list" in message


def test_the_same_key_a_commented_line_or_ubuntus_own_sources_are_no_conflict():
    for name in ("docker.list-guide-2024", "docker.list-disabled-on-upgrade", "ubuntu.sources"):
        state = with_sources(recorded(HOSTS["noble"]), docker_list=name)
        assert make_plan(settings(), facts_of(state)).docker.sources is not None, name
    # distro: hermes-infra writes no Docker source, so another one is not its business
    state = with_sources(recorded(HOSTS["noble"]), docker_list="docker.list-guide-2023")
    assert make_plan(settings(docker={"install_source": "distro"}), facts_of(state)).docker.sources is None


def test_deb822_sources_are_read_by_stanza():
    text = (FIXTURES / "ubuntu_2404" / "ubuntu.sources").read_text()
    entries = hostplan.apt_entries("/etc/apt/sources.list.d/ubuntu.sources", text)
    assert entries == [("http://archive.ubuntu.com/ubuntu", suite, "/usr/share/keyrings/ubuntu-archive-keyring.gpg")
                       for suite in ("noble", "noble-updates", "noble-backports")] + [
        ("http://security.ubuntu.com/ubuntu", "noble-security", "/usr/share/keyrings/ubuntu-archive-keyring.gpg")]
    inline = ("Types: deb\nURIs: https://download.docker.com/linux/ubuntu/\nSuites: noble\nComponents: stable\n"
              "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBFit2ioBEADhWpZ8\n")
    state = recorded(HOSTS["noble"])
    state.apt_sources = {"/etc/apt/sources.list.d/docker-ce.sources": RootFile(inline)}
    with pytest.raises(PlanError, match="with an inline key"):
        make_plan(settings(), facts_of(state))
    disabled = inline.replace("Types: deb\n", "Enabled: no\nTypes: deb\n")
    state.apt_sources = {"/etc/apt/sources.list.d/docker-ce.sources": RootFile(disabled)}
    assert make_plan(settings(), facts_of(state)).docker.sources is not None


def test_the_sources_read_asks_for_dockers_repositories_and_runs_here():
    request = fact_request(settings())
    assert request.apt_repositories == ("download.docker.com/linux/debian", "download.docker.com/linux/ubuntu")
    assert fact_request(settings(docker={"official_repo_url": "http://mirror.example/docker/"})).apt_repositories == (
        "mirror.example/docker",)
    assert fact_request(settings(docker={"install_source": "distro"})).apt_repositories == ()
    script = dict(state_sections(request))["aptsources"][0]
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0
    found = parse_state([f"{SECTION} aptsources", *run.stdout.splitlines()]).apt_sources
    assert all(path.startswith("/etc/apt/") and path != DOCKER_SOURCES for path in found)


def test_debian_12_keeps_dockers_debian_repository_and_its_own_suite():
    facts = dataclasses.replace(hostfakes.fresh(), os_release={
        "id": "debian", "version_codename": "bookworm", "pretty_name": "Debian GNU/Linux 12 (bookworm)"})
    docker = plan_for(settings(), facts).docker
    assert docker.repo_url == "https://download.docker.com/linux/debian" and "Suites: bookworm\n" in docker.sources.content


# --- compliance: the compose v2 control's fix names the package of this host's OS ------------------

def _compose_check(os_release: str, source: str, compose=None):
    from hermes_infra.checks.controls import get_control
    from hermes_infra.settings.schema import HostSettings
    from tests.unit.test_checks_controls import FakeHost, Out, context, outcome

    ids = [line.split("=", 1)[1] + "\n" for line in os_release.splitlines() if line.startswith("ID=")]
    host = FakeHost({"docker compose version": compose or Out(1, "docker: 'compose' is not a docker command.\n"),
                     "/etc/os-release": Out(0, "".join(ids))})
    result = outcome("HI-DOCKER-002", context(HostSettings(docker={"install_source": source}), host=host))
    return result, get_control("HI-DOCKER-002").remediation


@pytest.mark.parametrize(("host", "source", "package"), [
    ("noble", "distro", "docker-compose-v2"), ("jammy", "distro", "docker-compose-v2"),
    ("noble", "official", "docker-compose-plugin"), ("debian", "distro", "docker-compose"),
    ("debian", "official", "docker-compose-plugin")])
def test_the_compose_control_names_the_package_for_this_hosts_os(host, source, package):
    text = "ID=debian\n" if host == "debian" else (HOSTS[host] / "os-release").read_text()
    result, remediation = _compose_check(text, source)
    assert result.status == "failed"
    name = "Debian" if host == "debian" else "Ubuntu"
    assert result.message.endswith(f"On this {name} host with docker.install_source {source}: "
                                   f"`apt-get install {package}`"), result.message
    # The fix that every report prints names both OSes' packages.
    for named in ("`docker-compose-plugin`", "Debian 13's `docker-compose`", "Ubuntu's `docker-compose-v2`"):
        assert named in remediation


def test_the_compose_control_names_no_package_for_an_os_it_does_not_know():
    for text in ("ID=fedora\n", "ID=ubuntu; rm -rf /\n", ""):
        result, _ = _compose_check(text, "distro")
        assert result.status == "failed" and "apt-get install" not in result.message and "rm -rf" not in result.message
    from tests.unit.test_checks_controls import Out
    old, _ = _compose_check("ID=ubuntu\n", "distro", Out(0, "1.29.2\n"))
    assert "v2 or later is required. On this Ubuntu host" in old.message


# --- ufw, as Ubuntu's images ship it ---------------------------------------------------------------

@pytest.mark.parametrize(("ufw", "warned"), [("ufw installed active yes", True), ("ufw installed - no", False),
                                             ("ufw missing", False)], ids=["active", "as-shipped", "removed"])
def test_a_recorded_ubuntu_host_with_ufw_is_told_what_ufw_does_not_filter(codename, ufw, warned):
    from hermes_infra.host import hostfacts

    state = recorded(HOSTS[codename])
    state.firewall = hostfacts._firewall(["ssh 198.51.100.4 40000 10.0.0.5 22", "sshd 0.0.0.0:22", "nft", ufw])
    public = [{"name": "hermes", "api": {"port": 8643, "publish_addresses": ["0.0.0.0"], "allow_public": True}}]
    off = make_plan(settings(gateways=public), facts_of(state)).firewall
    on = make_plan(settings(gateways=public, firewall={"enabled": True, "allow": [8643]}), facts_of(state)).firewall
    assert [w.split(":")[0] for w in off.warnings] == (
        ["gateways[hermes].api is published on 0.0.0.0"] if warned else [])
    assert [w.split(";")[0] for w in on.warnings] == (
        ["ufw is active on this host beside hermes-infra's nftables table (table inet hermes_infra)"] if warned else [])
