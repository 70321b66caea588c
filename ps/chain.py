"""A shard's chain of replicas as one replica knows it: the epoch, every replica's address
(head first, tail last) and its own place. The epoch is the chain's configuration number: a
replica accepts calls and forwarded writes of its own epoch only, so a replica left out of a
newer chain cannot go on applying writes that the others will never see."""

import threading

from psflow.errors import FailedPreconditionError, InvalidArgumentError

# The metadata key under which a call carries the epoch of the chain its caller knows.
EPOCH_METADATA = "psflow-epoch"


class ChainConfig:
    """One configuration of a chain: `epoch` (from 1), `replicas` (addresses, head first) and
    `index`, the place of the replica that holds it."""

    __slots__ = ("epoch", "replicas", "index")

    def __init__(self, epoch, replicas, index):
        self.epoch, self.replicas, self.index = int(epoch), tuple(replicas), int(index)

    @property
    def is_head(self):
        return self.index == 0

    @property
    def is_tail(self):
        return self.index == len(self.replicas) - 1

    @property
    def successor(self):
        """The address the replica forwards its writes to, or None at the tail."""
        return None if self.is_tail else self.replicas[self.index + 1]

    @property
    def head(self):
        return self.replicas[0]

    def __eq__(self, other):
        return isinstance(other, ChainConfig) and (self.epoch, self.replicas, self.index) == \
            (other.epoch, other.replicas, other.index)

    def __repr__(self):
        return f"ChainConfig(epoch={self.epoch}, replicas={list(self.replicas)}, " \
               f"index={self.index})"


# A server that was never told of a chain: a lone shard, epoch 0, which is its own head and
# tail.
LONE = ChainConfig(0, ("",), 0)


class ChainState:
    """The current ChainConfig of replica `shard`'s chain; `install` replaces it."""

    def __init__(self, shard):
        self.shard = shard
        self.config = LONE
        self._lock = threading.Lock()

    def install(self, epoch, replicas, index):
        """Makes ChainConfig(epoch, replicas, index) current; returns (the previous config,
        the new one). InvalidArgumentError for a malformed chain; FailedPreconditionError for
        an epoch older than the current one, or the current epoch with another chain."""
        replicas = [str(r) for r in replicas]
        if epoch < 1:
            raise InvalidArgumentError(f"chain of shard {self.shard}: epoch {epoch} is not a "
                                       "positive number")
        if not replicas or any(not r for r in replicas):
            raise InvalidArgumentError(f"chain of shard {self.shard} at epoch {epoch}: every "
                                       f"replica needs an address, got {replicas}")
        malformed = [r for r in replicas if not _is_address(r)]
        if malformed:
            raise InvalidArgumentError(f"chain of shard {self.shard} at epoch {epoch}: "
                                       f"{malformed[0]!r} is not a host:port address")
        if len(set(replicas)) != len(replicas):
            raise InvalidArgumentError(f"chain of shard {self.shard} at epoch {epoch}: an "
                                       f"address appears twice in {replicas}")
        if not 0 <= index < len(replicas):
            raise InvalidArgumentError(f"chain of shard {self.shard} at epoch {epoch}: index "
                                       f"{index} is not a place in a chain of {len(replicas)}")
        config = ChainConfig(epoch, replicas, index)
        with self._lock:
            previous = self.config
            if epoch < previous.epoch or (epoch == previous.epoch and config != previous):
                raise FailedPreconditionError(
                    f"shard {self.shard} replica is at epoch {previous.epoch} "
                    f"({list(previous.replicas)}, index {previous.index}); refusing epoch "
                    f"{epoch} ({replicas}, index {index})")
            self.config = config
        return previous, config

    def check_epoch(self, epoch, what):
        """The current config, if `epoch` is its epoch (None: the caller names none);
        FailedPreconditionError naming both epochs otherwise."""
        config = self.config
        if epoch is not None and epoch != config.epoch:
            raise FailedPreconditionError(
                f"stale epoch: shard {self.shard} replica {config.index} is at epoch "
                f"{config.epoch}; {what} is of epoch {epoch} (head: {config.head or 'this'})")
        return config


def _is_address(text):
    """Whether `text` reads as host:port (an IPv6 host in brackets), port 1..65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    if host.startswith("["):
        return host.endswith("]") and len(host) > 2
    return ":" not in host and all(c.isalnum() or c in "-._" for c in host)


def epoch_of(context):
    """The epoch a call's metadata names (EPOCH_METADATA), or None; InvalidArgumentError when
    it is not a number. Calls without gRPC metadata (the same-host lane) name none."""
    metadata = getattr(context, "invocation_metadata", None)
    if metadata is None:
        return None
    for key, value in metadata() or ():
        if key == EPOCH_METADATA:
            try:
                return int(value)
            except ValueError:
                raise InvalidArgumentError(f"metadata {EPOCH_METADATA}: {value!r} is not an "
                                           "epoch number") from None
    return None
