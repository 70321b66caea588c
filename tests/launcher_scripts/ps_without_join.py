"""A parameter server that cannot join a running chain: `python ps_without_join.py FLAGS` runs
`python -m psflow.ps FLAGS`, except that one started with --join fails at once (exit 2), as a
replacement that cannot copy its shard would."""

import os
import sys

if "--join" in sys.argv:
    print("this parameter server does not join chains", file=sys.stderr)
    sys.exit(2)
safe_path = ["-P"] if sys.version_info >= (3, 11) else []
os.execv(sys.executable, [sys.executable, *safe_path, "-m", "psflow.ps", *sys.argv[1:]])
