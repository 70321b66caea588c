"""A local job whose shards run as chains of replicas (`launch --ps-replicas R`, R > 1); see
docs/replication.md for the chains themselves.

Start: the chain master's port is picked first; then the M x R replicas start (`python -m
psflow.ps --task-index S ... --chain-master HOST:PORT`; "ps 0.1" is replica 1 of shard 0),
each on a free port it reports in its port file; then the chain master (`python -m
psflow.ps.chain_master --chain 0=A,B ...`), which writes its port file once epoch 1 of every
chain is installed. The workers' TF_CONFIG names each shard's head in its `ps` list, and the
replicas and the master in its "psflow" key.

While the workers run:
- a replica that exits while its shard has another live replica does not stop the job: the
  master removes it from the chain, the workers move to the new head, and the launcher starts
  a replacement on a new free port (`--join`: it copies the shard's state from the chain and
  the master appends it once it has caught up). A replacement that fails before joining is
  started again, up to --max-restarts times per shard; then the shard goes on with the
  replicas it has.
- a replica the master removed from its chain while it still runs (its heartbeats stopped:
  stalled, or cut off from the master) is stopped, and replaced as one that died.
- the chain master gone: it is started again on its address, within --max-restarts (it goes
  on with the chains the replicas hold; meanwhile their leases run out and the workers wait).
- every replica of a shard gone: the job stops, naming the shard.
At the end every replica exits by itself (each knows the workers are done: membership is a
write of the chain), and the launcher stops the master.
"""

import os
import signal
import sys
import time

import grpc

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.transport import auth
from .process import Child, describe_exit
from .resources import free_ports, port_in

# How often the launcher asks the master whether a dead replica has left its chain (its
# replacement then starts) and whether a replacement has joined.
CHAIN_CHECK_S = 0.2
GET_CHAIN_TIMEOUT_S = 1.0
GONE_TIMEOUT_S = 5.0


def chain_master_command():
    # -P: as for the parameter servers (see job_spec), the installed package, not a checkout's.
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe_path, "-m", "psflow.ps.chain_master"]


class ChainView:
    """The chains the chain master at `address` has installed (its GetChain)."""

    def __init__(self, address, token):
        self._metadata = auth.call_metadata(token)
        # A master started again on its address is found within a second.
        self._channel = auth.open_channel(address, codec.MASTER_CHANNEL_OPTIONS)
        self._get = self._channel.unary_unary(
            "/psflow.ChainMaster/GetChain",
            request_serializer=pb.GetChainRequest.SerializeToString,
            response_deserializer=pb.ChainConfig.FromString)
        self._gone = self._channel.unary_unary(
            "/psflow.ChainMaster/ReplicaGone",
            request_serializer=pb.ReplicaGoneRequest.SerializeToString,
            response_deserializer=pb.ChainConfig.FromString)

    def chain(self, shard, timeout=GET_CHAIN_TIMEOUT_S):
        """(epoch, [addresses, head first]) of `shard`'s chain; None if the master did not
        answer."""
        try:
            config = self._get(pb.GetChainRequest(shard=shard), timeout=timeout,
                               metadata=self._metadata)
        except grpc.RpcError:
            return None
        return config.epoch, list(config.replicas)

    def gone(self, shard, address, timeout=GONE_TIMEOUT_S):
        """Tells the master that replica `address` of `shard` exited, so that the chain goes
        on without it now rather than once its lease ran out; False if it did not answer
        (the lease then does it)."""
        try:
            self._gone(pb.ReplicaGoneRequest(shard=shard, address=address), timeout=timeout,
                       metadata=self._metadata)
        except grpc.RpcError:
            return False
        return True

    def close(self):
        self._channel.close()


