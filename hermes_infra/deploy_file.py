"""pyinfra deploy: `pyinfra inventory/<env>.py deploy.py` (or `hermes-infra up TARGET`).

Everything a host should be is in hermes_infra.release.deploy.hermes_host; the settings come from
group_data/*.py and the inventory, validated before any operation runs.
"""
from hermes_infra.release.deploy import hermes_host

hermes_host()
