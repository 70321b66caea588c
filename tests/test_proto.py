"""The wire contract: committed stubs match the .proto; the tensor codec round-trips every
dtype without copying on decode and refuses malformed tensors."""

import importlib.util
import pathlib

import numpy as np
import pytest

from psflow.proto import codec, wire
from psflow.proto import psflow_pb2 as pb
from psflow.transport import memory

PROTO_DIR = pathlib.Path(__file__).resolve().parent.parent / "proto"
STUBS = ("psflow_pb2.py", "psflow_pb2.pyi", "psflow_pb2_grpc.py")
# TensorFlow Serving's messages: every .proto of tfserving/ gets its stubs, the services their
# gRPC stubs too.
TFSERVING_STUBS = tuple(sorted(
    [f"tfserving/{p.stem}{suffix}" for p in (PROTO_DIR / "tfserving").glob("*.proto")
     for suffix in ("_pb2.py", "_pb2.pyi")]
    + ["tfserving/prediction_service_pb2_grpc.py", "tfserving/model_service_pb2_grpc.py"]))


def _load_generate():
    spec = importlib.util.spec_from_file_location("psflow_proto_generate",
                                                  PROTO_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_fresh(tmp_path):
    written = _load_generate().generate(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == sorted(
        STUBS + TFSERVING_STUBS)
    committed_stubs = {str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*_pb2*")
                       if p.suffix in (".py", ".pyi")}
    assert committed_stubs == set(STUBS + TFSERVING_STUBS), "a stub without its .proto"
    for name in STUBS + TFSERVING_STUBS:
        fresh = (tmp_path / name).read_text()
        committed = (PROTO_DIR / name).read_text()
        assert fresh == committed, (f"proto/{name} is stale: run `python proto/generate.py` "
                                    "and commit the result")


def test_grpc_stub_imports_the_package_module():
    text = (PROTO_DIR / "psflow_pb2_grpc.py").read_text()
    assert "from . import psflow_pb2 as" in text
    assert "\nimport psflow_pb2" not in text


def test_tfserving_stubs_import_their_siblings_relatively():
    # protoc writes `from tfserving import tensor_pb2`, which only works with proto/ on sys.path.
    for name in TFSERVING_STUBS:
        text = (PROTO_DIR / name).read_text()
        assert "from tfserving import" not in text, name
    assert "from . import predict_pb2 as" in (
        PROTO_DIR / "tfserving/prediction_service_pb2_grpc.py").read_text()


ALL_DTYPES = ["float16", "float32", "float64", "int32", "int64", "uint8", "bool"]


def _sample(dtype, shape):
    rng = np.random.default_rng(0)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 100, size=shape).astype(dtype)


def _through_the_wire(array):
    """Encode, serialize, parse and decode, as a real call does."""
    wire = codec.encode(array).SerializeToString()
    return codec.decode(pb.Tensor.FromString(wire))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (4, 3)])
def test_round_trip_every_dtype_and_shape(dtype, shape):
    array = _sample(dtype, shape)
    message = codec.encode(array)
    assert message.dtype == dtype
    assert list(message.shape) == list(shape)
    assert len(message.content) == array.size * np.dtype(dtype).itemsize
    back = _through_the_wire(array)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_round_trip_non_contiguous(dtype):
    base = _sample(dtype, (6, 8))
    view = base[::2, 1::3].T  # strided and transposed
    assert not view.flags.c_contiguous
    back = _through_the_wire(view)
    assert back.shape == view.shape
    np.testing.assert_array_equal(back, view)


def test_big_endian_input_travels_little_endian():
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    message = codec.encode(array)
    assert message.content == np.arange(6, dtype="<f4").tobytes()
    np.testing.assert_array_equal(codec.decode(message), array)


def test_decode_is_a_read_only_view_of_the_bytes():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    message = codec.encode(array)
    decoded = codec.decode(message)
    assert not decoded.flags.owndata
    assert not decoded.flags.writeable
    # The array's memory is the message content's bytes object: no copy was made.
    root = decoded
    while isinstance(root, np.ndarray):
        root = root.base
    assert isinstance(root, bytes)
    assert np.shares_memory(decoded, np.frombuffer(root, dtype=np.uint8))


def test_scalar_round_trip_keeps_its_value():
    back = _through_the_wire(np.float64(2.5))
    assert back.shape == () and back.dtype == np.float64 and float(back) == 2.5


@pytest.mark.parametrize("content_bytes", [0, 11, 13, 100])
def test_wrong_content_length_names_both_sizes(content_bytes):
    message = pb.Tensor(dtype="float32", shape=[3], content=b"\0" * content_bytes)
    with pytest.raises(codec.CodecError) as info:
        codec.decode(message, "gradient of 'w'")
    text = str(info.value)
    assert f"{content_bytes} bytes" in text
    assert "12 bytes" in text
    assert "gradient of 'w'" in text


