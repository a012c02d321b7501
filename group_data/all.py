"""Settings for every host. Each variable is one section of the settings reference in the
README (all keys, defaults and meanings); group files (staging.py, production.py) and host
data override them key by key. Unset keys keep their defaults.
"""

swap = {"size": "2G", "swappiness": 10}

gateways = [
    {
        "name": "hermes",
        "timezone": "Etc/UTC",
        # "limits": {"memory": "3584M", "cpus": 2.5},   # unset: derived from the host
        # "env": {"OPENROUTER_API_KEY": "..."},          # better: host data or a secrets file
    },
]
