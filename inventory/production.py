"""Production hosts; group data in group_data/production.py."""
production = [
    ("hermes-prod-1", {"ssh_hostname": "203.0.113.20", "ssh_user": "root"}),
    ("hermes-prod-2", {"ssh_hostname": "203.0.113.21", "ssh_user": "root"}),
]
