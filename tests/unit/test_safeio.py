"""safeio's shell, run for real on this machine against planted links, FIFOs, directories and
hard links (as root, like the deploy; the owner is a uid that owns nothing else here)."""
from __future__ import annotations

import os
import subprocess

import pytest

from hermes_infra.host import safeio

OWNER = 10000
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv to another uid)")


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=20)


@pytest.fixture
def data_dir(tmp_path):
    tmp_path.chmod(0o755)
    directory = tmp_path / "data"
    directory.mkdir(mode=0o700)
    os.chown(directory, OWNER, OWNER)
    secret = tmp_path / "root-only"
    secret.write_text("ROOT_ONLY_SECRET=1\n")
    secret.chmod(0o600)
    return directory, secret


def read(directory, *names):
    result = sh(safeio.read_script(str(directory), list(names), OWNER, OWNER, "t"))
    assert result.returncode == 0, result.stderr
    return safeio.parse_reads(result.stdout.splitlines())["t"]


def test_regular_file_is_read_with_its_owner_and_mode(data_dir):
    directory, _ = data_dir
    env = directory / ".env"
    env.write_text("A=1\n")
    os.chown(env, OWNER, OWNER)
    env.chmod(0o600)
    found = read(directory, ".env", "missing.yaml")
    assert found["dir"] == "present"
    assert found["files"][".env"].kind == "regular" and found["files"][".env"].text == "A=1\n"
    assert found["files"][".env"].owner == (OWNER, OWNER, "0600")
    assert found["files"]["missing.yaml"].kind == "missing"


def test_planted_things_are_classified_and_never_read(data_dir):
    directory, secret = data_dir
    (directory / "link").symlink_to(secret)
    os.mkfifo(directory / "fifo")
    (directory / "dir").mkdir()
    (directory / "hard").write_text("x")
    os.link(directory / "hard", directory / "hard2")
    found = read(directory, "link", "fifo", "dir", "hard")["files"]
    assert {name: item.kind for name, item in found.items()} == {
        "link": "symlink", "fifo": "fifo", "dir": "directory", "hard": "hardlink"}
    assert all(item.text is None for item in found.values())


def test_a_data_dir_that_is_a_link_is_not_entered(data_dir, tmp_path):
    directory, _ = data_dir
    (tmp_path / "linked").symlink_to(directory)
    assert read(tmp_path / "linked", ".env")["dir"] == "symlink"


def test_write_replaces_a_planted_link_instead_of_following_it(data_dir, tmp_path):
    directory, secret = data_dir
    (directory / ".env").symlink_to(secret)
    staged = tmp_path / "staged"
    staged.write_text("MANAGED=1\n")
    staged.chmod(0o600)
    result = sh(safeio.write_script(str(directory), ".env", str(staged), OWNER, OWNER))
    assert result.returncode == 0, result.stderr
    assert secret.read_text() == "ROOT_ONLY_SECRET=1\n" and secret.stat().st_uid == 0
    env = directory / ".env"
    assert not env.is_symlink() and env.read_text() == "MANAGED=1\n"
    assert (env.stat().st_uid, oct(env.stat().st_mode & 0o777)) == (OWNER, "0o600")
    assert sorted(p.name for p in directory.iterdir()) == [".env"]  # no temp file left


def test_write_over_a_directory_fails_and_leaves_no_temp(data_dir, tmp_path):
    directory, _ = data_dir
    (directory / ".env").mkdir()
    staged = tmp_path / "staged"
    staged.write_text("MANAGED=1\n")
    assert sh(safeio.write_script(str(directory), ".env", str(staged), OWNER, OWNER)).returncode != 0
    assert sorted(p.name for p in directory.iterdir()) == [".env"]


def test_backup_of_a_link_copies_nothing_from_behind_it(data_dir, tmp_path):
    directory, secret = data_dir
    (directory / ".env").symlink_to(secret)
    target = tmp_path / "backup"
    sh(safeio.backup_script(str(directory), ".env", OWNER, OWNER, str(target)))
    assert "ROOT_ONLY_SECRET" not in (target.read_text() if target.exists() else "")


def test_foreign_files_go_back_to_the_owner_but_links_and_hard_links_stay(data_dir, tmp_path):
    directory, secret = data_dir
    (directory / "by-root.md").write_text("note")
    (directory / "sub").mkdir()
    (directory / "sub" / "deep.md").write_text("deep")
    (directory / "escape").symlink_to(secret)
    os.lchown(directory / "escape", 0, 0)
    (directory / "hard").write_text("x")
    os.link(directory / "hard", tmp_path / "outside-hard")
    result = sh(safeio.chown_foreign_script(str(directory), OWNER, OWNER))
    assert result.returncode == 0, result.stderr
    for path in ("by-root.md", "sub", "sub/deep.md"):
        assert (directory / path).stat().st_uid == OWNER, path
    assert os.lstat(directory / "escape").st_uid == OWNER  # the link itself (-h)
    assert secret.stat().st_uid == 0  # not what it points to
    assert (tmp_path / "outside-hard").stat().st_uid == 0  # hard-linked files are left alone


# --- F1: device nodes, FIFOs and sockets planted by container root ------------------------------

def plant_device(path, major=1, minor=5, owner=OWNER):
    """A char device as container root would make it (`mknod .env c 1 5`: /dev/zero, endless)."""
    os.mknod(path, 0o666 | __import__("stat").S_IFCHR, os.makedev(major, minor))
    os.chown(path, owner, owner)


