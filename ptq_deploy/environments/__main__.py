"""``python -m ptq_deploy.environments``: set up, lock and bundle the two pinned environments (stdlib only)."""

import sys

from ptq_deploy.environments import main

sys.exit(main())
