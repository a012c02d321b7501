"""Where a test run's time went: `reports/durations.json` (written by tests/conftest.py) as
Markdown tables, the slowest fixtures and test phases and each test file's total.

    python3 bench/durations.py [reports/durations.json] [--top 40]
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def file_of(record: dict) -> str:
    return record.get("first_user", record["name"]).split("::")[0]


def tables(data: dict, top: int) -> str:
    records = data["records"]
    lines = [f"Session: {data['session_seconds'] / 60:.1f} min.", "",
             "| seconds | what | name |", "|---:|---|---|"]
    for record in sorted(records, key=lambda r: r["seconds"], reverse=True)[:top]:
        scope = f" [{record['scope']}]" if "scope" in record else ""
        lines.append(f"| {record['seconds']:.1f} | {record['kind']} | `{record['name']}`{scope} |")
    per_file: dict[str, float] = collections.defaultdict(float)
    for record in records:
        if record["kind"].startswith("test "):
            per_file[file_of(record)] += record["seconds"]
    lines += ["", "| test file | seconds (setup, call and teardown of its tests) |", "|---|---:|"]
    for name, seconds in sorted(per_file.items(), key=lambda item: item[1], reverse=True):
        lines.append(f"| `{name}` | {seconds:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="reports/durations.json")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    print(tables(json.loads(Path(args.path).read_text()), args.top))


if __name__ == "__main__":
    main()
