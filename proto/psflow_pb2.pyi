from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaGoneRequest(_message.Message):
    __slots__ = ("shard", "address")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    address: str
    def __init__(self, shard: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class JoinChainRequest(_message.Message):
    __slots__ = ("shard", "address", "ready", "copied_from", "epoch", "incarnation")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    COPIED_FROM_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    shard: int
    address: str
    ready: bool
    copied_from: str
    epoch: int
    incarnation: int
    def __init__(self, shard: _Optional[int] = ..., address: _Optional[str] = ..., ready: _Optional[bool] = ..., copied_from: _Optional[str] = ..., epoch: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class JoinChainResponse(_message.Message):
    __slots__ = ("action", "chain")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        COPY: _ClassVar[JoinChainResponse.Action]
        FOUNDER: _ClassVar[JoinChainResponse.Action]
        ALONE: _ClassVar[JoinChainResponse.Action]
        JOINED: _ClassVar[JoinChainResponse.Action]
    COPY: JoinChainResponse.Action
    FOUNDER: JoinChainResponse.Action
    ALONE: JoinChainResponse.Action
    JOINED: JoinChainResponse.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    action: JoinChainResponse.Action
    chain: ChainConfig
    def __init__(self, action: _Optional[_Union[JoinChainResponse.Action, str]] = ..., chain: _Optional[_Union[ChainConfig, _Mapping]] = ...) -> None: ...

class CopyShardRequest(_message.Message):
    __slots__ = ("epoch", "since", "incarnation", "final")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    since: int
    incarnation: int
    final: bool
    def __init__(self, epoch: _Optional[int] = ..., since: _Optional[int] = ..., incarnation: _Optional[int] = ..., final: _Optional[bool] = ...) -> None: ...

class ShardPiece(_message.Message):
    __slots__ = ("method", "request", "removed", "end", "pending")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    method: str
    request: bytes
    removed: TableRemovals
    end: ShardCopyEnd
    pending: PendingPush
    def __init__(self, method: _Optional[str] = ..., request: _Optional[bytes] = ..., removed: _Optional[_Union[TableRemovals, _Mapping]] = ..., end: _Optional[_Union[ShardCopyEnd, _Mapping]] = ..., pending: _Optional[_Union[PendingPush, _Mapping]] = ...) -> None: ...

class PendingPush(_message.Message):
    __slots__ = ("step", "worker", "rule", "gradients")
    STEP_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    step: int
    worker: int
    rule: UpdateRule
    gradients: _containers.RepeatedCompositeFieldContainer[Gradient]
    def __init__(self, step: _Optional[int] = ..., worker: _Optional[int] = ..., rule: _Optional[_Union[UpdateRule, _Mapping]] = ..., gradients: _Optional[_Iterable[_Union[Gradient, _Mapping]]] = ...) -> None: ...

class SyncCopy(_message.Message):
    __slots__ = ("arrivals", "decisions", "last_decision", "applied", "dropped", "steps", "clocks")
    class ClocksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    ARRIVALS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CLOCKS_FIELD_NUMBER: _ClassVar[int]
    arrivals: _containers.RepeatedCompositeFieldContainer[StepDecision]
    decisions: _containers.RepeatedCompositeFieldContainer[StepDecision]
    last_decision: StepDecision
    applied: int
    dropped: int
    steps: int
    clocks: _containers.ScalarMap[int, int]
    def __init__(self, arrivals: _Optional[_Iterable[_Union[StepDecision, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[StepDecision, _Mapping]]] = ..., last_decision: _Optional[_Union[StepDecision, _Mapping]] = ..., applied: _Optional[int] = ..., dropped: _Optional[int] = ..., steps: _Optional[int] = ..., clocks: _Optional[_Mapping[int, int]] = ...) -> None: ...

class TableRemovals(_message.Message):
    __slots__ = ("table", "keys")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: Tensor
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ShardCopyEnd(_message.Message):
    __slots__ = ("upto", "incarnation", "applied_seq", "registered", "done", "push_answers", "global_step", "input_positions", "table_step", "sync")
    UPTO_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PUSH_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    INPUT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TABLE_STEP_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    upto: int
    incarnation: int
    applied_seq: int
    registered: _containers.RepeatedScalarFieldContainer[int]
    done: _containers.RepeatedScalarFieldContainer[int]
    push_answers: _containers.RepeatedCompositeFieldContainer[PushAnswer]
    global_step: int
    input_positions: _containers.RepeatedCompositeFieldContainer[InputPosition]
    table_step: int
    sync: SyncCopy
    def __init__(self, upto: _Optional[int] = ..., incarnation: _Optional[int] = ..., applied_seq: _Optional[int] = ..., registered: _Optional[_Iterable[int]] = ..., done: _Optional[_Iterable[int]] = ..., push_answers: _Optional[_Iterable[_Union[PushAnswer, _Mapping]]] = ..., global_step: _Optional[int] = ..., input_positions: _Optional[_Iterable[_Union[InputPosition, _Mapping]]] = ..., table_step: _Optional[int] = ..., sync: _Optional[_Union[SyncCopy, _Mapping]] = ...) -> None: ...

class PushAnswer(_message.Message):
    __slots__ = ("worker", "id", "staleness", "global_step", "dropped")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    worker: int
    id: PushId
    staleness: _containers.RepeatedScalarFieldContainer[int]
    global_step: int
    dropped: bool
    def __init__(self, worker: _Optional[int] = ..., id: _Optional[_Union[PushId, _Mapping]] = ..., staleness: _Optional[_Iterable[int]] = ..., global_step: _Optional[int] = ..., dropped: _Optional[bool] = ...) -> None: ...

class ReplicaHeartbeatRequest(_message.Message):
    __slots__ = ("shard", "address", "epoch", "replicas")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    address: str
    epoch: int
    replicas: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shard: _Optional[int] = ..., address: _Optional[str] = ..., epoch: _Optional[int] = ..., replicas: _Optional[_Iterable[str]] = ...) -> None: ...

class ReplicaHeartbeatResponse(_message.Message):
    __slots__ = ("chain", "lease_s")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    chain: ChainConfig
    lease_s: float
    def __init__(self, chain: _Optional[_Union[ChainConfig, _Mapping]] = ..., lease_s: _Optional[float] = ...) -> None: ...

class GetChainRequest(_message.Message):
    __slots__ = ("shard",)
    SHARD_FIELD_NUMBER: _ClassVar[int]
    shard: int
    def __init__(self, shard: _Optional[int] = ...) -> None: ...

class ChainConfig(_message.Message):
    __slots__ = ("epoch", "replicas", "index")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    replicas: _containers.RepeatedScalarFieldContainer[str]
    index: int
    def __init__(self, epoch: _Optional[int] = ..., replicas: _Optional[_Iterable[str]] = ..., index: _Optional[int] = ...) -> None: ...

class ChainConfigResponse(_message.Message):
    __slots__ = ("epoch", "applied_seq", "incarnation")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    applied_seq: int
    incarnation: int
    def __init__(self, epoch: _Optional[int] = ..., applied_seq: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("epoch", "seq", "method", "request")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    seq: int
    method: str
    request: bytes
    def __init__(self, epoch: _Optional[int] = ..., seq: _Optional[int] = ..., method: _Optional[str] = ..., request: _Optional[bytes] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("applied_seq",)
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    applied_seq: int
    def __init__(self, applied_seq: _Optional[int] = ...) -> None: ...

class InputPosition(_message.Message):
    __slots__ = ("dataset", "shard", "num_shards", "file", "lines")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    shard: int
    num_shards: int
    file: str
    lines: int
    def __init__(self, dataset: _Optional[str] = ..., shard: _Optional[int] = ..., num_shards: _Optional[int] = ..., file: _Optional[str] = ..., lines: _Optional[int] = ...) -> None: ...

class InputPositionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InputPositionsResponse(_message.Message):
    __slots__ = ("positions",)
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedCompositeFieldContainer[InputPosition]
    def __init__(self, positions: _Optional[_Iterable[_Union[InputPosition, _Mapping]]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "content", "padding")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    content: bytes
    padding: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., content: _Optional[bytes] = ..., padding: _Optional[bytes] = ...) -> None: ...

class VariableSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class DeclareVariablesRequest(_message.Message):
    __slots__ = ("variables", "tables")
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[VariableSpec]
    tables: _containers.RepeatedCompositeFieldContainer[TableSpec]
    def __init__(self, variables: _Optional[_Iterable[_Union[VariableSpec, _Mapping]]] = ..., tables: _Optional[_Iterable[_Union[TableSpec, _Mapping]]] = ...) -> None: ...

class TableSpec(_message.Message):
    __slots__ = ("name", "dim", "dtype", "initializer", "initializer_params", "filter_freq", "steps_to_live", "max_rows")
    class InitializerParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_PARAMS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FREQ_FIELD_NUMBER: _ClassVar[int]
    STEPS_TO_LIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    dtype: str
    initializer: str
    initializer_params: _containers.ScalarMap[str, float]
    filter_freq: int
    steps_to_live: int
    max_rows: int
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., dtype: _Optional[str] = ..., initializer: _Optional[str] = ..., initializer_params: _Optional[_Mapping[str, float]] = ..., filter_freq: _Optional[int] = ..., steps_to_live: _Optional[int] = ..., max_rows: _Optional[int] = ...) -> None: ...

class DeclareVariablesResponse(_message.Message):
    __slots__ = ("initialized",)
    INITIALIZED_FIELD_NUMBER: _ClassVar[int]
    initialized: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, initialized: _Optional[_Iterable[str]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    version: int
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class InitializeVariablesRequest(_message.Message):
    __slots__ = ("values", "overwrite", "slots", "set_global_step", "global_step", "table_rows", "input_positions")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SET_GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    TABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    INPUT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    overwrite: bool
    slots: _containers.RepeatedCompositeFieldContainer[SlotValue]
    set_global_step: bool
    global_step: int
    table_rows: _containers.RepeatedCompositeFieldContainer[TableRows]
    input_positions: _containers.RepeatedCompositeFieldContainer[InputPosition]
    def __init__(self, values: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., overwrite: _Optional[bool] = ..., slots: _Optional[_Iterable[_Union[SlotValue, _Mapping]]] = ..., set_global_step: _Optional[bool] = ..., global_step: _Optional[int] = ..., table_rows: _Optional[_Iterable[_Union[TableRows, _Mapping]]] = ..., input_positions: _Optional[_Iterable[_Union[InputPosition, _Mapping]]] = ...) -> None: ...

class TableRows(_message.Message):
    __slots__ = ("name", "fields")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    fields: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, name: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class SlotValue(_message.Message):
    __slots__ = ("variable", "rule", "slot", "tensor")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    variable: str
    rule: str
    slot: str
    tensor: Tensor
    def __init__(self, variable: _Optional[str] = ..., rule: _Optional[str] = ..., slot: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SaveShardRequest(_message.Message):
    __slots__ = ("path", "since_seq", "since_incarnation")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQ_FIELD_NUMBER: _ClassVar[int]
    SINCE_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    path: str
    since_seq: int
    since_incarnation: int
    def __init__(self, path: _Optional[str] = ..., since_seq: _Optional[int] = ..., since_incarnation: _Optional[int] = ...) -> None: ...

class SaveShardResponse(_message.Message):
    __slots__ = ("sha256", "global_step", "bytes", "variables", "input_positions", "delta", "table_seq", "incarnation")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    INPUT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    global_step: int
    bytes: int
    variables: _containers.RepeatedScalarFieldContainer[str]
    input_positions: _containers.RepeatedCompositeFieldContainer[InputPosition]
    delta: bool
    table_seq: int
    incarnation: int
    def __init__(self, sha256: _Optional[str] = ..., global_step: _Optional[int] = ..., bytes: _Optional[int] = ..., variables: _Optional[_Iterable[str]] = ..., input_positions: _Optional[_Iterable[_Union[InputPosition, _Mapping]]] = ..., delta: _Optional[bool] = ..., table_seq: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class InitializeVariablesResponse(_message.Message):
    __slots__ = ("assigned",)
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    assigned: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, assigned: _Optional[_Iterable[str]] = ...) -> None: ...

class WaitInitializedRequest(_message.Message):
    __slots__ = ("names", "timeout_ms")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    timeout_ms: int
    def __init__(self, names: _Optional[_Iterable[str]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class WaitInitializedResponse(_message.Message):
    __slots__ = ("ready", "missing")
    READY_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ready: _Optional[bool] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("names", "commit")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    commit: StepDecision
    def __init__(self, names: _Optional[_Iterable[str]] = ..., commit: _Optional[_Union[StepDecision, _Mapping]] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("values", "global_step", "decision")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    global_step: int
    decision: StepDecision
    def __init__(self, values: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., global_step: _Optional[int] = ..., decision: _Optional[_Union[StepDecision, _Mapping]] = ...) -> None: ...

class PullRowsRequest(_message.Message):
    __slots__ = ("selections", "commit", "keys", "global_step")
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    selections: _containers.RepeatedCompositeFieldContainer[RowSelection]
    commit: StepDecision
    keys: _containers.RepeatedCompositeFieldContainer[KeySelection]
    global_step: int
    def __init__(self, selections: _Optional[_Iterable[_Union[RowSelection, _Mapping]]] = ..., commit: _Optional[_Union[StepDecision, _Mapping]] = ..., keys: _Optional[_Iterable[_Union[KeySelection, _Mapping]]] = ..., global_step: _Optional[int] = ...) -> None: ...

class KeySelection(_message.Message):
    __slots__ = ("name", "keys", "counts", "train")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    keys: Tensor
    counts: Tensor
    train: bool
    def __init__(self, name: _Optional[str] = ..., keys: _Optional[_Union[Tensor, _Mapping]] = ..., counts: _Optional[_Union[Tensor, _Mapping]] = ..., train: _Optional[bool] = ...) -> None: ...

class RowSelection(_message.Message):
    __slots__ = ("name", "rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    rows: Tensor
    def __init__(self, name: _Optional[str] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class StepDecision(_message.Message):
    __slots__ = ("step", "workers")
    STEP_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    step: int
    workers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, step: _Optional[int] = ..., workers: _Optional[_Iterable[int]] = ...) -> None: ...

class Consistency(_message.Message):
    __slots__ = ("mode", "replicas_to_aggregate", "staleness")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ASYNC: _ClassVar[Consistency.Mode]
        SYNC: _ClassVar[Consistency.Mode]
        SSP: _ClassVar[Consistency.Mode]
    ASYNC: Consistency.Mode
    SYNC: Consistency.Mode
    SSP: Consistency.Mode
    MODE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_TO_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    mode: Consistency.Mode
    replicas_to_aggregate: int
    staleness: int
    def __init__(self, mode: _Optional[_Union[Consistency.Mode, str]] = ..., replicas_to_aggregate: _Optional[int] = ..., staleness: _Optional[int] = ...) -> None: ...

class Gradient(_message.Message):
    __slots__ = ("name", "values", "indices", "version", "keyed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYED_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: Tensor
    indices: Tensor
    version: int
    keyed: bool
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., indices: _Optional[_Union[Tensor, _Mapping]] = ..., version: _Optional[int] = ..., keyed: _Optional[bool] = ...) -> None: ...

class UpdateRule(_message.Message):
    __slots__ = ("name", "hyper")
    class HyperEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    HYPER_FIELD_NUMBER: _ClassVar[int]
    name: str
    hyper: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., hyper: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("gradients", "rule", "worker", "increment_global_step", "global_step", "pull", "consistency", "id", "input_positions")
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    INCREMENT_GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    gradients: _containers.RepeatedCompositeFieldContainer[Gradient]
    rule: UpdateRule
    worker: int
    increment_global_step: bool
    global_step: int
    pull: _containers.RepeatedScalarFieldContainer[str]
    consistency: Consistency
    id: PushId
    input_positions: _containers.RepeatedCompositeFieldContainer[InputPosition]
    def __init__(self, gradients: _Optional[_Iterable[_Union[Gradient, _Mapping]]] = ..., rule: _Optional[_Union[UpdateRule, _Mapping]] = ..., worker: _Optional[int] = ..., increment_global_step: _Optional[bool] = ..., global_step: _Optional[int] = ..., pull: _Optional[_Iterable[str]] = ..., consistency: _Optional[_Union[Consistency, _Mapping]] = ..., id: _Optional[_Union[PushId, _Mapping]] = ..., input_positions: _Optional[_Iterable[_Union[InputPosition, _Mapping]]] = ...) -> None: ...

class PushId(_message.Message):
    __slots__ = ("incarnation", "sequence", "index")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    sequence: int
    index: int
    def __init__(self, incarnation: _Optional[int] = ..., sequence: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("staleness", "global_step", "values", "dropped", "decision")
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    staleness: _containers.RepeatedScalarFieldContainer[int]
    global_step: int
    values: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    dropped: bool
    decision: StepDecision
    def __init__(self, staleness: _Optional[_Iterable[int]] = ..., global_step: _Optional[int] = ..., values: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., dropped: _Optional[bool] = ..., decision: _Optional[_Union[StepDecision, _Mapping]] = ...) -> None: ...

class WorkerRequest(_message.Message):
    __slots__ = ("task_index",)
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    def __init__(self, task_index: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("task_index", "local_step", "loss", "activity", "examples")
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    local_step: int
    loss: float
    activity: str
    examples: int
    def __init__(self, task_index: _Optional[int] = ..., local_step: _Optional[int] = ..., loss: _Optional[float] = ..., activity: _Optional[str] = ..., examples: _Optional[int] = ...) -> None: ...

class WorkerResponse(_message.Message):
    __slots__ = ("checkpoint_root", "num_workers", "done", "lane")
    CHECKPOINT_ROOT_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    checkpoint_root: str
    num_workers: int
    done: int
    lane: str
    def __init__(self, checkpoint_root: _Optional[str] = ..., num_workers: _Optional[int] = ..., done: _Optional[int] = ..., lane: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStats(_message.Message):
    __slots__ = ("task_index", "registered", "done", "local_step", "loss", "last_seen_s", "pushes", "activity", "examples")
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_S_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    registered: bool
    done: bool
    local_step: int
    loss: float
    last_seen_s: float
    pushes: int
    activity: str
    examples: int
    def __init__(self, task_index: _Optional[int] = ..., registered: _Optional[bool] = ..., done: _Optional[bool] = ..., local_step: _Optional[int] = ..., loss: _Optional[float] = ..., last_seen_s: _Optional[float] = ..., pushes: _Optional[int] = ..., activity: _Optional[str] = ..., examples: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("shard", "global_step", "pushes", "bytes_received", "bytes_sent", "staleness_histogram", "workers", "variables", "uptime_s", "dropped", "nonfinite", "tables", "variable_bytes", "pulls", "sync_steps")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    STALENESS_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    NONFINITE_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PULLS_FIELD_NUMBER: _ClassVar[int]
    SYNC_STEPS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    global_step: int
    pushes: int
    bytes_received: int
    bytes_sent: int
    staleness_histogram: _containers.RepeatedScalarFieldContainer[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStats]
    variables: int
    uptime_s: float
    dropped: int
    nonfinite: int
    tables: _containers.RepeatedCompositeFieldContainer[TableStats]
    variable_bytes: int
    pulls: int
    sync_steps: int
    def __init__(self, shard: _Optional[int] = ..., global_step: _Optional[int] = ..., pushes: _Optional[int] = ..., bytes_received: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., staleness_histogram: _Optional[_Iterable[int]] = ..., workers: _Optional[_Iterable[_Union[WorkerStats, _Mapping]]] = ..., variables: _Optional[int] = ..., uptime_s: _Optional[float] = ..., dropped: _Optional[int] = ..., nonfinite: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableStats, _Mapping]]] = ..., variable_bytes: _Optional[int] = ..., pulls: _Optional[int] = ..., sync_steps: _Optional[int] = ...) -> None: ...

class TableStats(_message.Message):
    __slots__ = ("name", "rows", "bytes", "created", "filtered", "evicted", "dropped_gradients")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    FILTERED_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    rows: int
    bytes: int
    created: int
    filtered: int
    evicted: int
    dropped_gradients: int
    def __init__(self, name: _Optional[str] = ..., rows: _Optional[int] = ..., bytes: _Optional[int] = ..., created: _Optional[int] = ..., filtered: _Optional[int] = ..., evicted: _Optional[int] = ..., dropped_gradients: _Optional[int] = ...) -> None: ...

class FollowRequest(_message.Message):
    __slots__ = ("after_seq", "incarnation")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    incarnation: int
    def __init__(self, after_seq: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class TableUpdate(_message.Message):
    __slots__ = ("name", "dim", "dtype", "keys", "values", "removed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    dtype: str
    keys: Tensor
    values: Tensor
    removed: Tensor
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., dtype: _Optional[str] = ..., keys: _Optional[_Union[Tensor, _Mapping]] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., removed: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ParameterUpdate(_message.Message):
    __slots__ = ("incarnation", "shard", "from_seq", "to_seq", "snapshot", "last", "tables", "dense")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    shard: int
    from_seq: int
    to_seq: int
    snapshot: bool
    last: bool
    tables: _containers.RepeatedCompositeFieldContainer[TableUpdate]
    dense: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, incarnation: _Optional[int] = ..., shard: _Optional[int] = ..., from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ..., snapshot: _Optional[bool] = ..., last: _Optional[bool] = ..., tables: _Optional[_Iterable[_Union[TableUpdate, _Mapping]]] = ..., dense: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...
