"""Fast unit tests of hermes_infra.localvm: no image builds, no VM boots, no network."""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hermes_infra.localvm import accel as accel_mod
from hermes_infra.localvm import image as image_mod
from hermes_infra.localvm import lifecycle
from hermes_infra.localvm.errors import ImageBuildError, LocalVMError, VMNotFound
from hermes_infra.localvm.image import ensure_image, find_image
from hermes_infra.localvm.ports import free_port, free_ports, port_is_free
from hermes_infra.localvm.qemu import QemuSpec, is_vm_process, pid_alive, qemu_command, terminate
from hermes_infra.localvm.recipe import BASE_PACKAGES, ImageRecipe, recipe_hash, recipe_inputs
from hermes_infra.localvm.ssh import SSHConnection, known_hosts_lines
from hermes_infra.localvm.state import VMState, load_state, save_state
from hermes_infra.localvm.vm import LocalVM, list_vms, vm_dir


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache, mirror and CA set: nothing depends on this machine."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HERMES_INFRA_CACHE", str(cache))
    monkeypatch.setenv("HERMES_INFRA_MIRROR", "http://mirror.example/debian")
    monkeypatch.delenv("HERMES_INFRA_ACCEL", raising=False)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "proxy.crt").write_text("CERT-1")
    monkeypatch.setattr("hermes_infra.localvm.recipe.extra_ca_certificates", lambda: sorted(certs.glob("*.crt")))
    return cache


# ------------------------------------------------------------------------ recipe hash
def test_recipe_hash_is_stable():
    assert recipe_hash(ImageRecipe()) == recipe_hash(ImageRecipe())
    assert len(recipe_hash(ImageRecipe())) == 16


def test_recipe_hash_ignores_package_order_and_duplicates():
    shuffled = tuple(reversed(BASE_PACKAGES)) + (BASE_PACKAGES[0],)
    assert recipe_hash(ImageRecipe(packages=shuffled)) == recipe_hash(ImageRecipe())


@pytest.mark.parametrize(
    "change",
    [
        {"packages": BASE_PACKAGES + ("vim",)},
        {"packages": BASE_PACKAGES[1:]},
        {"suite": "bookworm"},
        {"mirror": "http://other.example/debian"},
        {"disk_size": "20G"},
        {"hostname": "other"},
        {"include_ca_certs": False},
        {"security_updates": False},
        {"configure_script": ImageRecipe().configure_script + "\necho extra\n"},
    ],
)
def test_recipe_hash_changes_with_every_input(change):
    assert recipe_hash(dataclasses.replace(ImageRecipe(), **change)) != recipe_hash(ImageRecipe())


def test_recipe_hash_follows_ca_contents_and_mirror_env(tmp_path, monkeypatch):
    before = recipe_hash(ImageRecipe())
    (tmp_path / "certs" / "proxy.crt").write_text("CERT-ROTATED")
    rotated = recipe_hash(ImageRecipe())
    assert rotated != before
    monkeypatch.setenv("HERMES_INFRA_MIRROR", "http://elsewhere.example/debian/")
    assert recipe_hash(ImageRecipe()) != rotated
    assert recipe_inputs(ImageRecipe())["mirror"] == "http://elsewhere.example/debian"


def test_recipe_hash_changes_with_recipe_version(monkeypatch):
    before = recipe_hash(ImageRecipe())
    monkeypatch.setattr("hermes_infra.localvm.recipe.RECIPE_VERSION", 999)
    assert recipe_hash(ImageRecipe()) != before


def test_base_packages_match_the_product_recipe():
    assert "docker.io" not in BASE_PACKAGES  # the toolkit installs docker itself
    for pkg in ("openssh-server", "linux-image-amd64", "systemd-sysv", "python3", "e2fsprogs"):
        assert pkg in BASE_PACKAGES


# ----------------------------------------------------------------------- image cache
def _fake_build(recipe, work):
    for name in ("base.qcow2", "vmlinuz", "initrd.img", "id_ed25519", "ssh_host_keys.pub"):
        (work / name).write_text(name)


