"""The local VM that `hermes-infra try` boots (127.0.0.1, forwarded SSH port, its own key).

    hermes-infra try                       # build + boot + deploy + check, once
    pyinfra inventory/local.py deploy.py   # the same deploy, the pyinfra way
"""
from hermes_infra.localvm import LocalVM, VMNotFound

try:
    local = [LocalVM.load("try").pyinfra_host()]
except VMNotFound:
    raise SystemExit("no local VM is running: start one with `hermes-infra try`") from None
