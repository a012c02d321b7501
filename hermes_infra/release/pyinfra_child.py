"""`python -m hermes_infra.release.pyinfra_child ARGS`: pyinfra's CLI with the `--data` values read from
the 0600 file named by HERMES_INFRA_DATA_FILE (`commands.child_data_file`).

`--data` values are settings sections, secrets included; a process's arguments are readable by
every user of the machine (`ps`), its environment and memory only by its own user. The values
are added to pyinfra's arguments inside this process (`sys.argv`), where click reads them as if
typed, with pyinfra's own precedence (over host and group data), in time for the connection.
"""
from __future__ import annotations

import json
import os
import sys

from hermes_infra.commands import DATA_FILE_ENV


def data_args() -> list[str]:
    path = os.environ.pop(DATA_FILE_ENV, None)
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    finally:
        # Read once: nothing of it stays on disk for longer than the child's start.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return [arg for key, value in data.items() for arg in ("--data", f"{key}={value}")]


def main() -> None:
    sys.argv = [sys.argv[0], *data_args(), *sys.argv[1:]]
    from pyinfra_cli.main import main as pyinfra_main

    pyinfra_main()


if __name__ == "__main__":
    main()
