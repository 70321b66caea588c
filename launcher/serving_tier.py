"""A local job's serving parameter tier (`launch --serving-replicas R`): R psflow-params
processes per parameter server, each following its shard from the moment the shard serves, so
that a predict server can read the rows the job is training while it trains:

    psflow-serve --model_name ctr --model_base_path models/ctr \\
        --params_shard=127.0.0.1:A,127.0.0.1:B --params_shard=127.0.0.1:C,127.0.0.1:D

(the launcher prints that line, with the tier's addresses). A tier process that exits is
started again on its port: serving never ends the job, and the job's end ends the tier.
"""

import os
import sys
import time

from .process import Child, describe_exit
from .resources import port_in

POLL_S = 0.05
START_TIMEOUT_S = 60.0


class ServingTier:
    """The job's tier processes; it uses the job's `spec`, `output`, `watchdog`, `_tmp`,
    `_stop`, `ps_addresses` and `_child_env`, and fills `params` ([shard][replica] Child) and
    `params_addresses`."""

    def _start_tier(self):
        """Starts R psflow-params per shard and waits for their ports; False (after saying
        why) if one cannot start."""
        replicas = self.spec.serving_replicas
        self.params = [[None] * replicas for _ in self.ps_addresses]
        self.params_addresses = [[None] * replicas for _ in self.ps_addresses]
        for shard in range(len(self.ps_addresses)):
            for replica in range(replicas):
                self._start_params(shard, replica, port=0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while any(None in row for row in self.params_addresses):
            for shard, row in enumerate(self.params):
                for replica, child in enumerate(row):
                    if self.params_addresses[shard][replica] is not None:
                        continue
                    port = port_in(self._params_port_file(shard, replica))
                    if port is not None:
                        self.params_addresses[shard][replica] = f"{self.spec.host}:{port}"
                    elif not child.running or time.monotonic() > deadline:
                        self.output.error(f"{child.name} {describe_exit(child.exit_code())} "
                                          "before serving; stopping the job" if not
                                          child.running else f"{child.name} did not report "
                                          f"a port within {START_TIMEOUT_S:g} s; stopping "
                                          "the job")
                        return False
            if self._stop.wait(POLL_S):
                return False
        self.output.launcher("serving tier: psflow-serve --model_name NAME --model_base_path "
                             "BASE " + " ".join(f"--params_shard={','.join(row)}"
                                                for row in self.params_addresses))
        return True

    def _params_port_file(self, shard, replica):
        return os.path.join(self._tmp, f"params-{shard}-{replica}.port")

    def _start_params(self, shard, replica, port):
        port_file = self._params_port_file(shard, replica)
        if os.path.exists(port_file):
            os.unlink(port_file)
        command = [sys.executable, "-m", "psflow.serving.params_server",
                   f"--follow={self.ps_addresses[shard]}", f"--host={self.spec.host}",
                   f"--port={port}", f"--port-file={port_file}"]
        chains = getattr(self, "chain_config", None)
        if chains:  # the shard is a chain: its tier follows the chain's tail, whichever
            command += [f"--chain-master={chains['chain_master']}", f"--shard={shard}"]
        index = f"{shard}.{replica}"  # "params 0.1": replica 1 of shard 0
        child = Child("params", index, command, self._child_env("params", index, 1),
                      self.output, self.watchdog)
        self.params[shard][replica] = child
        self.output.launcher(f"started {child.name} (pid {child.pid}), following "
                             f"{self.ps_addresses[shard]}")
        return child

    def _watch_tier(self):
        """Starts again, on its port, a tier process that exited."""
        for shard, row in enumerate(getattr(self, "params", ())):
            for replica, child in enumerate(row):
                code = child.exit_code()
                if code is None or self._stop.is_set():
                    continue
                child.reap()
                port = int(self.params_addresses[shard][replica].rsplit(":", 1)[1])
                self.output.error(f"{child.name} {describe_exit(code)}; starting it again on "
                                  f"port {port}")
                self._start_params(shard, replica, port)

    def _tier_children(self):
        return [child for row in getattr(self, "params", ()) for child in row]
