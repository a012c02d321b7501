"""Where a converged `hermes-infra up` spends its time, on a local VM.

    python3 bench/profile_rerun.py --vm NAME [--runs 3] [--json out.json]

Deploys once into the named VM (created if missing, left running), then runs the converged
`up` `--runs` times as one process each, stamping every output line with its arrival time; the
phases are read off the lines pyinfra and hermes-infra print (process start, lock taken,
pyinfra connected, facts read, operations run, lock released, exit). Then it times, on the
VM itself, each section of the batched read (`hermes_infra.host.hostfacts.state_sections`) alone,
and the floor: `ssh true` with a new connection and the whole batched read as one command.

A benchmark: it prints figures and asserts nothing on them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # the checkout's hermes_infra and bench.compare

from bench.compare import HermesInfra, hermes_env, settle  # noqa: E402
from hermes_infra import commands, trylocal  # noqa: E402
from hermes_infra.images import build as imagebuild
from hermes_infra.release.deploy import fact_request  # noqa: E402
from hermes_infra.host.hostfacts import _run_section, state_command, state_sections  # noqa: E402
from hermes_infra.localvm import ensure_vm  # noqa: E402

# (phase, the first output line that ends it)
MARKS = (("python start, settings validated, lock taken", "deploy lock taken"),
         ("pyinfra start and SSH connection, beyond the lock", "Connected"),
         ("batched read, plan, operations prepared", "Beginning operation run"),
         ("operations (all no-ops)", "Disconnecting from hosts"),
         ("audit record, lock released", "deploy lock released"))


def stamped_run(argv: list[str], env: dict) -> tuple[float, list[tuple[float, str]], int]:
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            stdin=subprocess.DEVNULL, bufsize=1)
    lines = [(time.monotonic() - started, line.rstrip("\n")) for line in proc.stdout]
    code = proc.wait()
    return time.monotonic() - started, lines, code


def phases(total: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    found, previous = {}, 0.0
    for label, mark in MARKS:
        at = next((t for t, line in lines if mark in line), None)
        if at is None:
            continue
        found[label] = round(at - previous, 2)
        previous = at
    found["exit"] = round(total - previous, 2)
    return found


def time_on_vm(vm, command: str, repeat: int = 3) -> float:
    samples = []
    for _ in range(repeat):
        result = vm.ssh(f"s=$(date +%s%N); ( {command} ) >/dev/null 2>&1; echo $(( ($(date +%s%N) - s) / 1000000 ))")
        samples.append(int(result.stdout.strip().splitlines()[-1]) / 1000)
    return round(statistics.median(samples), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vm", default="bench-profile", help="the local VM (created if missing, left running)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    image = imagebuild.build_image(log=lambda message: None)
    vm = ensure_vm(args.vm)
    settle(vm)
    tool = HermesInfra([vm], image, Path("/tmp"))
    env = hermes_env()
    first = subprocess.run(tool.argv("cold"), env=env, capture_output=True, text=True)
    if first.returncode != 0:
        print(first.stdout[-3000:] + first.stderr[-3000:], file=sys.stderr)
        return 1
    runs = []
    for _ in range(args.runs):
        total, lines, code = stamped_run(tool.argv("rerun"), env)
        if code != 0:
            print("\n".join(line for _, line in lines[-40:]), file=sys.stderr)
            return 1
        runs.append({"total": round(total, 2), "phases": phases(total, lines),
                     "changed": tool.changed("\n".join(line for _, line in lines))})
    print(f"converged re-run of `hermes-infra up` on VM {vm.name} ({vm.state.accel}), {args.runs} runs:")
    for label in runs[0]["phases"]:
        values = [r["phases"].get(label, 0.0) for r in runs]
        print(f"  {label:52s} {statistics.median(values):6.2f} s   ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"  {'total':52s} {statistics.median(r['total'] for r in runs):6.2f} s   "
          f"(changed: {[r['changed'] for r in runs]})")

    target = trylocal.local_target(vm, image.archive.parent)
    settings = next(iter(commands.validate(target).values()))
    request = fact_request(settings)
    sections = {name: time_on_vm(vm, _run_section(name, body), repeat=1) for name, body in state_sections(request)}
    floor = {"ssh true (new connection)": None, "batched read, one command on the VM": time_on_vm(vm, state_command(request))}
    started = time.monotonic()
    for _ in range(3):
        vm.ssh("true")
    floor["ssh true (new connection)"] = round((time.monotonic() - started) / 3, 2)
    print("the batched read's sections, each alone on the VM (the read runs the slow ones side by side):")
    for name, seconds in sorted(sections.items(), key=lambda item: -item[1]):
        print(f"  {name:52s} {seconds:6.2f} s")
    for name, seconds in floor.items():
        print(f"  {name:52s} {seconds:6.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "sections": sections, "floor": floor}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