def test_negative_dimension_is_refused():
    with pytest.raises(codec.CodecError, match="negative"):
        codec.decode(pb.Tensor(dtype="float32", shape=[-1, 2], content=b""))


@pytest.mark.parametrize("name", ["complex64", "float128", "object", "", "Float32", "int8"])
def test_unknown_dtype_is_refused_on_decode(name):
    with pytest.raises(codec.CodecError, match="dtype"):
        codec.decode(pb.Tensor(dtype=name, shape=[1], content=b"\0" * 4))


@pytest.mark.parametrize("array", [np.zeros(2, np.complex64), np.array(["a"]),
                                   np.array([object()]), np.zeros(2, np.int8)])
def test_unsupported_dtype_is_refused_on_encode(array):
    with pytest.raises(codec.CodecError, match="cannot travel"):
        codec.encode(array)


def test_codec_error_is_a_value_error():
    assert issubclass(codec.CodecError, ValueError)


def test_encode_fills_a_given_message():
    request = pb.PushRequest()
    gradient = request.gradients.add(name="w", version=3)
    codec.encode(np.ones((2, 2), np.float32), gradient.values)
    parsed = pb.PushRequest.FromString(request.SerializeToString())
    np.testing.assert_array_equal(codec.decode(parsed.gradients[0].values), np.ones((2, 2)))
    assert not parsed.gradients[0].HasField("indices")


def test_message_limits_leave_room_for_a_payload():
    assert codec.MAX_PAYLOAD_BYTES * 4 <= codec.MAX_MESSAGE_BYTES < 2 ** 31
    options = dict(codec.CHANNEL_OPTIONS)
    assert options["grpc.max_send_message_length"] == codec.MAX_MESSAGE_BYTES
    assert options["grpc.max_receive_message_length"] == codec.MAX_MESSAGE_BYTES


def test_allocator_tuning_is_taken_on_glibc():
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system")
    assert memory.tune_allocator() is True


# -- reading large messages in place (proto.wire) ----------------------------------------------
def _push_bytes():
    push = wire.PushBuilder(worker=3, global_step=-5, increment_global_step=True, pull=["a", "b"])
    push.rule.name = "adam"
    push.rule.hyper["learning_rate"] = 0.01
    push.consistency.mode = pb.Consistency.SYNC
    push.add_gradient("dense/w", 7, np.arange(12, dtype=np.float32).reshape(3, 4))
    push.add_gradient("emb", -2, np.ones((2, 5), np.float64), np.array([4, 0], np.int64))
    push.add_gradient("s", 0, np.float32(2.5))
    push.add_gradient("empty", 1, np.zeros((0, 3), np.float32))
    return push.to_bytes()


def test_a_push_built_from_arrays_is_a_valid_push_request():
    parsed = pb.PushRequest.FromString(_push_bytes())
    assert parsed.worker == 3 and parsed.global_step == -5 and list(parsed.pull) == ["a", "b"]
    assert parsed.rule.name == "adam" and parsed.consistency.mode == pb.Consistency.SYNC
    assert [g.name for g in parsed.gradients] == ["dense/w", "emb", "s", "empty"]
    np.testing.assert_array_equal(codec.decode(parsed.gradients[0].values),
                                  np.arange(12).reshape(3, 4))
    assert parsed.gradients[1].version == -2
    np.testing.assert_array_equal(codec.decode(parsed.gradients[1].indices), [4, 0])


def test_wire_reads_a_push_like_protobuf_without_copying_the_gradients():
    from psflow.proto import wire
    data = _push_bytes()
    push = wire.Push(data)
    reference = pb.PushRequest.FromString(data)
    assert push.worker == 3 and push.global_step == -5 and push.rule == reference.rule
    assert push.HasField("consistency") and list(push.pull) == ["a", "b"]
    for got, want in zip(push.gradients, reference.gradients, strict=True):
        assert got.name == want.name and got.version == want.version
        np.testing.assert_array_equal(got.values, codec.decode(want.values))
        assert got.values.dtype == codec.decode(want.values).dtype
        assert (got.indices is None) == (not want.HasField("indices"))
    for g in push.gradients:  # views of the received bytes, or aligned copies
        assert g.values.flags.aligned
    assert push.gradients[2].values.shape == () and float(push.gradients[2].values) == 2.5


