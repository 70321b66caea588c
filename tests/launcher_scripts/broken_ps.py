"""A parameter server that never serves, for the launcher's tests: with --hang it waits
without reporting a port; otherwise it exits 4 at once. Takes the PS flags and ignores them."""

import sys
import time

if "--hang" in sys.argv:
    print("broken ps: hanging", file=sys.stderr)
    while True:
        time.sleep(1)
print("broken ps: cannot start", file=sys.stderr)
sys.exit(4)
