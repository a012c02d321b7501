"""Stage 5, operations: pyinfra operations that compare the plan with the facts and yield
commands, and the deploy that lists them (deploy.hermes_host)."""
