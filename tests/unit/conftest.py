"""Fixtures every fast test shares."""
from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _pyinfra_logs_reach_caplog(monkeypatch):
    """pyinfra's CLI logging setup (run in this process by an e2e test that drives pyinfra, when the
    whole suite runs at once) stops its logger from propagating, and `caplog` listens at the root:
    the operations' messages would vanish from tests that read them, in that order only."""
    monkeypatch.setattr(logging.getLogger("pyinfra"), "propagate", True)
