"""The chain master: `python -m psflow.ps.chain_master --chain SHARD=HOST:PORT,HOST:PORT ...`.

It holds each shard's chain (epoch, replicas head first) and installs it on the replicas,
from the tail up to the head, so that a replica's successor knows an epoch before the replica
sends it anything. Replicas heartbeat to it (ps/lease.py) and get a lease of `lease_s`; a
replica none of whose heartbeats reached the master for longer than a lease is declared dead
(its own lease has run out by then, so it refuses writes) and the master installs the next
epoch without it: the survivors carry on, the new head passing on again the writes the tail
had not acknowledged. Workers ask it for a shard's chain (GetChain) to find the head."""

import argparse
import logging
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

from psflow.fileio import atomic_write
from psflow.parent import ParentWatch
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.transport import auth
from .chain import ChainState

log = logging.getLogger(__name__)

LEASE_S = 3.0
# How often the master looks for replicas whose heartbeats stopped.
CHECK_S = 0.1
INSTALL_TIMEOUT_S = 10.0
# How long a starting master gathers the chains the replicas hold (a master that restarted
# continues from them; the replicas heartbeat every half second).
RECOVER_S = 1.5


class _Shard:
    def __init__(self, shard, replicas):
        ChainState(shard).install(1, replicas, 0)  # checks the addresses: ValueError if bad
        self.shard, self.epoch, self.replicas = shard, 0, list(replicas)
        self.heard = {}  # address -> time.monotonic() of its last heartbeat
        self.installed = (0, [])  # the last (epoch, replicas) every replica of took
        self.silent = False  # no replica's heartbeats arrive (logged once)
        self.installing = threading.Lock()  # one new chain of the shard at a time
        self.incarnations = {}  # address -> the incarnation of the process installed there


