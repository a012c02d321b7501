import sys

from hermes_infra.cli import main

sys.exit(main())
