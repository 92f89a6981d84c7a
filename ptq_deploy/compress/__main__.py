"""``python -m ptq_deploy.compress JOB.json RESULT.json | --serve FD``: the compress worker, in the compress
environment."""

import sys

from ptq_deploy.compress.worker import main

sys.exit(main())