class ReplicatedShards:
    """Job's chains of replicas; it uses the job's `spec`, `output`, `watchdog`, `token`,
    `_tmp`, `_stop`, `_child_env`, `_ps_child`, `_wait_for_ports` and `_terminate`, and fills
    `ps` (every replica in a chain), `chain_config` (TF_CONFIG's "psflow" key), `master` (the
    chain master's Child), `members` ([shard][Child] in its chain) and `joining` (replacements
    not in their chain yet)."""

    def _replica_port_file(self, shard, replica):
        return os.path.join(self._tmp, f"ps-{shard}.{replica}.port")

    def _start_chains(self):
        """Starts the replicas, then the chain master; the heads' addresses, or None after
        saying why the job cannot start."""
        spec = self.spec
        self.members = [[] for _ in range(spec.ps)]
        self.replicas_lost = 0
        self._next_replica = [spec.ps_replicas] * spec.ps
        self._failed_replacements = [0] * spec.ps
        self._joining = {}  # replacement Child -> [shard, port file, address or None]
        self._leaving = []  # [shard, address]: dead replicas still in their chain
        self._evicted = set()  # replicas stopped because the master removed them
        self._chains_checked_at = 0.0
        self._master_restarts = 0
        master_port = free_ports(spec.host, 1)[0]
        master_address = f"{spec.host}:{master_port}"
        port_files, wanted = [], []
        for shard in range(spec.ps):
            for replica in range(spec.ps_replicas):
                port_files.append(self._replica_port_file(shard, replica))
                wanted.append(spec.ps_port_of(shard, replica))
                child = self._ps_child(shard, wanted[-1], port_files[-1], fallback=True,
                                       replica=replica,
                                       extra=["--chain-master", master_address])
                self.members[shard].append(child)
                self.ps.append(child)
                self.output.launcher(f"started {child.name} (pid {child.pid})")
        ports = self._wait_for_ports(self.ps, port_files, wanted)
        if ports is None:
            return None
        self.addresses = {child: f"{spec.host}:{port}" for child, port in zip(self.ps, ports,
                                                                               strict=True)}
        chains = [[self.addresses[c] for c in members] for members in self.members]
        if not self._start_master(chains, master_port, "chain-master.port"):
            return None
        for shard, members in enumerate(self.members):
            self.output.launcher(f"shard {shard}: a chain of {len(members)} replicas, head "
                                 f"first: {', '.join(c.name for c in members)}")
        self.chain_config = {"ps_replicas": chains, "chain_master": master_address}
        self._view = ChainView(master_address, self.token)
        return [chain[0] for chain in chains]

    def _start_master(self, chains, port, port_file_name, note=""):
        """Starts the chain master of `chains` on `port` and waits for its port file; False
        after saying why it did not serve."""
        port_file = os.path.join(self._tmp, port_file_name)
        command = [*chain_master_command(), "--host", self.spec.host, "--port", str(port),
                   "--port-file", port_file, "--parent-pid", str(os.getpid())]
        for shard, chain in enumerate(chains):
            command += ["--chain", f"{shard}={','.join(chain)}"]
        self.master = Child("chain", "master", command, self._child_env("chain", "master", 1),
                            self.output, self.watchdog)
        self.output.launcher(f"started the chain master (pid {self.master.pid}){note}")
        return self._wait_for_ports([self.master], [port_file], [port]) is not None

    def _restart_master(self, code):
        """The master exited while the workers run: it is started again on its address (the
        replicas and the workers know it), and goes on with the chains the replicas hold.
        False, after saying why, when it is not (past --max-restarts, or it did not serve)."""
        self._master_restarts += 1
        count, bound = self._master_restarts, self.spec.max_restarts
        if count > bound:
            self.output.error(f"the chain master {describe_exit(code)} while the workers were "
                              "running; stopping the job")
            return False
        address = self.chain_config["chain_master"]
        self.output.error(f"the chain master {describe_exit(code)} while the workers were "
                          f"running; restarting it on {address}")
        self.master.reap()
        # The replicas' heartbeats tell it their chains; these name who to wait for.
        chains = [[self.addresses[c] for c in members if c.running] for members in self.members]
        return self._start_master(chains, int(address.rsplit(":", 1)[1]),
                                  f"chain-master.restart-{count}.port",
                                  f", {self._restart_count(count)}")

    def _watch_chains(self, ps_ended):
        """One look at the chains while the workers run: a replica that exited is replaced
        when its shard goes on; one that exited 0 (every worker is done) is added to
        `ps_ended`. False, after saying why, when the job must stop."""
        code = self.master.exit_code()
        if code is not None and not ps_ended and not self._restart_master(code):
            return False
        for child in list(self._joining):
            code = child.exit_code()
            if code is not None:
                self._replacement_ended(child, code, replace=not ps_ended)
        self._look_at_chains(ending=bool(ps_ended))
        for shard, members in enumerate(self.members):
            for child in list(members):
                code = child.exit_code()
                if code is None or child.name in ps_ended:
                    continue
                if code == 0:  # every worker reported done: the job is ending
                    ps_ended.append(child.name)
                    continue
                members.remove(child)
                self.ps.remove(child)
                child.reap()
                self.replicas_lost += 1
                live = [c.name for c in members if c.running]
                if not live:
                    self.output.error(f"{child.name} {describe_exit(code)} while the workers "
                                      f"were running, and shard {shard} has no other live "
                                      "replica; stopping the job")
                    return False
                if ps_ended:
                    self.output.error(f"{child.name} {describe_exit(code)}; shard {shard} "
                                      f"goes on with {', '.join(live)}")
                    continue
                self.output.error(f"{child.name} {describe_exit(code)} while the workers were "
                                  f"running; shard {shard} goes on with {', '.join(live)}; "
                                  "starting a replacement")
                # Once the master has removed it from the chain (told now: no need to wait
                # for its lease to run out), a replica joins the chain of the live ones.
                self._leaving.append((shard, self.addresses[child]))
                self._view.gone(shard, self.addresses[child])
        return True

    def _start_replacement(self, shard):
        number = self._next_replica[shard]
        self._next_replica[shard] += 1
        port_file = self._replica_port_file(shard, number)
        child = self._ps_child(shard, 0, port_file, replica=number,
                               extra=["--chain-master", self.chain_config["chain_master"],
                                      "--join"])
        self._joining[child] = [shard, port_file, None]
        self.output.launcher(f"started {child.name} (pid {child.pid}) to join shard {shard}'s "
                             "chain")

    def _replacement_ended(self, child, code, replace):
        """A replacement exited before its chain took it: another is started, within the
        shard's --max-restarts, when `replace`."""
        shard = self._joining.pop(child)[0]
        child.reap()
        if code == 0 or not replace:
            return
        self._failed_replacements[shard] += 1
        failed, bound = self._failed_replacements[shard], self.spec.max_restarts
        live = ", ".join(c.name for c in self.members[shard] if c.running)
        if failed <= bound:
            self.output.error(f"{child.name} {describe_exit(code)} before joining shard "
                              f"{shard}'s chain; starting another replacement (retry {failed} "
                              f"of {bound})")
            self._start_replacement(shard)
        else:
            self.output.error(f"{child.name} {describe_exit(code)} before joining shard "
                              f"{shard}'s chain; giving up on replacing the replica after "
                              f"{failed} failed replacement{'s' if failed > 1 else ''}: shard "
                              f"{shard} goes on with {live}")

    def _look_at_chains(self, ending):
        """Asks the master for the chains (every CHAIN_CHECK_S): stops a replica it removed
        from its chain while still running (its heartbeats stopped: it is stalled or cut off),
        to be replaced as one that died, unless the job is `ending`; starts the replacement of
        a dead replica once it is out of its chain; moves the replacements appended to their
        chains into `members`."""
        now = time.monotonic()
        if now - self._chains_checked_at < CHAIN_CHECK_S:
            return
        self._chains_checked_at = now
        chains = {}

        def chain(shard):  # (epoch, addresses) of the shard's chain; None: no answer
            if shard not in chains:
                chains[shard] = self._view.chain(shard)
            return chains[shard]

        for shard, members in enumerate(self.members):
            for child in members:
                found = None if ending or child in self._evicted or not child.running \
                    else chain(shard)
                if found is not None and self.addresses[child] not in found[1]:
                    self._evicted.add(child)
                    self.output.error(f"{child.name} was removed from shard {shard}'s chain by "
                                      "the chain master (its heartbeats stopped); stopping it")
                    child.signal_group(signal.SIGKILL)
        for shard, address in list(self._leaving):
            found = chain(shard)
            if found is not None and address not in found[1]:
                self._leaving.remove((shard, address))
                self._start_replacement(shard)
        for child, place in list(self._joining.items()):
            shard, port_file, address = place
            if address is None:
                port = port_in(port_file)
                if port is None:
                    continue
                place[2] = address = f"{self.spec.host}:{port}"
                self.output.launcher(f"{child.name} serving on {address}, joining shard "
                                     f"{shard}'s chain")
            found = chain(shard)
            if found is None or address not in found[1]:
                continue
            del self._joining[child]
            self.addresses[child] = address
            self.members[shard].append(child)
            self.ps.append(child)
            self.output.launcher(f"{child.name} joined shard {shard}'s chain at epoch "
                                 f"{found[0]}: {', '.join(c.name for c in self.members[shard])}")

    def _drop_joining(self):
        """Stops the replacements still joining: the job is over, there is nothing to join."""
        joining = [c for c in getattr(self, "_joining", ()) if c.running]
        if joining:
            self._terminate(joining)

    def _stop_master(self):
        """SIGTERM to the chain master (once the replicas are done with it), and reaps it."""
        if self.master is None:
            return
        if getattr(self, "_view", None) is not None:  # closed before the master goes
            self._view.close()
            self._view = None
        if self.master.running:
            self._terminate([self.master])
        self.master.reap()

    def _chain_children(self):
        """The master and the replacements still joining, for the teardown."""
        return list(getattr(self, "_joining", ())) + ([self.master] if self.master else [])
