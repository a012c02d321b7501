"""Makes `pytest .../hermes_infra/checks/test_controls.py` work without `-p`: the plugin's hooks
and fixtures, re-exported where pytest looks for them."""
from hermes_infra.checks import plugin
from hermes_infra.checks.plugin import hermes_context, hermes_settings, hermes_waivers  # noqa: F401


def pytest_addoption(parser):
    try:
        plugin.pytest_addoption(parser)
    except ValueError:
        pass  # already added: the plugin was also loaded with `-p hermes_infra.checks.plugin`