class ChainMaster:
    """Chains {shard: [address, ...]} (head first); `start()` serves on host:port and installs
    epoch 1 of every chain."""

    def __init__(self, chains, host="127.0.0.1", port=0, lease_s=LEASE_S, check_s=CHECK_S,
                 token=None, exit_after_silence_s=0.0):
        """`exit_after_silence_s` > 0: stop once no replica of any shard has heartbeated for
        that long, after some did (the job is over: its replicas exit with its workers)."""
        if not chains:
            raise ValueError("the chain master needs at least one shard's chain")
        self.shards = {int(s): _Shard(int(s), r) for s, r in chains.items()}
        self.lease_s, self.check_s = float(lease_s), float(check_s)
        self.token = auth.token_from_env() if token is None else token
        self.host, self.requested_port = host, port
        self._metadata = auth.call_metadata(self.token)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._channels = {}
        self._server = None
        self.exit_after_silence_s = float(exit_after_silence_s)
        self._last_heard = None  # time.monotonic() of the last heartbeat of any replica
        # While starting: (shard, address) -> (epoch, replicas) a replica's heartbeat said it
        # holds (see _gather_reports).
        self._recovering = True
        self._reports = {}

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def chain(self, shard):
        """(epoch, [replica addresses, head first]) of the last chain of `shard` installed on
        every replica of it; KeyError if unknown."""
        with self._lock:
            epoch, replicas = self.shards[shard].installed
            return epoch, list(replicas)

    def start(self):
        interceptors = [auth.TokenInterceptor(self.token)] if self.token else []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                                   options=codec.CHANNEL_OPTIONS, interceptors=interceptors)
        handlers = {
            "ReplicaHeartbeat": grpc.unary_unary_rpc_method_handler(
                self._heartbeat, pb.ReplicaHeartbeatRequest.FromString,
                pb.ReplicaHeartbeatResponse.SerializeToString),
            "GetChain": grpc.unary_unary_rpc_method_handler(
                self._get_chain, pb.GetChainRequest.FromString,
                pb.ChainConfig.SerializeToString),
            "JoinChain": grpc.unary_unary_rpc_method_handler(
                self._join_chain, pb.JoinChainRequest.FromString,
                pb.JoinChainResponse.SerializeToString),
            "ReplicaGone": grpc.unary_unary_rpc_method_handler(
                self._replica_gone, pb.ReplicaGoneRequest.FromString,
                pb.ChainConfig.SerializeToString),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("psflow.ChainMaster", handlers),))
        self.port = self._server.add_insecure_port(f"{self.host}:{self.requested_port}")
        if self.port == 0:
            raise OSError(f"cannot bind {self.host}:{self.requested_port}")
        self._server.start()
        reports = self._gather_reports()
        for s in self.shards.values():
            with s.installing:
                held = reports.get(s.shard)
                if held:  # the master restarted: the replicas' newest chain goes on
                    epoch, replicas = max(held)
                    log.info("shard %d: its replicas hold epoch %d (%s): the chain goes on "
                             "from there", s.shard, epoch, ", ".join(replicas))
                    s.epoch = epoch
                    self._install_next(s, list(replicas))
                else:  # the replicas may still be starting: wait for them
                    self._install_next(s, s.replicas, wait_for_ready=True)
        now = time.monotonic()
        with self._lock:
            for s in self.shards.values():
                s.heard = {r: max(now, s.heard.get(r, now)) for r in s.replicas}
        threading.Thread(target=self._watch, daemon=True, name="chain-master").start()
        log.info("chain master on %s for %d shards", self.address, len(self.shards))
        return self

    def _gather_reports(self):
        """{shard: [(epoch, replicas)]} of the chains the replicas' first heartbeats say they
        hold, gathered for up to RECOVER_S (less once every named replica reported). A
        master that restarted finds its shards' chains there; a new job's replicas hold
        none (epoch 0)."""
        deadline = time.monotonic() + min(RECOVER_S, self.lease_s)
        named = {(s.shard, r) for s in self.shards.values() for r in s.replicas}
        while time.monotonic() < deadline and not self._stopped.is_set():
            with self._lock:
                heard = set(self._reports)
            if named <= heard:
                break
            time.sleep(0.02)
        with self._lock:
            self._recovering = False
            reports = {}
            for (shard, _), (epoch, replicas) in self._reports.items():
                if epoch > 0 and replicas:
                    reports.setdefault(shard, []).append((epoch, tuple(replicas)))
            return reports

    def _config(self, s, address):
        index = s.replicas.index(address) if address in s.replicas else -1
        return pb.ChainConfig(epoch=s.epoch, replicas=s.replicas, index=index)

    def _heartbeat(self, request, context):
        with self._lock:
            s = self.shards.get(request.shard)
            if s is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no shard {request.shard} here")
            if self._recovering:
                self._reports[(s.shard, request.address)] = (request.epoch,
                                                             list(request.replicas))
            if request.address in s.replicas:
                s.heard[request.address] = self._last_heard = time.monotonic()
            return pb.ReplicaHeartbeatResponse(chain=self._config(s, request.address),
                                               lease_s=self.lease_s)

    def _get_chain(self, request, context):
        with self._lock:
            s = self.shards.get(request.shard)
            if s is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no shard {request.shard} here")
            epoch, replicas = s.installed
            return pb.ChainConfig(epoch=epoch, replicas=replicas, index=0)

    def _watch(self):
        while not self._stopped.wait(self.check_s):
            for s in self.shards.values():
                if s.installing.acquire(blocking=False):  # else a join is installing a chain
                    try:
                        self._check(s)
                    finally:
                        s.installing.release()
            if self.exit_after_silence_s and self._last_heard is not None and \
                    time.monotonic() - self._last_heard > self.exit_after_silence_s:
                log.info("no replica heartbeated for %.0f s: the job is over",
                         self.exit_after_silence_s)
                self._stopped.set()

    def _check(self, s):
        """Removes the replicas of shard `s` whose heartbeats stopped (under s.installing)."""
        now = time.monotonic()
        with self._lock:
            live = [r for r in s.replicas if now - s.heard[r] <= self.lease_s]
            dead = sorted(set(s.replicas) - set(live))
            if live and dead:  # from now on their heartbeats renew no lease
                s.replicas = live
        if live and dead:
            log.warning("shard %d: replicas %s missed their heartbeats for %.1f s: "
                        "removed from the chain", s.shard, ", ".join(dead), self.lease_s)
            self._install_next(s, live)
        elif not live and not s.silent:
            log.error("shard %d: no replica heartbeats; the chain stays %s", s.shard,
                      s.replicas)
        s.silent = not live

    def _replica_gone(self, request, context):
        """ReplicaGone: the replica's process ended; the survivors go on at the next epoch."""
        s = self.shards.get(request.shard)
        if s is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no shard {request.shard} here")
        with s.installing:
            with self._lock:
                rest = [r for r in s.replicas if r != request.address]
                gone = bool(rest) and len(rest) < len(s.replicas)
                if gone:
                    s.replicas = rest
            if gone:
                log.warning("shard %d: replica %s ended: removed from the chain", s.shard,
                            request.address)
                self._install_next(s, rest)
            return self._installed_config(s)

    def _join_chain(self, request, context):
        """JoinChain (see join.py): where a joining replica copies from, and, once it copied
        (`ready`), the chain with it appended as the tail."""
        s = self.shards.get(request.shard)
        if s is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no shard {request.shard} here")
        address = request.address
        with s.installing:
            epoch, replicas = s.installed
            if epoch == 0:
                if address in s.replicas:
                    return pb.JoinChainResponse(action=pb.JoinChainResponse.FOUNDER,
                                                chain=pb.ChainConfig(replicas=s.replicas))
                context.abort(grpc.StatusCode.UNAVAILABLE, f"shard {s.shard}'s chain is not "
                              "installed yet")
            if not request.ready:
                # The very process the chain was installed on (it may ask before it heard
                # of the install): a founder; another one at its address lost its state.
                if address in replicas and (request.epoch == epoch or (
                        request.incarnation and
                        request.incarnation == s.incarnations.get(address))):
                    return pb.JoinChainResponse(action=pb.JoinChainResponse.FOUNDER,
                                                chain=self._installed_config(s))
                return self._copy_from(s, address, replicas)
            if replicas[-1] != request.copied_from or address in replicas:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"shard {s.shard}'s chain is now {replicas}: {address} copied "
                              f"from {request.copied_from}, no longer its tail; copy again")
            if not self._heard_from(s, address):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"{address} sent no heartbeat within {self.lease_s:g} s of "
                              "joining; start again")
            self._install_next(s, replicas + [address])
            epoch, replicas = s.installed
            if address not in replicas:
                context.abort(grpc.StatusCode.ABORTED, f"shard {s.shard}: {address} could "
                              f"not be appended to the chain (now {replicas}); start again")
            log.info("shard %d: %s joined the chain at epoch %d", s.shard, address, epoch)
            return pb.JoinChainResponse(action=pb.JoinChainResponse.JOINED,
                                        chain=pb.ChainConfig(epoch=epoch, replicas=replicas,
                                                             index=len(replicas) - 1))

    def _copy_from(self, s, address, replicas):
        """A replica asks to join: a restarted one at the address of a replica of the chain
        has lost its state, so that replica is removed first."""
        if address in replicas:
            rest = [r for r in replicas if r != address]
            log.warning("shard %d: %s started again and lost its state: removed from the "
                        "chain", s.shard, address)
            self._install_next(s, rest or [address])
            if not rest:
                return pb.JoinChainResponse(action=pb.JoinChainResponse.ALONE,
                                            chain=self._installed_config(s))
        return pb.JoinChainResponse(action=pb.JoinChainResponse.COPY,
                                    chain=self._installed_config(s))

    def _installed_config(self, s):
        epoch, replicas = s.installed
        return pb.ChainConfig(epoch=epoch, replicas=replicas, index=-1)

    def _heard_from(self, s, address):
        """Adds `address` to the replicas whose heartbeats renew a lease and waits (up to a
        lease) for one of them: the joiner must hold a lease before it is installed."""
        with self._lock:
            added = time.monotonic()
            s.heard[address] = added
            s.replicas = s.replicas + [address]
        deadline = added + self.lease_s
        while time.monotonic() < deadline:
            with self._lock:
                if s.heard[address] > added:
                    return True
            time.sleep(0.02)
        with self._lock:
            s.replicas = [r for r in s.replicas if r != address]
        return False

    def _install_next(self, s, replicas, wait_for_ready=False):
        """Installs `replicas` as the next epoch of shard `s`'s chain, tail first; a replica
        that refuses or cannot be reached is left out and the next epoch tried."""
        while replicas and not self._stopped.is_set():
            with self._lock:
                s.epoch += 1
                s.replicas = list(replicas)
                epoch = s.epoch
            failed = None
            for index in reversed(range(len(replicas))):
                try:
                    answer = self._stub(replicas[index])(
                        pb.ChainConfig(epoch=epoch, replicas=replicas, index=index),
                        timeout=INSTALL_TIMEOUT_S, metadata=self._metadata,
                        wait_for_ready=wait_for_ready)
                    s.incarnations[replicas[index]] = answer.incarnation
                except grpc.RpcError as exc:
                    log.warning("shard %d: replica %s refused epoch %d: %s: %s", s.shard,
                                replicas[index], epoch, exc.code().name, exc.details())
                    failed = replicas[index]
                    break
            if failed is None:
                with self._lock:
                    s.installed = (epoch, list(replicas))
                log.info("shard %d at epoch %d: %s", s.shard, epoch, ", ".join(replicas))
                return
            replicas = [r for r in replicas if r != failed]

    def _stub(self, address):
        if address not in self._channels:
            channel = auth.open_channel(address, codec.CHANNEL_OPTIONS)
            self._channels[address] = channel.unary_unary(
                "/psflow.ParameterServer/InstallChain",
                request_serializer=pb.ChainConfig.SerializeToString,
                response_deserializer=pb.ChainConfigResponse.FromString), channel
        return self._channels[address][0]

    def stop(self):
        self._stopped.set()
        if self._server is not None:
            self._server.stop(0).wait()
        for _, channel in self._channels.values():
            channel.close()

    def wait(self, timeout=None):
        return self._stopped.wait(timeout)