def test_foreign_device_nodes_fifos_and_sockets_are_never_handed_to_the_owner(data_dir):
    import socket

    directory, _ = data_dir
    plant_device(directory / "disk", 1, 3, owner=0)
    os.mkfifo(directory / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(directory / "sock"))
    (directory / "by-root.md").write_text("note")
    result = sh(safeio.chown_foreign_script(str(directory), OWNER, OWNER))
    assert result.returncode == 0, result.stderr
    assert (directory / "by-root.md").stat().st_uid == OWNER
    for name in ("disk", "pipe", "sock"):
        assert os.lstat(directory / name).st_uid == 0, name


def test_a_device_node_env_is_never_opened_even_when_the_owner_owns_it(data_dir):
    from hermes_infra.host.hostfacts import DataDirRequest, key_header_script

    directory, _ = data_dir
    plant_device(directory / ".env")  # owner-owned /dev/zero: a read never ends
    found = read(directory, ".env")["files"][".env"]
    assert found.kind == "other" and found.text is None
    script = key_header_script(DataDirRequest("t", str(directory), OWNER, OWNER))
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=5)
    assert result.returncode == 0 and result.stdout == ""


def test_the_key_header_reads_a_regular_env_capped(data_dir):
    from hermes_infra.host.hostfacts import DataDirRequest, key_header_script

    directory, _ = data_dir
    env = directory / ".env"
    env.write_text("A=1\nAPI_SERVER_KEY=first-key-0123456789\n" + "#" * safeio.MAX_ENV_BYTES + "\nAPI_SERVER_KEY=late\n")
    os.chown(env, OWNER, OWNER)
    script = key_header_script(DataDirRequest("t", str(directory), OWNER, OWNER))
    result = sh(script)
    assert result.stdout == "Authorization: Bearer first-key-0123456789\n"


def test_the_owner_believes_only_the_inode_root_checked(data_dir, tmp_path):
    """A swap between root's lstat and the owner's open (to a link, a device, another file) is
    caught on the opened fd: nothing is printed."""
    directory, _ = data_dir
    env = directory / ".env"
    env.write_text("API_SERVER_KEY=x\n")
    other = directory / "other"
    other.write_text("API_SERVER_KEY=other\n")
    for path in (env, other):
        os.chown(path, OWNER, OWNER)
    st = env.stat()
    inner = safeio._OWNER_OPEN

    def open_as_owner(expected: str, name: str = ".env") -> str:
        return subprocess.run(["setpriv", f"--reuid={OWNER}", f"--regid={OWNER}", "--clear-groups", "--",
                               "sh", "-c", inner, "sh", expected, name, "100"], cwd=directory,
                              capture_output=True, text=True, timeout=10).stdout

    assert open_as_owner(f"{st.st_dev}:{st.st_ino}") == "API_SERVER_KEY=x\n"
    assert open_as_owner(f"{st.st_dev}:{st.st_ino}", "other") == ""  # swapped for another file
    env.unlink()
    env.symlink_to(other)
    assert open_as_owner(f"{st.st_dev}:{st.st_ino}") == ""  # swapped for a link
    env.unlink()
    plant_device(env)
    assert open_as_owner(f"{env.lstat().st_dev}:{env.lstat().st_ino}") == ""  # a device, even its own inode


def replaced_once_during_the_first_read(tmp_path, path, new_text: str) -> dict[str, str]:
    """An environment whose `stat` replaces `path` by rename (as Hermes writes jobs.json) right
    after the first lstat of a read, once: the owner then opens the new file, so the read saw the
    path change under it."""
    shim = tmp_path / "shim"
    shim.mkdir()
    real = subprocess.run(["sh", "-c", "command -v stat"], capture_output=True, text=True).stdout.strip()
    (shim / "stat").write_text(
        "#!/bin/sh\n"
        f"{real} \"$@\"; rc=$?\n"
        f"if [ ! -e {tmp_path}/replaced ]; then : > {tmp_path}/replaced; "
        f"printf %s {new_text!r} > {path}.tmp && chown {OWNER}:{OWNER} {path}.tmp && mv {path}.tmp {path}; fi\n"
        "exit $rc\n")
    (shim / "stat").chmod(0o755)
    return {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}


def test_a_file_replaced_by_rename_during_the_read_is_read_again(data_dir, tmp_path):
    directory, _ = data_dir
    jobs = directory / "jobs.json"
    jobs.write_text('{"jobs": []}')
    os.chown(jobs, OWNER, OWNER)
    env = replaced_once_during_the_first_read(tmp_path, jobs, '{"jobs": [1]}')
    result = subprocess.run(["sh", "-c", safeio.read_script(str(directory), ["jobs.json"], OWNER, OWNER, "t")],
                            capture_output=True, text=True, timeout=20, env=env)
    found = safeio.parse_reads(result.stdout.splitlines())["t"]["files"]["jobs.json"]
    assert (tmp_path / "replaced").exists(), "the shim never replaced the file: the test proves nothing"
    assert found.kind == "regular" and found.text == '{"jobs": [1]}', found


def test_a_file_replaced_on_every_read_is_reported_changed(data_dir, tmp_path, monkeypatch):
    directory, _ = data_dir
    (directory / "jobs.json").write_text("{}")
    os.chown(directory / "jobs.json", OWNER, OWNER)
    monkeypatch.setattr(safeio, "READ_ATTEMPTS", 1)  # one read: the one the shim races
    env = replaced_once_during_the_first_read(tmp_path, directory / "jobs.json", "{}")
    result = subprocess.run(["sh", "-c", safeio.read_script(str(directory), ["jobs.json"], OWNER, OWNER, "t")],
                            capture_output=True, text=True, timeout=20, env=env)
    assert safeio.parse_reads(result.stdout.splitlines())["t"]["files"]["jobs.json"].kind == "changed"