def test_image_is_built_once_then_found(monkeypatch):
    calls = []
    monkeypatch.setattr(image_mod, "_build", lambda r, w: (calls.append(w), _fake_build(r, w)))
    assert find_image() is None
    first = ensure_image()
    second = ensure_image()
    assert first == second == find_image()
    assert len(calls) == 1
    assert first.recipe_hash == recipe_hash(ImageRecipe())
    assert first.directory.name == first.recipe_hash
    # the temp build dir was renamed away, not left behind
    assert [p.name for p in image_mod.images_dir().glob(".build-*")] == []


def test_new_recipe_builds_a_new_image(monkeypatch):
    monkeypatch.setattr(image_mod, "_build", _fake_build)
    a = ensure_image()
    b = ensure_image(ImageRecipe(packages=BASE_PACKAGES + ("vim",)))
    assert a.directory != b.directory and a.is_complete() and b.is_complete()


def test_failed_build_leaves_no_cache_entry(monkeypatch):
    def broken(recipe, work):
        (work / "base.qcow2").write_text("half")
        raise ImageBuildError("debootstrap failed")

    monkeypatch.setattr(image_mod, "_build", broken)
    with pytest.raises(ImageBuildError):
        ensure_image()
    assert find_image() is None
    assert [p.name for p in image_mod.images_dir().iterdir() if not p.name.endswith(".lock")] == []


def test_stale_build_dirs_are_removed(monkeypatch):
    monkeypatch.setattr(image_mod, "_build", _fake_build)
    stale = image_mod.images_dir() / f".build-{recipe_hash(ImageRecipe())}-99999"
    stale.mkdir()
    ensure_image()
    assert not stale.exists()


def test_build_requires_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageBuildError, match="root"):
        ensure_image()


# -------------------------------------------------------------------------- qemu argv
def _spec(tmp_path, **kw):
    base = dict(
        name="hermes-t", kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img",
        overlay=tmp_path / "vm.qcow2", serial_log=tmp_path / "serial.log", pidfile=tmp_path / "vm.pid",
        ssh_port=2222, forwards={8642: 18642, 80: 18080},
    )
    base.update(kw)
    return QemuSpec(**base)


def _netdev(cmd):
    return cmd[cmd.index("-netdev") + 1]


def test_qemu_forwards_bind_loopback_only(tmp_path):
    cmd = qemu_command(_spec(tmp_path))
    rules = [part for part in _netdev(cmd).split(",") if part.startswith("hostfwd=")]
    assert rules == [
        "hostfwd=tcp:127.0.0.1:2222-:22",
        "hostfwd=tcp:127.0.0.1:18080-:80",
        "hostfwd=tcp:127.0.0.1:18642-:8642",
    ]
    assert all(r.startswith("hostfwd=tcp:127.0.0.1:") for r in rules)


def test_qemu_tcg_command_line(tmp_path):
    cmd = qemu_command(_spec(tmp_path))
    assert cmd[cmd.index("-accel") + 1] == "tcg,thread=multi,tb-size=256"
    assert cmd[cmd.index("-cpu") + 1] == "max"
    assert cmd[cmd.index("-m") + 1] == "3072" and cmd[cmd.index("-smp") + 1] == "2"
    # the HPET, not the TSC, as the guest's clock: a restored snapshot answers at once (qemu.py)
    assert cmd[cmd.index("-append") + 1] == "root=/dev/vda rw console=ttyS0 net.ifnames=0 clocksource=hpet"
    assert f"file={tmp_path / 'vm.qcow2'},if=virtio,format=qcow2,cache=unsafe" in cmd
    assert "-daemonize" in cmd and cmd[cmd.index("-pidfile") + 1] == str(tmp_path / "vm.pid")
    assert cmd[cmd.index("-serial") + 1] == f"file:{tmp_path / 'serial.log'}"
    assert "-monitor" not in cmd


def test_qemu_kvm_command_line_and_sizes(tmp_path):
    cmd = qemu_command(_spec(tmp_path, accel="kvm", memory_mb=4096, cpus=4, monitor=tmp_path / "m.sock"))
    assert cmd[cmd.index("-accel") + 1] == "kvm" and cmd[cmd.index("-cpu") + 1] == "host"
    assert cmd[cmd.index("-m") + 1] == "4096" and cmd[cmd.index("-smp") + 1] == "4"
    assert cmd[cmd.index("-monitor") + 1] == f"unix:{tmp_path / 'm.sock'},server=on,wait=off"


