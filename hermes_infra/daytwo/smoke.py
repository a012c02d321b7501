"""`hermes-infra smoke TARGET`: one real chat turn through each gateway, and how long it took.

`status` and `check` stop at `/health` and `/health/detailed`; only a chat turn proves that the
model provider takes the gateway's key and answers. It costs tokens (the provider bills the
turn), so it runs only when asked. Per gateway: `POST /v1/chat/completions` with one short
message, timed by curl on the host (first byte and total, so the SSH round trip does not
count), the answer's first characters shown.

The key reaches curl through a pipe (`hostfacts.key_header_script`, `-H @-`), never a process
argument, and goes only to the running container's own address (`container_api_script`), as
`status` sends it. The answer is the agent's words: it comes back base64-encoded (so it cannot
shape what is parsed as curl's trailer) and is printed only through `clean`.
"""
from __future__ import annotations

import base64
import binascii
import json
import shlex
from dataclasses import asdict, dataclass

from hermes_infra.daytwo.remote import DayTwoError, HostTarget, Remote, clean, for_each_host, open_remote
from hermes_infra.host.hostfacts import container_api_script, key_header_script
from hermes_infra.plan import hostplan as planmod
from hermes_infra.settings.schema import GatewaySettings

DEFAULT_MESSAGE = "Reply with the single word: pong"
DEFAULT_TIMEOUT = 120
PREVIEW_CHARS = 60
NOT_RUNNING = "notrunning"
TRAILER = "\\n%{http_code} %{time_starttransfer} %{time_total}\\n"
SCHEMA = "hermes-infra/smoke/v1"


@dataclass
class SmokeResult:
    host: str
    profile: str
    code: str = "000"
    first_byte_seconds: float | None = None
    total_seconds: float | None = None
    answer: str = ""
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def chat_body(gateway: GatewaySettings, message: str) -> str:
    return json.dumps({"model": gateway.api.model_name, "stream": False,
                       "messages": [{"role": "user", "content": message}]})


def smoke_command(gateway: GatewaySettings, message: str, timeout: int) -> str:
    """Shell for the host: one chat turn to the running container's own address, the key from
    `.env` through a pipe, the answer and curl's timings base64-encoded on one line."""
    request = planmod.data_dir_request(gateway)
    curl = (f"curl -s --max-time {int(timeout)} -H @- -H 'Content-Type: application/json' "
            f"--data-binary {shlex.quote(chat_body(gateway, message))} -w {shlex.quote(TRAILER)}")
    return (f"hi_api=$({container_api_script(gateway.service_name)}); if [ -n \"$hi_api\" ]; then "
            f"{key_header_script(request)} | {curl} \"$hi_api/v1/chat/completions\" 2>/dev/null | base64 -w0; echo; "
            f"else echo {NOT_RUNNING}; fi")


def _seconds(value: str) -> float | None:
    try:
        return round(float(value), 3)
    except ValueError:
        return None


def _preview(text: str) -> str:
    return clean(" ".join(text.split()), PREVIEW_CHARS)


