"""How a DistributedStore joins its shards: registering with each, declaring the variable
parts and tables it placed there, the chief's initial values, and the other workers' wait for
them (woken by the shards, not polling). A shard that restarted is found again here too
(`lost_shards`)."""

import logging
import time

import numpy as np

from psflow import settings
from psflow.errors import DeadlineExceededError, UnavailableError
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from .client import worker_request
from .payload_batches import batches

log = logging.getLogger(__name__)

# How long a non-chief waits for the chief to initialize the variables before giving up.
INIT_TIMEOUT_S = settings.INIT_TIMEOUT.get()
# How long to wait for the parameter servers to come up.
CONNECT_TIMEOUT_S = settings.CONNECT_TIMEOUT.get()


class Initialization:
    """DistributedStore's set-up with its shards; it uses the store's `clients`, `worker`,
    `placement`, `tables`, `step` and `checkpoint_roots`."""

    def register(self, timeout=CONNECT_TIMEOUT_S):
        """Registers with every shard, waiting (bounded) for each to come up."""
        deadline = time.monotonic() + timeout
        for client in self.clients:
            try:
                reply = self._register_with(client, deadline)
            except DeadlineExceededError:
                raise DeadlineExceededError(
                    f"parameter server {client.index} at {client.address} did not answer within "
                    f"{timeout:.0f} s") from None
            self.checkpoint_roots[client.index] = reply.checkpoint_root

    def _register_with(self, client, deadline):
        """RegisterWorker on `client`, waiting until `deadline` for a shard that is not up."""
        return client.call("RegisterWorker", worker_request(self.worker),
                           timeout=max(deadline - time.monotonic(), 0.1), wait_for_ready=True)

    def _variable_specs(self, shard):
        return [pb.VariableSpec(name=p.name, dtype=p.dtype.name, shape=p.shape)
                for p in self.placement.shard_parts(shard)]

    def declare(self):
        """Declares every variable part on its shard; returns the set of parts that already
        have values."""
        initialized = set()
        tables = [table_spec(t, len(self.clients)) for t in self.tables]
        for client in self.clients:
            specs = self._variable_specs(client.index)
            if specs or tables:
                reply = client.call("DeclareVariables", pb.DeclareVariablesRequest(
                    variables=specs, tables=tables))
                initialized.update(reply.initialized)
        return initialized

    def init_table(self, var):
        """Tables are declared on every shard with the session and start empty."""

    def initialize(self, values, overwrite=False, shards=None):
        """Sends initial values ({Variable: array}) to the shards that own them (only to
        `shards`, when given)."""
        by_shard = {}
        for var, value in values.items():
            value = np.asarray(value, dtype=var.dtype)
            for part in self.placement.parts_of(var):
                if shards is not None and part.shard not in shards:
                    continue
                data = value[part.start:part.stop] if len(part.shape) else value
                by_shard.setdefault(part.shard, []).append((part, data))
        for shard, items in by_shard.items():
            client = self.clients[shard]
            for batch in batches(items, lambda item: item[0].nbytes):
                request = pb.InitializeVariablesRequest(overwrite=overwrite)
                for part, data in batch:
                    codec.encode(data, request.values.add(name=part.name).tensor)
                client.call("InitializeVariables", request)

    def wait_initialized(self, timeout=INIT_TIMEOUT_S, shards=None):
        """Blocks until the chief has initialized every variable (woken by the shards)."""
        deadline = time.monotonic() + timeout
        for client in self.clients:
            if shards is not None and client.index not in shards:
                continue
            names = [p.name for p in self.placement.shard_parts(client.index)]
            while names:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceededError(
                        f"waited {timeout:.0f} s for the chief to initialize the variables; still "
                        f"missing on parameter server {client.index}: {', '.join(names[:5])}")
                wait_ms = int(min(remaining, 10.0) * 1000)
                reply = client.call("WaitInitialized", pb.WaitInitializedRequest(
                    names=names, timeout_ms=wait_ms), timeout=wait_ms / 1000 + 30)
                names = list(reply.missing)
                if names:
                    log.info("waiting for the chief to initialize %d variables", len(names))

    def lost_shards(self, timeout):
        """Registers again with every shard, waiting up to `timeout` for those that are
        restarting, and declares the variables again; returns the shards that came back
        without their variables (a restarted parameter server)."""
        lost = []
        deadline = time.monotonic() + timeout
        for client in self.clients:
            while True:
                # wait_for_ready covers a server that is down; a call that reached it just
                # as it went down fails at once, and is tried again within the bound.
                try:
                    self._register_with(client, deadline)
                    break
                except UnavailableError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.2)
            specs = self._variable_specs(client.index)
            if not specs:
                continue
            reply = client.call("DeclareVariables", pb.DeclareVariablesRequest(variables=specs))
            if len(reply.initialized) < len(specs):
                lost.append(client.index)
        self.step.returned = {}
        self.step.returned_step = None
        return lost


def table_spec(table, num_shards=1):
    """The TableSpec that declares EmbeddingVariable `table` on each of `num_shards` shards (a
    cap of max_rows is split among them)."""
    spec = table.spec()
    max_rows = spec.get("max_rows") or 0
    if max_rows:
        max_rows = -(-max_rows // num_shards)
    initializer = dict(spec["initializer"])
    kind = initializer.pop("kind")
    return pb.TableSpec(name=spec["name"], dim=spec["dim"], dtype=spec["dtype"],
                        initializer=kind,
                        initializer_params={k: float(v) for k, v in initializer.items()},
                        filter_freq=spec["filter_freq"],
                        steps_to_live=spec["steps_to_live"] or 0, max_rows=max_rows)