@pytest.mark.parametrize("bad", [0, 70000, "22"])
def test_qemu_rejects_bad_ports(tmp_path, bad):
    with pytest.raises(ValueError):
        qemu_command(_spec(tmp_path, forwards={8642: bad}))


# ------------------------------------------------------------------------------ accel
def test_accel_is_tcg_without_vmx_or_svm(monkeypatch):
    monkeypatch.setattr(accel_mod, "cpu_has_virtualization", lambda: False)
    monkeypatch.setattr(accel_mod, "probe_kvm", lambda *a: pytest.fail("must not probe"))
    assert accel_mod.detect_accel(Path("/nonexistent/vmlinuz")) == "tcg"


def test_accel_kvm_only_after_a_probe_boot_and_cached(monkeypatch, isolated_cache):
    probes = []
    monkeypatch.setattr(accel_mod, "cpu_has_virtualization", lambda: True)
    monkeypatch.setattr(accel_mod, "kvm_device_usable", lambda: True)
    monkeypatch.setattr(accel_mod, "probe_kvm", lambda k, q="": probes.append(k) or False)
    monkeypatch.setattr(accel_mod, "_memo", {})
    assert accel_mod.detect_accel(Path("k")) == "tcg"  # /dev/kvm there, but the probe failed
    monkeypatch.setattr(accel_mod, "_memo", {})
    assert accel_mod.detect_accel(Path("k")) == "tcg"  # from accel.json, no second probe
    assert len(probes) == 1 and (isolated_cache / "accel.json").exists()


def test_accel_override(monkeypatch):
    monkeypatch.setenv("HERMES_INFRA_ACCEL", "kvm")
    assert accel_mod.detect_accel(None) == "kvm"


def test_cpu_flags_parsing():
    assert accel_mod.cpu_has_virtualization("flags\t\t: fpu vme sse2 vmx ept\n")
    assert accel_mod.cpu_has_virtualization("flags\t\t: fpu svm\n")
    assert not accel_mod.cpu_has_virtualization("flags\t\t: fpu vme sse2 hypervisor\n")


# ------------------------------------------------------------------------------ ports
def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        assert 1024 <= port < 65536 and port_is_free(port)


def test_busy_port_is_not_free():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])
    assert isinstance(free_port(), int)


# ------------------------------------------------------------------------------ state
def _state(tmp_path, name="t1"):
    return VMState(
        name=name, pid=4242, ssh_port=2222, forwards={8642: 18642},
        key_path=tmp_path / "id_ed25519", overlay=tmp_path / "vm.qcow2",
        known_hosts=tmp_path / "known_hosts", kernel=tmp_path / "vmlinuz", recipe_hash="abc",
        memory_mb=3072, cpus=2, accel="tcg", started_at=1.5,
    )


def test_state_round_trip(tmp_path):
    state = _state(tmp_path)
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded == state
    assert loaded.forwards == {8642: 18642} and isinstance(loaded.key_path, Path)
    assert not list(tmp_path.glob(".state.json.*"))  # atomic write left no temp file


def test_load_finds_vm_by_name_and_reports_it_stopped(tmp_path):
    directory = vm_dir("t1")
    directory.mkdir(parents=True)
    save_state(directory, _state(tmp_path))
    vm = LocalVM.load("t1")
    assert vm.ssh_port == 2222 and vm.host_port(8642) == 18642 and vm.host_port(22) == 2222
    assert not vm.is_running()  # pid 4242 is not a QEMU running this overlay
    assert [v.name for v in list_vms()] == ["t1"]
    vm.destroy()
    assert not directory.exists()
    with pytest.raises(VMNotFound):
        LocalVM.load("t1")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 80])
def test_vm_names_are_validated(bad):
    with pytest.raises(ValueError):
        vm_dir(bad)