def _answer(body: str) -> tuple[str | None, str | None, bool]:
    """(the answer's text, the error the body names, whether Hermes marks the turn failed):
    `choices[0].message.content`, `error.message` (Hermes's 500 "No inference provider
    configured"), and `hermes.failed` (Hermes 0.19.0 answers a provider's 401 with a 200 whose
    content is the error, and `"hermes": {"failed": true}`: measured in tests/e2e/test_chat.py)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None, None, False
    if not isinstance(data, dict):
        return None, None, False
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return None, error["message"], False
    failed = isinstance(data.get("hermes"), dict) and data["hermes"].get("failed") is True
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None, None, failed
    return (content if isinstance(content, str) else None), None, failed


def fix_hint(host: str, profile: str) -> str:
    return (f"Fix: hermes-infra status {host} (readiness: HI-API-005 in hermes-infra check); the model provider "
            f"and its key (gateways[].config.model, \"The model provider\" in the README); "
            f"hermes-infra logs {host} --profile {profile} -n 100")


def parse_smoke(host: str, gateway: GatewaySettings, output: str, timeout: int) -> SmokeResult:
    result = SmokeResult(host, gateway.name)
    line = output.strip()
    if line == NOT_RUNNING:
        result.problem = (f"container {gateway.service_name} is not running, so no message was sent. "
                          f"Fix: hermes-infra status {host}, then hermes-infra restart {host} --profile {gateway.name}")
        return result
    try:
        raw = base64.b64decode(line, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        raw = ""
    body, _, trailer = raw.rstrip("\n").rpartition("\n")
    parts = trailer.split()
    if len(parts) == 3 and parts[0].isdigit():
        result.code = parts[0]
        result.first_byte_seconds, result.total_seconds = _seconds(parts[1]), _seconds(parts[2])
    answer, error, failed = _answer(body)
    result.answer = _preview(answer or "")
    if result.code == "000":
        result.problem = (f"no answer within {timeout}s (the gateway or its provider is slow or unreachable; "
                          f"--timeout raises the wait). {fix_hint(host, gateway.name)}")
    elif result.code == "401":
        result.problem = (f"the gateway refused the key from its own .env (HI-API-002 and HI-DATA-003 in "
                          f"hermes-infra check {host} say why)")
    elif result.code != "200":
        said = f": {clean(error, 200)}" if error else ""
        result.problem = f"answered http {result.code}{said}. {fix_hint(host, gateway.name)}"
    elif failed:
        result.problem = (f"answered 200, but Hermes marks the turn failed (the provider refused it: its key, "
                          f"its model name, its quota): \"{result.answer}\". {fix_hint(host, gateway.name)}")
    elif not result.answer:
        result.problem = f"answered 200 with an empty answer. {fix_hint(host, gateway.name)}"
    return result


def smoke_host(host: HostTarget, profile: str | None, message: str = DEFAULT_MESSAGE,
               timeout: int = DEFAULT_TIMEOUT, remote: Remote | None = None) -> list[SmokeResult]:
    """One chat turn per chosen gateway of one host, one after the other over one connection;
    never raises for a host that cannot be reached (its rows say why)."""
    gateways = host.gateways(profile)
    own = remote is None
    try:
        remote = remote or open_remote(host)
        results = []
        for gateway in gateways:
            ran = remote.run(smoke_command(gateway, message, timeout), timeout=timeout + 30)
            results.append(parse_smoke(host.name, gateway, ran.text, timeout))
        return results
    except Exception as error:  # noqa: BLE001 - one unreachable host must not hide the others
        why = clean(f"{type(error).__name__}: {error}", 300)
        return [SmokeResult(host.name, g.name, problem=f"cannot reach the host: {why}") for g in gateways]
    finally:
        if own and remote is not None:
            remote.close()


def smoke(hosts: list[HostTarget], profile: str | None, message: str = DEFAULT_MESSAGE,
          timeout: int = DEFAULT_TIMEOUT) -> list[SmokeResult]:
    if not 1 <= timeout <= 3600:
        raise DayTwoError(f"--timeout {timeout} is not a wait in seconds. Fix: 1 to 3600 (default {DEFAULT_TIMEOUT})")
    if not message.strip():
        raise DayTwoError("--message is empty. Fix: a short message, e.g. --message 'Say hello'")
    for host in hosts:
        host.gateways(profile)  # an unknown --profile is refused before any host is touched
    per_host = for_each_host(hosts, lambda h: smoke_host(h, profile, message, timeout))
    return [result for results in per_host for result in results]


def exit_code(results: list[SmokeResult]) -> int:
    return 0 if results and all(r.ok for r in results) else 1


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


COLUMNS = ("HOST", "PROFILE", "HTTP", "FIRST BYTE", "TOTAL", "ANSWER")


def render_text(results: list[SmokeResult]) -> str:
    table = [COLUMNS] + [(r.host, r.profile, r.code, _cell(r.first_byte_seconds), _cell(r.total_seconds),
                          f'"{r.answer}"' if r.answer else "-") for r in results]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table]
    problems = [r for r in results if not r.ok]
    if problems:
        lines.append("")
    lines += [f"{r.host}/{r.profile}: FAILED: {r.problem}" for r in problems]
    good = sum(1 for r in results if r.ok)
    lines.append(f"{good}/{len(results)} gateways answered a chat turn")
    return "\n".join(lines) + "\n"


def render_json(results: list[SmokeResult]) -> str:
    return json.dumps({"schema": SCHEMA, "ok": exit_code(results) == 0,
                       "gateways": [{**asdict(r), "ok": r.ok} for r in results]}, indent=2) + "\n"
