"""Stage 5, operations: pyinfra operations that compare the plan with the facts and yield
commands. release/deploy.py lists them in order (hermes_host)."""