# --------------------------------------------------------------------- process safety
def test_terminate_never_signals_a_process_that_is_not_this_vms_qemu(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(30)  # {tmp_path}/vm.qcow2"])
    try:
        assert pid_alive(proc.pid)
        assert not is_vm_process(proc.pid, tmp_path / "vm.qcow2")  # names the overlay, but is not qemu
        terminate(proc.pid, tmp_path / "vm.qcow2", grace=0.5)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert not pid_alive(proc.pid)


# ------------------------------------------------------------------------- ssh/pyinfra
def test_connection_info(tmp_path):
    conn = SSHConnection(port=2222, key_path=tmp_path / "k", known_hosts=tmp_path / "kh")
    host, data = conn.pyinfra_host("hermes-vm-try")
    assert host == "hermes-vm-try"
    assert data["ssh_hostname"] == "127.0.0.1" and data["ssh_port"] == 2222 and data["ssh_user"] == "root"
    assert data["ssh_key"] == str(tmp_path / "k") and data["ssh_strict_host_key_checking"] == "yes"
    argv = conn.ssh_command("true")
    assert argv[-3:] == ["root@127.0.0.1", "--", "true"] and "BatchMode=yes" in argv
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in argv


def test_known_hosts_pins_keys_for_the_forwarded_port():
    text = known_hosts_lines("ssh-ed25519 AAAA root@x\necdsa-sha2-nistp256 BBBB\n\n", 2222)
    assert text == "[127.0.0.1]:2222 ssh-ed25519 AAAA\n[127.0.0.1]:2222 ecdsa-sha2-nistp256 BBBB\n"


# ------------------------------------------------------------------------ disposable vm
class _FakeVM:
    def __init__(self, name):
        self.name, self.destroyed = name, False

    def wait_for_ssh(self, timeout):
        return 0.0

    def destroy(self):
        self.destroyed = True


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_disposable_vm_is_destroyed_on_any_exit(monkeypatch, exc):
    made = []
    # A private registry: in a full run the e2e session VM is tracked in this process too.
    monkeypatch.setattr(lifecycle, "_live", {})
    monkeypatch.setattr(lifecycle, "ensure_image", lambda recipe=None: "image")
    def fake_boot(cls, name, image, **kw):
        made.append(_FakeVM(name))
        return made[-1]

    monkeypatch.setattr(lifecycle.LocalVM, "boot", classmethod(fake_boot))
    with pytest.raises(exc):
        with lifecycle.disposable_vm("unit") as vm:
            assert vm.name.startswith(f"unit-{os.getpid()}-")
            raise exc()
    assert made[0].destroyed and lifecycle._live == {}


def test_atexit_net_destroys_leftovers(monkeypatch):
    monkeypatch.setattr(lifecycle, "_live", {})  # never the e2e session's real VM
    vm = _FakeVM("left")
    lifecycle._track(vm)
    lifecycle.destroy_leftover_vms()
    assert vm.destroyed and lifecycle._live == {}


def test_prune_keeps_current_and_in_use_images(monkeypatch, tmp_path):
    monkeypatch.setattr(image_mod, "_build", _fake_build)
    current = ensure_image()
    old = ensure_image(ImageRecipe(hostname="old"))
    in_use = ensure_image(ImageRecipe(hostname="in-use"))
    directory = vm_dir("user")
    directory.mkdir(parents=True)
    save_state(directory, dataclasses.replace(_state(tmp_path, "user"), recipe_hash=in_use.recipe_hash))
    removed = lifecycle.prune_images()
    assert removed == [old.directory]
    assert current.is_complete() and in_use.is_complete() and not old.directory.exists()


# ------------------------------------------------------------------------- saved disks
class _FakeMonitor:
    """QEMU's HMP as `save_disk` sees it: a backup job that runs for `polls` queries."""

    def __init__(self, polls: int = 2, refuse: str = ""):
        self.commands: list[str] = []
        self.polls, self.refuse = polls, refuse

    def __call__(self, sock, command, timeout=5.0):
        self.commands.append(command)
        if command.startswith("drive_backup"):
            if not self.refuse:
                Path(command.split()[2]).write_bytes(b"QFI\xfb")
            return self.refuse
        self.polls -= 1
        return "Type backup, device virtio0: Completed 1 of 2 bytes" if self.polls > 0 else "No active jobs"


def _running_vm(tmp_path, monkeypatch, monitor):
    directory = vm_dir("saver")
    directory.mkdir(parents=True)
    (directory / "monitor.sock").touch()
    save_state(directory, _state(tmp_path))
    vm = LocalVM.load("saver")
    ran = []
    monkeypatch.setattr(LocalVM, "is_running", lambda self: True)
    monkeypatch.setattr(LocalVM, "ssh", lambda self, command, **kw: ran.append(command) or None)
    monkeypatch.setattr("hermes_infra.localvm.vm.monitor_command", monitor)
    return vm, ran


def test_save_disk_flushes_the_guest_then_waits_for_the_backup_job(tmp_path, monkeypatch):
    monitor = _FakeMonitor(polls=3)
    vm, ran = _running_vm(tmp_path, monkeypatch, monitor)
    target = tmp_path / "saved.qcow2"
    assert vm.save_disk(target) == target
    assert ran == ["sync"]  # before the copy starts, or the copy misses the guest's page cache
    assert monitor.commands == [f"drive_backup virtio0 {target} qcow2"] + ["info block-jobs"] * 3
    assert oct(target.stat().st_mode & 0o777) == "0o600"  # it holds the guest's API keys


def test_save_disk_never_overwrites_and_reports_what_qemu_refused(tmp_path, monkeypatch):
    vm, _ = _running_vm(tmp_path, monkeypatch, _FakeMonitor(refuse="Could not create image: Permission denied"))
    existing = tmp_path / "existing.qcow2"
    existing.write_bytes(b"keep")
    with pytest.raises(LocalVMError, match="never overwritten"):
        vm.save_disk(existing)
    assert existing.read_bytes() == b"keep"
    with pytest.raises(LocalVMError, match="Permission denied"):
        vm.save_disk(tmp_path / "new.qcow2")


def test_saved_state_is_restored_and_the_guest_clock_set_from_this_machine(tmp_path, monkeypatch):
    sent = []
    vm, ran = _running_vm(tmp_path, monkeypatch, lambda sock, command, timeout=5.0: sent.append(command) or "")
    monkeypatch.setattr(LocalVM, "wait_for_ssh", lambda self, timeout=0: 0.0)
    monkeypatch.setattr("hermes_infra.localvm.vm.time.time", lambda: 1796150000.7)
    vm.save_state("pristine")
    vm.restore_state("pristine")
    assert sent == ["savevm pristine", "loadvm pristine"]
    assert ran == ["date -u -s @1796150000 >/dev/null"]  # the guest resumes at its saved time otherwise


@pytest.mark.parametrize("tag", ["", "a b", "x;quit", "-x"])
def test_snapshot_tags_are_validated_before_reaching_the_monitor(tmp_path, monkeypatch, tag):
    vm, _ = _running_vm(tmp_path, monkeypatch, lambda *a, **k: pytest.fail("reached the monitor"))
    with pytest.raises(ValueError):
        vm.save_state(tag)


def test_a_failed_loadvm_is_an_error_not_a_silent_old_state(tmp_path, monkeypatch):
    vm, _ = _running_vm(tmp_path, monkeypatch, lambda sock, command, timeout=5.0: "Snapshot 'x' does not exist")
    with pytest.raises(LocalVMError, match="does not exist"):
        vm.restore_state("x")


def test_local_vm_inventory_data_is_never_refused_as_unknown():
    """settings/ cannot import localvm/ (a later stage), so the names it sets must be pyinfra's own."""
    from hermes_infra.localvm.ssh import SSHConnection
    from hermes_infra.settings.loading import pyinfra_data_names

    for known_hosts in (None, Path("known_hosts")):
        data = SSHConnection(port=2222, key_path=Path("key"), known_hosts=known_hosts).pyinfra_data()
        assert set(data) <= pyinfra_data_names()


# --- F5: nothing in the cache is readable by another local user ----------------------------------

def test_cache_vm_and_image_dirs_are_private_even_when_an_older_release_made_them_0755(tmp_path, monkeypatch):
    from hermes_infra.host import hostenv
    from hermes_infra.localvm.vm import vms_dir

    cache = tmp_path / "shared-cache"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)  # as an older hermes-infra (default umask) left it
    monkeypatch.setenv("HERMES_INFRA_CACHE", str(cache))
    previous = os.umask(0o022)
    try:
        for path in (hostenv.cache_dir(), vms_dir(), image_mod.images_dir(), vm_dir("try")):
            if not path.exists():
                hostenv.private_dir(path)
            assert path.stat().st_mode & 0o777 == 0o700, path
    finally:
        os.umask(previous)


def test_the_vm_overlay_is_owner_only(tmp_path):
    from hermes_infra.localvm.qemu import create_overlay

    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    previous = os.umask(0o022)
    try:
        create_overlay(base, tmp_path / "vm.qcow2")
    finally:
        os.umask(previous)
    assert (tmp_path / "vm.qcow2").stat().st_mode & 0o777 == 0o600
