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
import threading
import time
from concurrent import futures

import grpc

from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.transport import auth
from .chain import ChainState

log = logging.getLogger(__name__)

LEASE_S = 3.0
# How often the master looks for replicas whose heartbeats stopped.
CHECK_S = 0.1
INSTALL_TIMEOUT_S = 10.0


class _Shard:
    def __init__(self, shard, replicas):
        ChainState(shard).install(1, replicas, 0)  # checks the addresses: ValueError if bad
        self.shard, self.epoch, self.replicas = shard, 0, list(replicas)
        self.heard = {}  # address -> time.monotonic() of its last heartbeat
        self.installed = (0, [])  # the last (epoch, replicas) every replica of took
        self.silent = False  # no replica's heartbeats arrive (logged once)


class ChainMaster:
    """Chains {shard: [address, ...]} (head first); `start()` serves on host:port and installs
    epoch 1 of every chain."""

    def __init__(self, chains, host="127.0.0.1", port=0, lease_s=LEASE_S, check_s=CHECK_S,
                 token=None):
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
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("psflow.ChainMaster", handlers),))
        self.port = self._server.add_insecure_port(f"{self.host}:{self.requested_port}")
        if self.port == 0:
            raise OSError(f"cannot bind {self.host}:{self.requested_port}")
        self._server.start()
        for s in self.shards.values():  # the replicas may still be starting: wait for them
            self._install_next(s, s.replicas, wait_for_ready=True)
        now = time.monotonic()
        with self._lock:
            for s in self.shards.values():
                s.heard = {r: max(now, s.heard.get(r, now)) for r in s.replicas}
        threading.Thread(target=self._watch, daemon=True, name="chain-master").start()
        log.info("chain master on %s for %d shards", self.address, len(self.shards))
        return self

    def _config(self, s, address):
        index = s.replicas.index(address) if address in s.replicas else -1
        return pb.ChainConfig(epoch=s.epoch, replicas=s.replicas, index=index)

    def _heartbeat(self, request, context):
        with self._lock:
            s = self.shards.get(request.shard)
            if s is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no shard {request.shard} here")
            if request.address in s.replicas:
                s.heard[request.address] = time.monotonic()
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
                    self._stub(replicas[index])(
                        pb.ChainConfig(epoch=epoch, replicas=replicas, index=index),
                        timeout=INSTALL_TIMEOUT_S, metadata=self._metadata,
                        wait_for_ready=wait_for_ready)
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m psflow.ps.chain_master",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--chain", action="append", required=True,
                        help="SHARD=HOST:PORT,HOST:PORT (head first); once per shard")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lease", type=float, default=LEASE_S, help="lease in seconds")
    args = parser.parse_args(argv)
    try:
        chains = parse_chains(args.chain)
        master = ChainMaster(chains, args.host, args.port, args.lease).start()
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    print(f"chain master on {master.address}", flush=True)
    try:
        master.wait()
    except KeyboardInterrupt:
        master.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
