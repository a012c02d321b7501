"""hermes-infra side by side with an Ansible playbook and the floor script, each on a fresh VM.

    python3 bench/compare.py [--json out.json] [--only hermes-infra,ansible,floor] [--hosts N]

For each tool in turn: boot a fresh local VM from the same cached base image, then time, each as
one whole process (wall clock): the cold bootstrap, the converged re-run (3 times; the median
counts), the dry run (hermes-infra `--dry`, `ansible-playbook --check`, the floor's read-only
check) and one changed setting (the gateway's memory limit set to 1G); destroy the VM. After
each bootstrap and after the change, the VM is checked (untimed): the container runs with the
memory limit asked for, swap is on, and /health 200, /v1/models 401 without the key and 200
with it. Then a table, the ratios hermes-infra/Ansible and hermes-infra/floor, and JSON.

`--hosts N` (N > 1) adds the fleet fan-out: N fresh VMs, hermes-infra bootstraps them all from
one inventory, then its converged re-run and `hermes-infra check` are timed over 1 host and
over all N (same inventory layout) and the ratios N/1 are reported.

A benchmark, not a test: nothing is asserted on timings. The exit status is non-zero when a
tool's run fails (non-zero exit, or the VM is not in the expected state afterwards).
Development: `--vm NAME` runs the phases on a named VM (created if missing, left running;
remove it with `python3 -m hermes_infra try --destroy --name NAME`), `--phases` picks phases.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from hermes_infra import commands, trylocal
from hermes_infra.images import build as imagebuild
from hermes_infra.host.hostenv import cache_dir
from hermes_infra.localvm import LocalVM, disposable_vm, ensure_vm

TOOLS = ("hermes-infra", "ansible", "floor")
PHASES = ("cold", "rerun", "dry", "change")
CHANGED_MEMORY = "1G"
ANSIBLE_VERSION = "12.3.0"  # the `ansible` package: ansible-core 2.19 + community.docker 4.8
ANSIBLE_DIR = BENCH / "ansible"
FLOOR = BENCH / "floor.sh"
LABELS = {"cold": "cold bootstrap", "rerun": "converged re-run (median)", "dry": "dry run",
          "change": f"changed setting (memory {CHANGED_MEMORY})"}


class ToolFailed(Exception):
    pass


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


# --- one timed process --------------------------------------------------------------------

@dataclass
class Timed:
    seconds: float
    rc: int
    output: str
    log: Path


def run_timed(argv: list[str], log: Path, env: dict[str, str] | None = None, ok=(0,)) -> Timed:
    """Run argv as one process, wall clock from spawn to exit; output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(argv, check=False, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    seconds = round(time.monotonic() - started, 2)
    log.write_text(f"$ {shlex.join(argv)}\n# exit {proc.returncode}, {seconds} s, load {load()}\n\n{proc.stdout}")
    result = Timed(seconds, proc.returncode, proc.stdout, log)
    if proc.returncode not in ok:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise ToolFailed(f"exit {proc.returncode} after {seconds} s (log: {log})\n{tail}")
    return result


# --- the three tools ------------------------------------------------------------------------

def hermes_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class Tool:
    name = ""

    def __init__(self, vms: list[LocalVM], image: imagebuild.BuiltImage, workdir: Path) -> None:
        self.vms, self.image, self.workdir = vms, image, workdir

    def env(self) -> dict[str, str] | None:
        return None

    def argv(self, phase: str) -> list[str]:
        raise NotImplementedError

    def changed(self, output: str) -> int | None:
        """How many things a run changed, from its output (None: unknown)."""
        return None


class HermesInfra(Tool):
    """`hermes-infra up` exactly as an operator types it (deploy lock and audit log included)."""

    name = "hermes-infra"

    def env(self):
        return hermes_env()

    def argv(self, phase):
        target = trylocal.local_target(self.vms[0], self.image.archive.parent)
        argv = [sys.executable, "-m", "hermes_infra", "up", *target.cli_args()]
        if phase == "dry":
            argv.append("--dry")
        if phase == "change":
            argv += ["--data", "gateways=" + json.dumps([{"name": "hermes", "limits": {"memory": CHANGED_MEMORY}}])]
        return argv

    def changed(self, output):
        found = re.search(r"Grand total\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)", output)
        if not found:
            return None
        return 0 if found.group(1) == "-" else int(found.group(1))


class Ansible(Tool):
    name = "ansible"

    def __init__(self, vms, image, workdir):
        super().__init__(vms, image, workdir)
        self.playbook_bin = ensure_ansible()
        self.inventory = write_ansible_inventory(vms, image, workdir / "inventory.ini")

    def env(self):
        env = dict(os.environ)
        env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
        env["ANSIBLE_NOCOLOR"] = "1"
        return env

    def argv(self, phase):
        argv = [self.playbook_bin, "-i", str(self.inventory), str(ANSIBLE_DIR / "playbook.yml")]
        if phase == "dry":
            argv.append("--check")
        if phase == "change":
            argv += ["-e", f"hermes_memory_limit={CHANGED_MEMORY}"]
        return argv

    def changed(self, output):
        counts = re.findall(r"\schanged=(\d+)", output)
        return sum(int(c) for c in counts) if counts else None


class Floor(Tool):
    name = "floor"

    def argv(self, phase):
        vm = self.vms[0]
        argv = ["bash", str(FLOOR), "--port", str(vm.ssh_port), "--key", str(vm.state.key_path),
                "--known-hosts", str(vm.state.known_hosts), "--archive", str(self.image.archive),
                "--ref", self.image.ref]
        if phase == "dry":
            argv.append("--check")
        if phase == "change":
            argv += ["--memory", CHANGED_MEMORY]
        return argv

    def changed(self, output):
        return 0 if "converged" in output.splitlines() else 1


TOOL_CLASSES = {"hermes-infra": HermesInfra, "ansible": Ansible, "floor": Floor}


def ensure_ansible() -> str:
    """ansible-playbook: $ANSIBLE_PLAYBOOK, else a cached venv with the pinned `ansible` package
    (created with pip on first use, so every run measures the same Ansible)."""
    if os.environ.get("ANSIBLE_PLAYBOOK"):
        return os.environ["ANSIBLE_PLAYBOOK"]
    venv = cache_dir() / "bench" / "ansible-venv"
    binary = venv / "bin" / "ansible-playbook"
    if binary.exists():
        return str(binary)
    say(f"installing ansible=={ANSIBLE_VERSION} from PyPI into {venv} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"ansible=={ANSIBLE_VERSION}"], check=True)
    return str(binary)


def write_ansible_inventory(vms: list[LocalVM], image: imagebuild.BuiltImage, path: Path) -> Path:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    template = Environment(loader=FileSystemLoader(str(ANSIBLE_DIR / "templates")), undefined=StrictUndefined,
                           keep_trailing_newline=True).get_template("inventory.ini.j2")
    rows = [{"alias": f"vm-{vm.name}", "port": vm.ssh_port, "key": vm.state.key_path,
             "known_hosts": vm.state.known_hosts} for vm in vms]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(template.render(vms=rows, image_ref=image.ref, image_archive=image.archive))
    return path


# --- the VM's end state, checked after a bootstrap and after the change (untimed) ----------

VERIFY = r"""
set -u
mem=$(docker inspect -f '{{.State.Running}} {{.HostConfig.Memory}}' hermes 2>&1)
swap=$(swapon --show=NAME --noheadings | grep -qx /swapfile && stat -c %s /swapfile)
dir=$(stat -c %u:%g:%a /root/.hermes)
key=$(sed -n 's/^API_SERVER_KEY=//p' /root/.hermes/.env | head -n1)
url=http://127.0.0.1:8642
health=$(curl -s -m 10 -o /dev/null -w '%{http_code}' $url/health)
anon=$(curl -s -m 10 -o /dev/null -w '%{http_code}' $url/v1/models)
auth=$(printf 'Authorization: Bearer %s\n' "$key" | curl -s -m 10 -o /dev/null -w '%{http_code}' -H @- $url/v1/models)
echo "container=$mem|swap=$swap|datadir=$dir|keylen=${#key}|api=$health $anon $auth"
"""


def verify(vm: LocalVM, memory_bytes: int | None = None) -> str:
    """Raise ToolFailed unless the gateway is up as every tool must leave it."""
    deadline = time.monotonic() + 120  # the first request after a recreate can be reset
    while True:
        result = vm.ssh(VERIFY, timeout=120)
        fields = dict(item.split("=", 1) for item in result.stdout.strip().split("|") if "=" in item)
        running, _, memory = fields.get("container", "").partition(" ")
        problems = []
        if running != "true":
            problems.append(f"container not running ({fields.get('container')})")
        if memory_bytes is not None and memory != str(memory_bytes):
            problems.append(f"memory limit {memory}, want {memory_bytes}")
        if fields.get("swap") != str(1 << 30):
            problems.append(f"swap {fields.get('swap')!r}, want /swapfile of 1 GiB in use")
        if fields.get("datadir") != "10000:10000:700":
            problems.append(f"data dir {fields.get('datadir')}")
        if int(fields.get("keylen", "0") or 0) < 16:
            problems.append("no API key of >= 16 characters in .env")
        if fields.get("api") != "200 401 200":
            problems.append(f"API answers {fields.get('api')!r}, want '200 401 200'")
        if not problems:
            return result.stdout.strip()
        if time.monotonic() > deadline:
            raise ToolFailed("the VM is not in the expected state: " + "; ".join(problems))
        time.sleep(3)


# --- one tool on one fresh VM ---------------------------------------------------------------

@dataclass
class ToolResult:
    tool: str
    vm_boot: float | None = None
    cold: float | None = None
    rerun: list[float] = field(default_factory=list)
    rerun_changed: list[int | None] = field(default_factory=list)
    dry: float | None = None
    change: float | None = None
    load: dict[str, float] = field(default_factory=dict)
    accel: str | None = None
    error: str | None = None
    logs: str = ""

    @property
    def rerun_median(self) -> float | None:
        return round(statistics.median(self.rerun), 2) if self.rerun else None

    def to_json(self) -> dict:
        data = {k: v for k, v in self.__dict__.items()}
        data["rerun_median"] = self.rerun_median
        return data


@contextlib.contextmanager
def vms_for(prefix: str, count: int, reuse: str | None):
    """`count` fresh disposable VMs (destroyed on the way out), or the named dev VM."""
    if reuse:
        yield [ensure_vm(reuse)]
        return
    with contextlib.ExitStack() as stack:
        vms = []
        for _ in range(count):
            vms.append(stack.enter_context(disposable_vm(prefix)))
        yield vms


def settle(vm: LocalVM) -> None:
    """Let boot finish (systemd's start jobs) so the first timed run does not pay for it."""
    vm.ssh("systemctl is-system-running --wait >/dev/null 2>&1; true", timeout=600)


def bench_tool(name: str, image, logs: Path, phases: list[str], repeat: int, reuse: str | None) -> ToolResult:
    result = ToolResult(tool=name, logs=str(logs / name))
    result.load["start"] = load()
    say(f"== {name}: booting a fresh VM (load {load()})")
    started = time.monotonic()
    try:
        with vms_for(f"bench-{name}", 1, reuse) as vms:
            vm = vms[0]
            settle(vm)
            result.vm_boot = round(time.monotonic() - started, 1)
            result.accel = str(vm.state.accel)
            tool = TOOL_CLASSES[name](vms, image, logs / name)
            say(f"   VM {vm.name} up in {result.vm_boot} s ({result.accel}); SSH on 127.0.0.1:{vm.ssh_port}")

            def timed(phase: str, label: str) -> Timed:
                run = run_timed(tool.argv(phase), logs / name / f"{label}.log", tool.env())
                say(f"   {label:10s} {run.seconds:8.1f} s   (load {load()})")
                return run

            if "cold" in phases:
                result.cold = timed("cold", "cold").seconds
                verify(vm)
            if "rerun" in phases:
                for index in range(1, repeat + 1):
                    run = timed("rerun", f"rerun-{index}")
                    result.rerun.append(run.seconds)
                    result.rerun_changed.append(tool.changed(run.output))
            if "dry" in phases:
                result.dry = timed("dry", "dry").seconds
            if "change" in phases:
                result.change = timed("change", "change").seconds
                verify(vm, memory_bytes=1 << 30)
    except ToolFailed as error:
        result.error = str(error)
        say(f"   FAILED: {error}")
    result.load["end"] = load()
    return result


# --- fleet fan-out: hermes-infra over 1 and N hosts -------------------------------------------

def write_pyinfra_inventory(vms: list[LocalVM], image, path: Path) -> Path:
    """An inventory .py listing the VMs, each with the local VM's settings as host data."""
    settings = {key: json.loads(value) for key, value in commands.local_vm_data(str(image.archive.parent)).items()}
    hosts = []
    for vm in vms:
        alias, data = vm.pyinfra_host()
        hosts.append((alias, {**data, **settings}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by bench/compare.py --hosts: local VMs on 127.0.0.1, one per forwarded SSH port.\n"
                    f"hosts = {hosts!r}\n")
    return path


def bench_fleet(count: int, image, logs: Path, repeat: int) -> dict:
    fleet: dict = {"hosts": count, "load": {"start": load()}}
    env = hermes_env()
    say(f"== fleet: booting {count} fresh VMs (load {load()})")
    try:
        with vms_for("bench-fleet", count, None) as vms:
            for vm in vms:
                settle(vm)
            directory = logs / "fleet"
            one = write_pyinfra_inventory(vms[:1], image, directory / "one.py")
            every = write_pyinfra_inventory(vms, image, directory / "fleet.py")

            def hermes(args: list[str], label: str, ok=(0,)) -> float:
                run = run_timed([sys.executable, "-m", "hermes_infra", *args], directory / f"{label}.log", env, ok)
                say(f"   {label:14s} {run.seconds:8.1f} s   (exit {run.rc}, load {load()})")
                return run.seconds

            fleet["cold_all"] = hermes(["up", str(every)], f"cold-{count}")
            for vm in vms:
                verify(vm)
            for key, inventory in (("1", one), (str(count), every)):
                fleet[f"rerun_{key}"] = [hermes(["up", str(inventory)], f"rerun-{key}-{i}") for i in range(1, repeat + 1)]
            # `check` exits 1 when a control fails: that is a finding, not a failed run.
            for key, inventory in (("1", one), (str(count), every)):
                fleet[f"check_{key}"] = [hermes(["check", str(inventory)], f"check-{key}-{i}", ok=(0, 1))
                                         for i in range(1, repeat + 1)]
    except ToolFailed as error:
        fleet["error"] = str(error)
        say(f"   FAILED: {error}")
    for kind in ("rerun", "check"):
        one_host, all_hosts = fleet.get(f"{kind}_1"), fleet.get(f"{kind}_{count}")
        if one_host and all_hosts:
            fleet[f"{kind}_ratio"] = round(statistics.median(all_hosts) / statistics.median(one_host), 2)
    fleet["load"]["end"] = load()
    return fleet


# --- report -----------------------------------------------------------------------------------

def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def table(results: dict[str, ToolResult]) -> tuple[str, dict]:
    names = [n for n in TOOLS if n in results]
    ratios: dict[str, dict[str, float | None]] = {}
    header = f"{'':34s}" + "".join(f"{n:>14s}" for n in names)
    pairs = [("hermes-infra", "ansible", "hi/ansible"), ("hermes-infra", "floor", "hi/floor")]
    pairs = [p for p in pairs if p[0] in results and p[1] in results]
    header += "".join(f"{p[2]:>12s}" for p in pairs)
    lines = [header]
    for phase in PHASES:
        values = {n: (results[n].rerun_median if phase == "rerun" else getattr(results[n], phase)) for n in names}
        row = f"{LABELS[phase]:34s}" + "".join(f"{values[n]:14.1f}" if values[n] is not None else f"{'-':>14s}"
                                               for n in names)
        for a, b, label in pairs:
            value = ratio(values[a], values[b])
            ratios.setdefault(label, {})[phase] = value
            row += f"{value:12.2f}" if value is not None else f"{'-':>12s}"
        lines.append(row)
    lines.append(f"{'re-runs (s)':34s}" + "".join(" " + f"{' '.join(f'{s:.1f}' for s in results[n].rerun):>13s}" for n in names))
    lines.append(f"{'re-runs that changed something':34s}" + "".join(
        f"{','.join('?' if c is None else str(c) for c in results[n].rerun_changed) or '-':>14s}" for n in names))
    lines.append(f"{'VM boot to settled (untimed)':34s}" + "".join(
        f"{results[n].vm_boot:14.1f}" if results[n].vm_boot else f"{'-':>14s}" for n in names))
    lines.append(f"{'load average, start/end':34s}" + "".join(
        f"{results[n].load.get('start', 0):7.1f}/{results[n].load.get('end', 0):<6.1f}" for n in names))
    return "\n".join(lines), ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--only", default=",".join(TOOLS), help="comma-separated tools (default: all three)")
    parser.add_argument("--hosts", type=int, default=1, help="N > 1: also measure hermes-infra over 1 and N VMs")
    parser.add_argument("--repeat", type=int, default=3, help="converged re-runs per tool (median reported)")
    parser.add_argument("--phases", default=",".join(PHASES), help="development: a subset of " + ",".join(PHASES))
    parser.add_argument("--vm", help="development: run on this named VM (kept) instead of fresh ones")
    parser.add_argument("--logs", help="directory for each run's output (default: a new dir in the cache)")
    args = parser.parse_args()
    tools = [t for t in args.only.split(",") if t]
    unknown = sorted(set(tools) - set(TOOLS))
    phases = [p for p in args.phases.split(",") if p]
    if unknown or set(phases) - set(PHASES):
        parser.error(f"unknown tool or phase: {unknown or sorted(set(phases) - set(PHASES))}")
    if args.vm and args.hosts > 1:
        parser.error("--vm is for one VM; the fleet always uses fresh VMs")
    logs = Path(args.logs) if args.logs else cache_dir() / "bench" / "logs" / time.strftime("%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    if load() >= 2.5:
        say(f"note: 1-minute load average is {load()} on {os.cpu_count()} cores; figures will be inflated")
    image = imagebuild.build_image(log=lambda message: say(f"   {message}"))
    say(f"image {image.ref} ({image.archive}); logs in {logs}")

    results = {name: bench_tool(name, image, logs, phases, args.repeat, args.vm) for name in tools}
    fleet = bench_fleet(args.hosts, image, logs, args.repeat) if args.hosts > 1 else None

    text, ratios = table(results) if results else ("", {})
    print(text)
    if fleet:
        print(f"\nfleet fan-out (hermes-infra, {args.hosts} VMs in parallel vs 1):")
        print(f"  cold bootstrap of all {args.hosts}: {fleet.get('cold_all', '-')} s")
        for kind in ("rerun", "check"):
            print(f"  {kind:6s} 1 host {fleet.get(f'{kind}_1')}  {args.hosts} hosts {fleet.get(f'{kind}_{args.hosts}')}"
                  f"  ratio (medians) {fleet.get(f'{kind}_ratio', '-')}")
    failed = [r.tool for r in results.values() if r.error] + (["fleet"] if fleet and fleet.get("error") else [])
    report = {
        "machine": {"cpus": os.cpu_count(), "load_at_start": {n: r.load.get("start") for n, r in results.items()},
                    "accel": next((r.accel for r in results.values() if r.accel), None)},
        "image": {"ref": image.ref, "archive_bytes": image.size_bytes},
        "changed_memory": CHANGED_MEMORY,
        "tools": {name: result.to_json() for name, result in results.items()},
        "ratios": ratios,
        "fleet": fleet,
        "failed": failed,
        "logs": str(logs),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    (logs / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    if failed:
        say(f"FAILED: {', '.join(failed)} (see {logs})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
