"""`--batching_parameters_file`: TensorFlow Serving's BatchingParameters in its text format,
read with the message of `proto/tfserving/session_bundle_config.proto`:

    max_batch_size { value: 64 }
    batch_timeout_micros { value: 1000 }
    num_batch_threads { value: 2 }
    max_enqueued_batches { value: 100 }
    allowed_batch_sizes: 16
    allowed_batch_sizes: 64

A field left out takes TF Serving's default; a file that does not parse or holds a value
that cannot work is an InvalidArgumentError naming the file and the field.
"""

import dataclasses

from google.protobuf import text_format

from psflow.errors import InvalidArgumentError
from psflow.proto.tfserving.session_bundle_config_pb2 import BatchingParameters


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """How requests are batched; the defaults are TF Serving's."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = 4
    max_enqueued_batches: int = 10
    allowed_batch_sizes: tuple = ()

    @property
    def batch_timeout_seconds(self):
        return self.batch_timeout_micros / 1e6

    def validate(self, where="batching parameters"):
        for name, low in (("max_batch_size", 1), ("batch_timeout_micros", 0),
                          ("num_batch_threads", 1), ("max_enqueued_batches", 1)):
            value = getattr(self, name)
            if value < low:
                raise InvalidArgumentError(f"{where}: {name} must be at least {low}, got {value}")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if sizes != sorted(set(sizes)) or sizes[0] < 1:
                raise InvalidArgumentError(f"{where}: allowed_batch_sizes must be positive and "
                                           f"increasing, got {sizes}")
            if sizes[-1] != self.max_batch_size:
                raise InvalidArgumentError(
                    f"{where}: the last of allowed_batch_sizes ({sizes[-1]}) must equal "
                    f"max_batch_size ({self.max_batch_size})")
        return self

    def padded_size(self, size):
        """The allowed batch size a batch of `size` is padded up to (`size` itself when any
        size is allowed)."""
        for allowed in self.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size


def parse_batching_parameters(text, where="batching parameters"):
    """BatchingOptions from BatchingParameters text; InvalidArgumentError when it is wrong."""
    message = BatchingParameters()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from None
    defaults = BatchingOptions()
    values = {}
    for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                 "max_enqueued_batches"):
        values[name] = (getattr(message, name).value if message.HasField(name)
                        else getattr(defaults, name))
    values["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
    if message.pad_variable_length_inputs:
        raise InvalidArgumentError(f"{where}: pad_variable_length_inputs is not supported; "
                                   "requests of different shapes are batched apart")
    return BatchingOptions(**values).validate(where)


def read_batching_parameters(path):
    """BatchingOptions from a --batching_parameters_file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read the batching parameters file {path}: "
                                   f"{exc}") from None
    return parse_batching_parameters(text, where=path)
