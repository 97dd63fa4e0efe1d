"""`python -m gms_relay`: the same as `gms-relay`."""

import sys

from gms_relay.cli import main

sys.exit(main())
