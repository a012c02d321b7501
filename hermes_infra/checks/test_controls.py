"""The hermes-infra controls as pytest tests over testinfra's `host` fixture.

    pytest --hosts=ssh://root@HOST,paramiko://root@OTHER [--hermes-settings FILE] \\
        $(python -c 'import hermes_infra.checks as c; print(c.TEST_MODULE)')

One test per control instance (control x subject) per host; failures carry the remediation.
"""
from __future__ import annotations

from hermes_infra.checks.plugin import check_instance, control_instances


def pytest_generate_tests(metafunc):
    if "hermes_instance" in metafunc.fixturenames:
        pairs = control_instances(metafunc.config)
        metafunc.parametrize("hermes_instance", pairs, ids=[f"{c.id}:{s.label}" for c, s in pairs])


def test_control(hermes_context, hermes_instance, hermes_waivers, request):
    control, subject = hermes_instance
    check_instance(hermes_context, control, subject, hermes_waivers,
                   lambda key, value: request.node.user_properties.append((key, value)))
