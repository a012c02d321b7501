"""A `docker` for running the hosts' backup scripts in a scratch dir: `run` executes the real
copy program (`datatar.copy_program`) as the `--user` it names, in a private mount namespace
where its `--mount`s are bind mounts under a searchable dir (a scratch dir under root's 0700
/tmp/pytest-of-root is not searchable by uid 10000; in a container the mount is simply there)."""
from __future__ import annotations

FAKE_DOCKER = r'''#!/usr/bin/env python3
import os, subprocess, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["SANDBOX"], "docker.log"), "a") as log:
    log.write("docker " + " ".join(a if len(a) < 200 else "<program>" for a in args) + "\n")
if args[:1] == ["inspect"]:
    print(os.environ.get("FAKE_IMAGE", "sha256:" + "ab" * 32))
    sys.exit(0)
if args[:1] != ["run"]:
    sys.exit(0)
if "FAKE_RUN_RC" in os.environ:
    print("docker: Error response from daemon: fake failure", file=sys.stderr)
    sys.exit(int(os.environ["FAKE_RUN_RC"]))
valued = {"--name", "--pull", "--user", "--network", "--cap-drop", "--security-opt", "--pids-limit", "--workdir",
          "--entrypoint", "--mount"}
mounts, user, i = {}, None, 1
while args[i].startswith("--"):
    if args[i] == "--mount":
        fields = dict(f.split("=", 1) for f in args[i + 1].split(","))
        mounts[fields["dst"]] = fields["src"]
    if args[i] == "--user":
        user = args[i + 1].split(":")
    i += 2 if args[i] in valued else 1
rest = args[i + 1:]  # after the image: the python3 arguments
import shlex, tempfile
top = tempfile.mkdtemp(prefix="fake-container-")
os.chmod(top, 0o755)
points = {}
for n, (dst, src) in enumerate(mounts.items()):
    points[dst] = os.path.join(top, str(n))
    os.mkdir(points[dst])
binds = " && ".join(f"mount --bind {shlex.quote(mounts[d])} {shlex.quote(p)}" for d, p in points.items())
rest = [points.get(a, a) for a in rest]
inner = (f"{binds} && exec setpriv --reuid={user[0]} --regid={user[1]} --clear-groups -- /usr/bin/python3 "
         + " ".join(shlex.quote(a) for a in rest))
done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner])
for p in points.values():
    os.rmdir(p)
os.rmdir(top)
sys.exit(done.returncode)
'''


def install_fake_docker(bin_dir) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)


def make_state_db(path, rows: int = 3) -> None:
    """A WAL database like Hermes's state.db: `sessions` with `rows` rows, left open-looking (its
    -wal holds the rows: no checkpoint)."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE sessions (id TEXT)")
    db.executemany("INSERT INTO sessions VALUES (?)", [(f"s{i}",) for i in range(rows)])
    db.commit()
    db.close()


def corrupt_index(path) -> None:
    """Damage an index's pages of a (checkpointed) database so that the file still opens and copies
    but `PRAGMA integrity_check` fails."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("CREATE INDEX IF NOT EXISTS by_id ON sessions(id)")
    db.commit()
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='by_id'").fetchone()[0]
    db.close()
    with open(path, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        page = handle.read(page_size)
        handle.seek((root - 1) * page_size)
        # A key the table does not hold: the page stays well-formed, the index disagrees with the table.
        handle.write(page[:-page_size // 4] + page[-page_size // 4:].replace(b"s1", b"x1"))


def _can_run_fake_containers() -> bool:
    import os
    import subprocess
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return done.returncode == 0


CAN_RUN = _can_run_fake_containers()
"""Root with mount namespaces: what the fake `docker run` needs (setpriv, bind mounts)."""