def parse_chains(items):
    """{shard: [addresses]} of SHARD=HOST:PORT,HOST:PORT items; ValueError naming a bad one."""
    chains = {}
    for item in items:
        shard, sep, replicas = item.partition("=")
        if not sep or not shard.isdigit() or not replicas:
            raise ValueError(f"--chain {item!r}: expected SHARD=HOST:PORT[,HOST:PORT...]")
        chains[int(shard)] = replicas.split(",")
    return chains


def _heartbeats_arrived(master, since, timeout):
    """Waits (up to `timeout` seconds) until a heartbeat of every replica reached `master`
    after `since` (time.monotonic()); whether they all did."""
    deadline = since + timeout
    while True:
        heard = [t for s in master.shards.values() for t in list(s.heard.values())]
        if all(t > since for t in heard):
            return True
        if time.monotonic() > deadline or master.wait(CHECK_S):
            return False


def main(argv=None):
    """Serves until SIGTERM or SIGINT, or until the --parent-pid process is gone (exit 0, as
    the parameter servers); exit 2 on bad arguments, 1 when it cannot serve or write its port
    file."""
    parser = argparse.ArgumentParser(prog="python -m psflow.ps.chain_master",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--chain", action="append", required=True,
                        help="SHARD=HOST:PORT,HOST:PORT (head first); once per shard")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lease", type=float, default=LEASE_S, help="lease in seconds")
    parser.add_argument("--exit-after-silence", type=float, default=0.0, metavar="SECONDS",
                        help="exit 0 once no replica has heartbeated for this long, after "
                             "some did (0, the default: serve until stopped)")
    parser.add_argument("--port-file",
                        help="write the bound port to this file (atomically) once epoch 1 of "
                             "every chain is installed and every replica has heartbeated")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.parent_pid is not None and args.parent_pid < 1:
        parser.error(f"--parent-pid must be a process id, got {args.parent_pid}")
    try:
        chains = parse_chains(args.chain)
        master = ChainMaster(chains, args.host, args.port, args.lease,
                             exit_after_silence_s=args.exit_after_silence)
    except ValueError as exc:
        parser.error(str(exc))
    ended = []  # why the master stops: a signal's name, or the parent gone
    for signum in (signal.SIGTERM, signal.SIGINT):
        # The handler only notes the signal: grpc's stop must not run inside its frame.
        signal.signal(signum, lambda num, frame: ended.append(signal.Signals(num).name))
    if args.parent_pid is not None:
        ParentWatch(args.parent_pid).start(lambda: ended.append("parent gone"),
                                           name="chain-master-parent")
    try:
        master.start()  # returns once epoch 1 is installed on every replica
    except OSError as exc:
        log.error("%s", exc)
        return 1
    if args.port_file:
        # Ready for workers once every replica holds a lease, not just its chain.
        if not _heartbeats_arrived(master, time.monotonic(), master.lease_s):
            log.warning("not every replica heartbeated within %g s of its chain's install",
                        master.lease_s)
        try:
            atomic_write(args.port_file, f"{master.port}\n".encode())
        except OSError as exc:
            log.error("cannot write the port file %s: %s", args.port_file, exc)
            master.stop()
            return 1
    print(f"chain master on {master.address}", flush=True)
    while not ended and not master.wait(0.2):
        pass
    master.stop()
    log.info("chain master exiting: %s", ended[0] if ended else "stopped")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(main())
