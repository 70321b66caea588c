"""`tf.summary`: TensorBoard summaries, as in TF1.

A summary op's value is a serialized `Summary` protocol buffer (bytes); `merge` and
`merge_all` concatenate them, which is how protocol buffers merge. A `FileWriter` writes them
into TensorBoard event files with tensorboardX, imported only when a summary is first made or
written, so training without summaries never loads it.

    tf.summary.scalar("loss", loss)
    merged = tf.summary.merge_all()
    writer = tf.summary.FileWriter(logdir)
    summary, _ = sess.run([merged, train_op], feed)
    writer.add_summary(summary, step)
"""

import threading

import numpy as np

from .graph import Node, convert_to_tensor, get_default_graph
from .unimplemented import refuse as _refuse
from .variables import GraphKeys


def _proto():
    """tensorboardX's summary builders and Summary message."""
    # Lazy: tensorboardX brings protobuf, which a graph without summaries never loads.
    from tensorboardX import summary as builders
    from tensorboardX.proto.summary_pb2 import Summary
    return builders, Summary


class SummaryOp(Node):
    """Serializes its input's value as one kind of summary ("scalar", "histogram", "image")."""

    def __init__(self, kind, name, tensor, collections, **options):
        graph = get_default_graph()
        tensor = convert_to_tensor(tensor)
        self.kind, self.options = kind, options
        # TF1's tag: the name under the enclosing name scopes, without a uniquifying suffix.
        self.tag = "/".join(graph._name_stack + [name])
        super().__init__((tensor,), name=name, shape=(), dtype=np.object_, graph=graph)
        for key in (collections if collections is not None else [GraphKeys.SUMMARIES]):
            graph.add_to_collection(key, self)

    def forward(self, value):
        builders, _ = _proto()
        value = np.asarray(value)
        if self.kind == "scalar":
            if value.size != 1:
                raise ValueError(f"summary.scalar {self.tag!r}: the value must be a scalar, "
                                 f"got shape {value.shape}")
            return builders.scalar(self.tag, float(value.reshape(()))).SerializeToString()
        if self.kind == "histogram":
            values = value.astype(np.float64).ravel()
            return builders.histogram(self.tag, values, bins="auto").SerializeToString()
        return self._images(builders, value)

    def _images(self, builders, value):
        if value.ndim != 4 or value.shape[-1] not in (1, 3, 4):
            raise ValueError(f"summary.image {self.tag!r}: images must be [batch, height, "
                             f"width, 1|3|4 channels], got shape {value.shape}")
        count = min(self.options["max_outputs"], value.shape[0])
        parts = []
        for i in range(count):
            image = value[i]
            if image.dtype != np.uint8:  # floats are in [0, 1], as TF1 expects them
                image = np.clip(image.astype(np.float32), 0.0, 1.0)
            tag = f"{self.tag}/image" if count == 1 else f"{self.tag}/image/{i}"
            parts.append(builders.image(tag, image, dataformats="HWC").SerializeToString())
        return b"".join(parts)


class MergeSummary(Node):
    """The union of its inputs' summaries (serialized protocol buffers concatenate)."""

    def __init__(self, inputs, name=None):
        super().__init__(tuple(inputs), name=name or "Merge/MergeSummary", shape=(),
                         dtype=np.object_)

    def forward(self, *values):
        return b"".join(bytes(v) for v in values)


def scalar(name, tensor, collections=None, family=None):
    return SummaryOp("scalar", name, tensor, collections)


def histogram(name, values, collections=None, family=None):
    return SummaryOp("histogram", name, values, collections)


def image(name, tensor, max_outputs=3, collections=None, family=None):
    if not isinstance(max_outputs, int) or max_outputs < 1:
        raise ValueError(f"summary.image: max_outputs must be a whole number >= 1, got "
                         f"{max_outputs!r}")
    return SummaryOp("image", name, tensor, collections, max_outputs=max_outputs)


def merge(inputs, collections=None, name=None):
    inputs = list(inputs)
    if not inputs:
        raise ValueError("summary.merge: no summaries to merge")
    op = MergeSummary(inputs, name=name)
    for key in collections or ():
        get_default_graph().add_to_collection(key, op)
    return op


def merge_all(key=GraphKeys.SUMMARIES, scope=None, name=None):
    """All summaries of the collection merged into one op; None when there are none (as
    in TF1)."""
    summaries = get_default_graph().get_collection(key, scope)
    return merge(summaries, name=name) if summaries else None


class FileWriter:
    """Writes summaries into a TensorBoard event file in `logdir` (created if missing).
    `graph` is accepted; psflow writes no graph definition."""

    def __init__(self, logdir, graph=None, max_queue=10, flush_secs=120, filename_suffix=None,
                 session=None):
        import tensorboardX  # lazy, as above: loaded with the first writer
        self._logdir = str(logdir)
        self._writer = tensorboardX.FileWriter(self._logdir, max_queue=max_queue,
                                               flush_secs=flush_secs,
                                               filename_suffix=filename_suffix or "")
        self._closed = False

    def get_logdir(self):
        return self._logdir

    def add_summary(self, summary, global_step=None):
        """`summary`: what a summary op returned (bytes), or a Summary message."""
        _, Summary = _proto()
        if isinstance(summary, (bytes, bytearray, np.bytes_)):
            summary = Summary.FromString(bytes(summary))
        elif not isinstance(summary, Summary):
            raise TypeError(f"FileWriter.add_summary takes the value of a summary op (bytes), "
                            f"got {type(summary).__name__}")
        self._writer.add_summary(summary, None if global_step is None else int(global_step))

    def add_graph(self, graph, global_step=None):
        """Accepted: psflow writes no graph definition."""

    def add_session_log(self, session_log, global_step=None):
        """Accepted and not written."""

    def add_run_metadata(self, run_metadata, tag, global_step=None):
        """Accepted and not written."""

    def flush(self):
        self._writer.flush()

    def close(self):
        if not self._closed:
            self._closed = True
            self._writer.close()
            FileWriterCache._forget(self)

    def reopen(self):
        if self._closed:
            self.__init__(self._logdir)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class FileWriterCache:
    """One FileWriter per directory, shared by the hooks and the script (as in TF1)."""

    _writers = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, logdir):
        with cls._lock:
            writer = cls._writers.get(str(logdir))
            if writer is None:
                writer = cls._writers[str(logdir)] = FileWriter(logdir)
            return writer

    @classmethod
    def clear(cls):
        with cls._lock:
            writers, cls._writers = list(cls._writers.values()), {}
        for writer in writers:
            writer.close()

    @classmethod
    def _forget(cls, writer):
        with cls._lock:
            for key, value in list(cls._writers.items()):
                if value is writer:
                    del cls._writers[key]


def __getattr__(name):
    raise _refuse("tf.summary", name)
