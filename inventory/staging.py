"""Staging hosts. `pyinfra inventory/staging.py deploy.py` or `hermes-infra up inventory/staging.py`.

Each host is `("name", {data})`; group data for these hosts is in group_data/staging.py.
"""
staging = [
    ("staging-1", {"ssh_hostname": "203.0.113.10", "ssh_user": "root"}),
]
