"""pytest plugin for the shipped test module: run the controls with plain pytest + testinfra.

    pytest --hosts=ssh://root@203.0.113.7 [--hermes-settings settings.json] \\
        [--hermes-waivers waivers.yaml] [--junitxml=check.xml] path/to/hermes_infra/checks/test_controls.py

`--hermes-settings` is a JSON or YAML file with the settings sections (`{"swap": {"size": "4G"},
"gateways": [...]}`, exactly what group_data holds); without it the defaults are expected. The
same settings are expected on every host of the run. Loaded by the package's conftest.py, or
with `-p hermes_infra.checks.plugin` when the test module is collected some other way.
"""
from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import pytest
import yaml

from hermes_infra.checks.context import HostContext
from hermes_infra.checks.controls import all_controls
from hermes_infra.checks.results import apply_waivers, evaluate
from hermes_infra.checks.waivers import WaiverError, load_waivers
from hermes_infra.settings.loading import SettingsError, collect, settings_from_raw
from hermes_infra.settings.schema import HostSettings


class AdvisoryFinding(UserWarning):
    """An advisory control failed: reported as a warning, not a test failure."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hermes-infra")
    group.addoption("--hermes-settings", metavar="FILE", default=None,
                    help="JSON/YAML file with the hermes-infra settings sections the hosts should match "
                         "(default: the built-in defaults)")
    group.addoption("--hermes-waivers", metavar="FILE", default=None,
                    help="waivers file (YAML): waived failures are reported as xfail")


def load_settings_file(path: str | None) -> HostSettings:
    if not path:
        return HostSettings()
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SettingsError(f"cannot read settings file {path}: {error}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"settings file {path} must hold a mapping of sections (docker, swap, gateways, ...)")
    return settings_from_raw(collect([raw]), source=str(path))


def _settings(config: pytest.Config) -> HostSettings:
    cached = getattr(config, "_hermes_settings", None)
    if cached is None:
        try:
            cached = load_settings_file(config.getoption("--hermes-settings"))
        except SettingsError as error:
            raise pytest.UsageError(str(error)) from None
        config._hermes_settings = cached
    return cached


def control_instances(config: pytest.Config):
    from hermes_infra.checks.runner import instances

    return list(instances(_settings(config)))


@pytest.fixture(scope="session")
def hermes_settings(pytestconfig: pytest.Config) -> HostSettings:
    return _settings(pytestconfig)


@pytest.fixture(scope="session")
def hermes_waivers(pytestconfig: pytest.Config):
    try:
        return load_waivers(pytestconfig.getoption("--hermes-waivers"), known_ids={c.id for c in all_controls()})
    except WaiverError as error:
        raise pytest.UsageError(str(error)) from None


@pytest.fixture(scope="module")
def hermes_context(host, hermes_settings) -> HostContext:
    """One context (cached facts) per testinfra host; testinfra keeps one connection per host."""
    return HostContext(host, hermes_settings)


def check_instance(context: HostContext, control, subject, waivers, record_property=None) -> None:
    """Evaluate one control instance and turn its outcome into a pytest outcome."""
    result = apply_waivers([evaluate(control, context, subject, context.name)], waivers, dt.date.today())[0]
    if record_property is not None:
        for key, value in (("control", control.id), ("severity", control.severity), ("cis", control.cis or ""),
                           ("subject", subject.label), ("status", result.status)):
            record_property(key, value)
    if result.status == "passed":
        return
    if result.status == "skipped":
        pytest.skip(result.message)
    if result.status == "waived":
        pytest.xfail(f"waived until {result.waiver.expires}: {result.waiver.justification} ({result.message})")
    expired = ""
    if result.expired_waiver is not None:
        expired = f"\nWaiver EXPIRED on {result.expired_waiver.expires}; it no longer waives this."
    if result.status == "warning":
        warnings.warn(AdvisoryFinding(f"{control.id} [{subject.label}] {control.title}: {result.message}"), stacklevel=1)
        return
    verb = "could not be checked" if result.status == "error" else "failed"
    pytest.fail(f"{control.id} [{subject.label}] {control.title} {verb}: {result.message}{expired}\n"
                f"Remediation: {control.remediation}", pytrace=False)
