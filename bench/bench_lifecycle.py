"""Wall-clock figures of the slow steps, on a fresh VM: the numbers quoted in the issue notes.

    python3 bench/bench_lifecycle.py [--json out.json]

Measures: Hermes image build (or cache hit), VM image (or cache hit), VM boot to SSH,
bootstrap deploy, converged re-run, dry run, reboot to healthy. Not a test: it asserts nothing
beyond each step succeeding; speed goals live here, not in the test suite.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hermes_infra import commands, trylocal  # noqa: E402
from hermes_infra.images import build as imagebuild
from hermes_infra.localvm import disposable_vm, ensure_image  # noqa: E402
from hermes_infra.release.up import up_captured  # noqa: E402


def timed(label: str, results: dict, func):
    started = time.monotonic()
    value = func()
    results[label] = round(time.monotonic() - started, 1)
    print(f"{label:28s} {results[label]:8.1f} s", flush=True)
    return value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    results: dict[str, float] = {}
    built = timed("hermes_image_build_or_hit", results, lambda: imagebuild.build_image(log=lambda m: None))
    timed("vm_image_build_or_hit", results, ensure_image)
    started = time.monotonic()
    with disposable_vm("bench") as vm:
        results["vm_boot_to_ssh"] = round(time.monotonic() - started, 1)
        print(f"{'vm_boot_to_ssh':28s} {results['vm_boot_to_ssh']:8.1f} s")
        target = trylocal.local_target(vm, built.archive.parent)
        for label in ("bootstrap", "converged_rerun"):
            run = timed(label, results, lambda: up_captured(target))
            if run.returncode != 0:
                print(run.stdout[-4000:])
                return 1
        timed("dry_run", results, lambda: up_captured(target, dry=True))

        def reboot_to_healthy():
            vm.reboot()
            while vm.ssh("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8642/health").stdout != "200":
                time.sleep(2)

        timed("reboot_to_healthy", results, reboot_to_healthy)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
