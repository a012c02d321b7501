"""Waivers: a failing control accepted on purpose, for some hosts, with a reason, until a date.

    # waivers.yaml
    waivers:
      - control: HI-SSH-001          # a control ID (fnmatch patterns such as HI-CTR-* work too)
        hosts: "hermes-prod-*"       # fnmatch pattern on the inventory host name (default "*")
        subject: "gateway:*"         # optional: host | gateway:<name> | companion:<name> (default "*")
        justification: "Password login needed by the provider's console until TICKET-123"
        expires: 2026-12-31          # last day the waiver applies; after it the control fails again

A waiver is active through the end of its `expires` day (in the control machine's local date).
An expired waiver no longer waives anything, and the reports say which control it would have
covered. Every waiver needs a justification and an expiry date: nothing is waived forever.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hermes_infra.settings.loading import SettingsError


class WaiverError(SettingsError):
    """The waivers file cannot be used; the message says which entry and the fix."""


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    control: str
    """Control ID, or an fnmatch pattern of IDs."""

    hosts: str = Field("*", alias="host")
    """fnmatch pattern on the host name (the inventory name, e.g. `hermes-prod-*`)."""

    subject: str = "*"
    """fnmatch pattern on the subject (`host`, `gateway:<profile>`, `companion:<name>`) or its bare name."""

    justification: str = Field(min_length=10)
    """Why the failure is accepted (shown in every report)."""

    expires: dt.date
    """Last day on which the waiver applies."""

    @field_validator("justification")
    @classmethod
    def _justified(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty. Fix: say why the failure is accepted (ticket, owner, plan)")
        return value.strip()

    def active(self, today: dt.date) -> bool:
        return today <= self.expires

    def matches(self, control_id: str, host: str, subject: str) -> bool:
        bare = subject.split(":", 1)[-1]
        return (fnmatch.fnmatchcase(control_id, self.control) and fnmatch.fnmatchcase(host, self.hosts)
                and (fnmatch.fnmatchcase(subject, self.subject) or fnmatch.fnmatchcase(bare, self.subject)))

    def describe(self) -> dict:
        return {"control": self.control, "hosts": self.hosts, "subject": self.subject,
                "justification": self.justification, "expires": self.expires.isoformat()}


def parse_waivers(data, source: str = "waivers", known_ids: set[str] | None = None) -> list[Waiver]:
    if data is None:
        return []
    if isinstance(data, dict):
        unknown = set(data) - {"waivers"}
        if unknown:
            raise WaiverError(f"{source}: unknown top-level key(s) {sorted(unknown)}. Fix: put entries under `waivers:`")
        data = data.get("waivers") or []
    if not isinstance(data, list):
        raise WaiverError(f"{source}: expected a list of waivers under `waivers:`")
    waivers, problems = [], []
    for index, entry in enumerate(data):
        try:
            waiver = Waiver.model_validate(entry)
        except ValidationError as error:
            for item in error.errors():
                where = ".".join(str(p) for p in item.get("loc", ())) or "entry"
                message = item.get("msg", "").removeprefix("Value error, ")
                if item.get("type") == "missing":
                    message = "is required. Fix: set it (every waiver needs a justification and an expiry date)"
                problems.append(f"  - waivers[{index}].{where}: {message}")
            continue
        if known_ids is not None and not any(fnmatch.fnmatchcase(i, waiver.control) for i in known_ids):
            problems.append(f"  - waivers[{index}].control: {waiver.control!r} matches no control. "
                            "Fix: use an ID from `hermes-infra` check reports (e.g. HI-SSH-001)")
            continue
        waivers.append(waiver)
    if problems:
        raise WaiverError(f"invalid waivers in {source}:\n" + "\n".join(problems))
    return waivers


def load_waivers(path: str | Path | None, known_ids: set[str] | None = None) -> list[Waiver]:
    if path is None:
        return []
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise WaiverError(f"cannot read waivers file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise WaiverError(f"waivers file {path} is not valid YAML: {error}") from None
    return parse_waivers(data, source=str(path), known_ids=known_ids)


def find_waiver(waivers: list[Waiver], control_id: str, host: str, subject: str,
                today: dt.date) -> tuple[Waiver | None, Waiver | None]:
    """(active waiver, expired waiver) matching one control instance; active wins."""
    expired = None
    for waiver in waivers:
        if waiver.matches(control_id, host, subject):
            if waiver.active(today):
                return waiver, None
            expired = expired or waiver
    return None, expired
