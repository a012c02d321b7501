"""Off-host backups on real VMs (issue 20, items 2 and 4): the session VM sends its backups to a
restic repository over SFTP on the second VM (its own sshd, reached through QEMU's host address
10.0.2.2 and the second VM's forwarded SSH port), and the second VM, redeployed with the same
repository settings, restores the data dir from the repository alone: the planted WeChat login,
pairing, session and cron files identical, the same rows (including a table written to while
the backup ran), the same API key, a healthy gateway. The repository grows little on the second
run (deduplication of the uncompressed tar).

Both VMs are put back as found: the planted state, the tables, the offsite records and files,
the key authorized on the second VM, the repository and the restic package are removed, and both
are redeployed with default settings."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time

from hermes_infra.daytwo import backup as backup_cmd
from hermes_infra.daytwo import offsite as offsite_cmd
from hermes_infra.daytwo import remote, status
from tests.e2e.test_bootstrap import wait_healthy
from tests.e2e.test_daytwo import API, DATA, PLANTED, as_owner, in_gateway, plant

REPO_DIR = "/var/lib/e2e-restic"
PASSWORD = "e2e-offsite-Q8vT2mZp9Lx4Rn7wK3s"
RECORDS = "/var/backups/hermes-infra/offsite"
# The figures are for a state.db of at least 50 MB: HERMES_INFRA_E2E_STATE_MB=50 grows it
# (incompressible rows) before the first backup. CI leaves it small: the path is the same.
STATE_MB = int(os.environ.get("HERMES_INFRA_E2E_STATE_MB", "0"))
STATIC = "e2e-static.bin"
LIVE_WRITER = ("import sqlite3, time\n"
               "c = sqlite3.connect('state.db', timeout=30)\n"
               "c.execute('create table if not exists e2e_live (n integer, at real)')\n"
               "c.commit()\n"
               "for n in range(600):\n"
               "    c.execute('insert into e2e_live values (?, ?)', (n, time.time())); c.commit(); time.sleep(0.05)\n")


def _sftp_settings(second_vm, tmp_path) -> dict:
    """A repository on the second VM over SFTP, with a key made for this test only and the
    second VM's real host key (read from the VM itself: nothing is trusted on first use)."""
    key = tmp_path / "offsite_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e-offsite", "-f", str(key)], check=True)
    public = (tmp_path / "offsite_ed25519.pub").read_text().strip()
    second_vm.run(f"install -d -m 0700 /root/.ssh {REPO_DIR} && printf '%s\\n' "
                  f"{shlex.quote('restrict ' + public)} >> /root/.ssh/authorized_keys")
    host_key = " ".join(second_vm.run("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2])
    return {"repository": f"sftp://root@10.0.2.2:{second_vm.vm.ssh_port}/{REPO_DIR}", "password": PASSWORD,
            "sftp_private_key": key.read_text(), "sftp_host_keys": [host_key],
            # One a day and nothing else: restic 0.17 and later (Debian 13 has 0.18) also keep a
            # group's oldest snapshot while the history is shorter than a --keep-* option asks
            # for, so with 7 days (or the weekly and monthly defaults) both of today's would stay.
            "keep_daily": 1, "keep_weekly": 0, "keep_monthly": 0,
            "read_data_percent": 100, "read_data_every_days": 1}


def _repo_bytes(second_vm) -> int:
    return int(second_vm.run(f"du -sb {REPO_DIR} | cut -f1").strip())


def test_backups_go_off_host_and_a_new_host_restores_from_the_repository_alone(deployed, second_vm, tmp_path):
    off = _sftp_settings(second_vm, tmp_path)
    sections = {"scheduled_backups": {"schedule": "daily", "offsite": off}}
    rows = [("alpha",), ("beta",), ("gamma",)]
    try:
        run = deployed.deploy(**sections)
        assert run.returncode == 0, run.output[-4000:]
        assert PASSWORD not in run.output and "PRIVATE KEY" not in run.output
        modes = deployed.run("stat -c '%n %a %u' /etc/hermes-infra/offsite/env /etc/hermes-infra/offsite/password "
                             "/etc/hermes-infra/offsite/sftp_key /usr/local/sbin/hermes-infra-offsite").split("\n")
        assert modes[:4] == ["/etc/hermes-infra/offsite/env 600 0", "/etc/hermes-infra/offsite/password 600 0",
                             "/etc/hermes-infra/offsite/sftp_key 600 0", "/usr/local/sbin/hermes-infra-offsite 700 0"]
        for script in ("/usr/local/sbin/hermes-infra-offsite", "/usr/local/sbin/hermes-infra-restic",
                       "/usr/local/sbin/hermes-infra-backup", "/etc/systemd/system/hermes-infra-backup.service"):
            assert PASSWORD not in deployed.run(f"cat {script}")

        plant(deployed, PLANTED[0], json.dumps({"token": "wx-login-state", "account_id": "e2e-bot"}))
        plant(deployed, PLANTED[1], json.dumps({"wxid_paired": {"user_name": "P", "approved_at": 1.0}}))
        plant(deployed, PLANTED[2], json.dumps({"jobs": [{"id": "e2e", "schedule": "0 8 * * *", "prompt": "hi"}]}))
        plant(deployed, PLANTED[3], json.dumps({"messages": [{"role": "user", "content": "hello"}]}))
        # What does not change between two runs must not be stored twice: restic's chunks are 512 KiB
        # to 8 MiB, so a data dir of a few hundred KB is one chunk that any write renews. 16 MiB that
        # stay the same (incompressible, as a WeChat media cache is) make the deduplication measurable.
        deployed.run(as_owner(f"head -c {16 << 20} /dev/urandom > {STATIC}"))
        deployed.run(in_gateway("import sqlite3; c = sqlite3.connect('state.db'); "
                                "c.execute('create table if not exists e2e_rows (v text)'); "
                                f"c.executemany('insert into e2e_rows values (?)', {rows!r}); c.commit()"))
        if STATE_MB:
            deployed.run(in_gateway("import os, sqlite3; c = sqlite3.connect('state.db'); "
                                    "c.execute('create table if not exists e2e_bulk (b blob)'); "
                                    f"[c.execute('insert into e2e_bulk values (?)', (os.urandom(1 << 20),)) "
                                    f"for _ in range({STATE_MB})]; c.commit()"), timeout=600)
            print(f"\n[size] state.db: {deployed.run(f'stat -c %s {DATA}/state.db').strip()} bytes")
        key = deployed.api_key()
        # Rows are written while the manual backup runs (the gateway's own writes go on too).
        deployed.run(f"docker exec -d -w /opt/data hermes python3 -c {shlex.quote(LIVE_WRITER)}")
        time.sleep(2)
        started = time.monotonic()
        # In process, as `hermes-infra backup` runs it, with the offsite settings (which carry the
        # repository's password and key: never on a command line).
        said: list[str] = []
        [host] = remote.resolve(deployed.target(**sections))
        made = backup_cmd.backup([host], None, tmp_path / "backups", say=said.append)
        first_seconds = time.monotonic() - started
        assert len(made) == 1 and "off-host snapshot made, pruned and checked" in said[-1], said
        assert not any(PASSWORD in line for line in said)
        first = json.loads(deployed.run(f"cat {RECORDS}/hermes.last.json"))
        assert (first["result"], first["source"], first["kind"]) == ("success", "manual", "offsite")
        assert first["bytes_added"] > 0 and len(first["snapshot"]) >= 8
        assert deployed.run(f"stat -c '%a' {RECORDS} {RECORDS}/hermes.last.json").split() == ["700", "600"]
        after_first = _repo_bytes(second_vm)

        # The second run is the timer's own (the systemd service, as the schedule starts it).
        started = time.monotonic()
        deployed.run("systemctl start hermes-infra-backup.service", timeout=900)
        second_seconds = time.monotonic() - started
        second = json.loads(deployed.run(f"cat {RECORDS}/hermes.last.json"))
        assert (second["result"], second["source"]) == ("success", "scheduled"), second
        grown = _repo_bytes(second_vm) - after_first
        print(f"\n[timing] first off-host backup {first_seconds:.1f}s: repository {after_first} bytes "
              f"(tar {first['bytes']}, added {first['bytes_added']}); second run ({second_seconds:.1f}s) added "
              f"{second['bytes_added']}, "
              f"the repository grew by {grown} bytes")
        assert second["bytes_added"] < first["bytes_added"] / 2, "the unchanged part is deduplicated"
        assert grown < after_first / 2

        shown = status.render_text(status.collect([host]))
        assert f"hermes last good off-host backup: {second['time']}" in shown, shown
        listed = offsite_cmd.render_snapshots(offsite_cmd.list_snapshots(host))
        # keep_daily 1: two snapshots of one day leave the newer (forget --prune ran)
        assert second["snapshot"][:8] in listed and "scheduled" in listed, listed
        assert first["snapshot"][:8] not in listed, listed + deployed.run(f"cat {RECORDS}/hermes.restic.log; restic version")

        # A new host with the same settings, restored from the repository alone.
        run = second_vm.deploy(**sections)
        assert run.returncode == 0, run.output[-4000:]
        [fresh] = remote.resolve(second_vm.target(**sections))
        started = time.monotonic()
        result = offsite_cmd.restore_from_offsite(fresh, None, force=True, say=print)
        print(f"[timing] restore from the off-host repository onto the second VM: {time.monotonic() - started:.1f}s")
        if result.moved_aside:
            second_vm.run(f"rm -rf -- {result.moved_aside}")
        stable = [p for p in PLANTED if p != "cron/jobs.json"] + [".env", STATIC]
        sums = f"cd {DATA} && sha256sum {' '.join(stable)}"
        assert second_vm.run(sums) == deployed.run(sums)
        assert "e2e" in second_vm.run(f"cat {DATA}/cron/jobs.json")
        count = in_gateway("import sqlite3; print(sqlite3.connect('state.db').execute("
                           "'select group_concat(v) from e2e_rows').fetchone()[0])")
        assert second_vm.run(count).strip() == "alpha,beta,gamma"
        live = in_gateway("import sqlite3; c = sqlite3.connect('state.db'); "
                          "print(c.execute('select count(*) from e2e_live').fetchone()[0], "
                          "c.execute('pragma integrity_check').fetchone()[0])")
        restored_live, integrity = second_vm.run(live).split()
        assert int(restored_live) > 0 and integrity == "ok", "the rows written during the backup, consistent"
        assert second_vm.run(f"find {DATA} \\( ! -uid 10000 -o ! -gid 10000 \\) -print").strip() == ""
        assert second_vm.api_key() == key
        assert second_vm.http_status(f"{API}/v1/models", key=key) == "200"
        assert second_vm.http_status(f"{API}/v1/models") == "401"
        assert json.loads(second_vm.run("tail -n 1 /var/log/hermes-infra/audit.jsonl"))["command"] == "restore"
    finally:
        # The second VM by hand (it has no saved state): the default settings take the offsite
        # files and the timer away, which is the declarative half of this proof.
        drop = ("import sqlite3; c = sqlite3.connect('state.db'); c.execute('drop table if exists e2e_rows'); "
                "c.execute('drop table if exists e2e_live'); c.execute('drop table if exists e2e_bulk'); c.commit(); "
                "c.execute('vacuum')")
        assert second_vm.deploy().returncode == 0
        second_vm.run("apt-get purge -y -q restic >/dev/null 2>&1; rm -rf /var/backups/hermes-infra/offsite "
                      "/var/backups/hermes-infra/manual /var/backups/hermes-infra/scheduled /var/cache/hermes-infra/restic")
        assert second_vm.run("ls /etc/hermes-infra/offsite 2>/dev/null; ls /usr/local/sbin/hermes-infra-offsite "
                             "/usr/local/sbin/hermes-infra-restic 2>/dev/null; true").strip() == ""
        second_vm.run(f"sed -i '/e2e-offsite$/d' /root/.ssh/authorized_keys; rm -rf {REPO_DIR}")
        second_vm.run(f"cd {DATA} && rm -f {' '.join(PLANTED)} {STATIC}")
        second_vm.run(in_gateway(drop))
        wait_healthy(second_vm)
        # The session VM goes back to its bootstrapped state (planted files, rows, restic and all).
        print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")
