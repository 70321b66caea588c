"""Groups of items whose total size fits one message (within proto.codec's payload limit)."""

from psflow.proto import codec


def batches(items, size_of, limit=codec.MAX_PAYLOAD_BYTES):
    """Groups items so that each group's total size stays within `limit` (an item larger than
    the limit travels alone)."""
    batch, total = [], 0
    for item in items:
        size = size_of(item)
        if batch and total + size > limit:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += size
    if batch:
        yield batch