def test_wire_reads_replies_with_values():
    from psflow.proto import wire
    reply = pb.PullResponse(global_step=9)
    reply.decision.step = 8
    reply.decision.workers[:] = [0, 2]
    codec.encode(np.arange(6, dtype=np.int32).reshape(2, 3),
                 reply.values.add(name="v", version=4).tensor)
    parsed = wire.pull_reply(reply.SerializeToString())
    assert parsed.global_step == 9 and list(parsed.decision.workers) == [0, 2]
    assert parsed.values[0].name == "v" and parsed.values[0].version == 4
    np.testing.assert_array_equal(parsed.values[0].array, [[0, 1, 2], [3, 4, 5]])
    push = pb.PushResponse(global_step=3, dropped=True)
    codec.encode(np.ones(2, np.float32), push.values.add(name="x").tensor)
    parsed = wire.push_reply(push.SerializeToString())
    assert parsed.dropped and parsed.values[0].array.tolist() == [1.0, 1.0]


def test_wire_refuses_malformed_tensors_and_messages():
    from psflow.proto import wire
    bad = pb.PushRequest()
    g = bad.gradients.add(name="w")
    g.values.dtype, g.values.content = "float32", b"\x00" * 20
    g.values.shape[:] = [2, 3]
    with pytest.raises(codec.CodecError, match="20 bytes do not hold a float32 array of "
                                               r"shape \[2, 3\] \(24 bytes\)"):
        wire.Push(bad.SerializeToString())
    g.values.dtype = "complex64"
    with pytest.raises(codec.CodecError, match="unknown dtype 'complex64'"):
        wire.Push(bad.SerializeToString())
    with pytest.raises(wire.WireError, match="truncated"):
        wire.Push(_push_bytes()[:-7])


def _arrays():
    return [("dense/w", 7, np.arange(12, dtype=np.float32).reshape(3, 4)),
            ("emb", -2, np.ones((2, 5), np.float64)), ("s", 0, np.float32(2.5)),
            ("empty", 1, np.zeros((0, 3), np.float32))]


def test_hand_assembled_messages_equal_what_protobuf_serializes():
    """The messages written straight from arrays (proto.wire) are the messages protobuf
    would write: parsed, they equal protobuf's own, and they serialize to the same bytes."""
    built = wire.PushBuilder(worker=1, global_step=4, pull=["w"])
    built.rule.name = "sgd"
    built.id.incarnation, built.id.sequence, built.id.index = 2**63 + 5, 9, 1
    reference = pb.PushRequest(worker=1, global_step=4, pull=["w"])
    reference.rule.name = "sgd"
    reference.id.CopyFrom(built.id)
    for k, (name, version, array) in enumerate(_arrays()):
        indices = np.array([k, 0], np.int64) if name == "emb" else None
        built.add_gradient(name, version, array, indices)
        g = reference.gradients.add(name=name, version=version)
        codec.encode(array, g.values)
        if indices is not None:
            codec.encode(indices, g.indices)
    data = built.to_bytes()
    parsed = pb.PushRequest.FromString(data)
    _assert_in_place(data, [g.values for g in wire.Push(data).gradients])
    for g in parsed.gradients:
        g.values.ClearField("padding")
    assert parsed == reference
    assert parsed.SerializeToString(deterministic=True) == \
        reference.SerializeToString(deterministic=True)

    header = pb.PullResponse(global_step=3)
    header.decision.step, header.decision.workers[:] = 2, [1, 0]
    data = wire.pull_response(header, _arrays())
    pulled = pb.PullResponse.FromString(data)
    _assert_in_place(data, [v.array for v in wire.pull_reply(data).values])
    for v in pulled.values:
        v.tensor.ClearField("padding")
    expected = pb.PullResponse()
    expected.CopyFrom(header)
    for name, version, array in _arrays():
        codec.encode(array, expected.values.add(name=name, version=version).tensor)
    assert pulled == expected

    header = pb.PushResponse(staleness=[0, 2], global_step=-1, dropped=True)
    expected = pb.PushResponse()
    expected.CopyFrom(header)
    for name, version, array in _arrays()[:2]:
        codec.encode(array, expected.values.add(name=name, version=version).tensor)
    # A sync step's values are built once, ahead of each worker's own header.
    for data in (wire.push_response(header, _arrays()[:2]),
                 wire.pushed_values(_arrays()[:2]) + header.SerializeToString()):
        pushed = pb.PushResponse.FromString(data)
        _assert_in_place(data, [v.array for v in wire.push_reply(data).values])
        for v in pushed.values:
            v.tensor.ClearField("padding")
        assert pushed == expected


def _assert_in_place(data, arrays):
    """The arrays a reader made of `data` are views of it, each starting at a multiple of
    codec.ALIGN: no element was copied to be aligned."""
    buf = np.frombuffer(data, np.uint8)
    base = buf.__array_interface__["data"][0]
    for array in arrays:
        if array.size:
            assert np.shares_memory(array, buf), array.dtype
            assert (array.__array_interface__["data"][0] - base) % codec.ALIGN == 0
