"""A worker script that never creates a psflow session and ignores SIGTERM: it starts a
process of its own (which starts another in a new session of its own would escape; this one
stays in the group), records both pids in OUT_DIR/sleeper-<pid>.json and sleeps."""

import json
import os
import signal
import subprocess
import sys
import time

out_dir = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                          "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                          "time.sleep(600)"])
with open(os.path.join(out_dir, f"sleeper-{os.getpid()}.json"), "w") as f:
    json.dump({"pid": os.getpid(), "grandchild_pid": child.pid}, f)
time.sleep(600)
