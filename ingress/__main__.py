"""`python -m ingress`: the same as `gms-relay ingress`."""

import sys

from shared.cli import main

sys.exit(main(["ingress", *sys.argv[1:]]))
