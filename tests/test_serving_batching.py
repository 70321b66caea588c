"""Dynamic batching: the BatchingParameters file, batches closing on size or timeout, outputs
split back exactly, shapes never mixed, a full queue refused; and psflow-serve with
--enable_batching answering as without it."""

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from psflow.errors import InvalidArgumentError, ResourceExhaustedError
from psflow.serving.__main__ import batching_of, build_parser
from psflow.serving.batching import BatchingPredictor, BatchScheduler, batching_load_fn
from psflow.serving.batching_config import (
    BatchingOptions,
    parse_batching_parameters,
    read_batching_parameters,
)
from psflow.serving.model_config import ModelSettings
from psflow.serving.model_server import ModelServer
from psflow.serving.version_loader import Loader
import live_predictor
from waiting import wait_for


class RowWise:
    """The small CTR model in elementwise numpy: each output row depends on its input row
    alone, bit for bit whatever the batch (a BLAS matmul may round a row differently by one
    ulp in another batch size)."""

    def __init__(self, model):
        self.signatures, self.signature = model.signatures, model.signature
        self.w, self.table = live_predictor.weights(1)

    def predict(self, inputs):
        scores = (inputs["x"] * self.w[:, 0]).sum(axis=1, keepdims=True) \
            + self.table[inputs["ids"]].sum(axis=1, keepdims=True)
        return {"scores": scores, "probabilities": 1 / (1 + np.exp(-scores))}


class Recording:
    """A predictor that records the batch sizes it is asked for; `gate` holds it."""

    def __init__(self, delay=0.0, row_wise=False):
        self.model = live_predictor.small_ctr_model(1)
        if row_wise:
            self.model = RowWise(self.model)
        self.signatures, self.signature = self.model.signatures, self.model.signature
        self.sizes = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def predict(self, inputs):
        self.sizes.append(len(inputs["x"]))
        self.gate.wait(10)
        time.sleep(self.delay)
        return self.model.predict(inputs)


@pytest.fixture
def make():
    schedulers = []

    def make(predictor, **options):
        scheduler = BatchScheduler(BatchingOptions(**options).validate())
        schedulers.append(scheduler)
        return BatchingPredictor(predictor, scheduler)
    yield make
    for scheduler in schedulers:
        scheduler.stop()


def _request(rng, rows):
    return {"x": rng.standard_normal((rows, 3)).astype(np.float32),
            "ids": rng.integers(0, 10, rows).astype(np.int64)}


def test_the_parameters_file_in_tf_serving_text_format(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 1000 }\n"
                    "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n"
                    "allowed_batch_sizes: 16\nallowed_batch_sizes: 64\n")
    options = read_batching_parameters(str(path))
    assert options == BatchingOptions(64, 1000, 2, 100, (16, 64))
    assert options.padded_size(3) == 16 and options.padded_size(17) == 64
    assert parse_batching_parameters("") == BatchingOptions()
    args = build_parser().parse_args(["--enable_batching", "--batching_parameters_file",
                                      str(path)])
    assert batching_of(args) == options
    assert batching_of(build_parser().parse_args([])) is None


@pytest.mark.parametrize("text,problem", [
    ("max_batch_size: 64", "max_batch_size"),
    ("max_batch_sizes { value: 64 }", "max_batch_sizes"),
    ("max_batch_size { value: 0 }", "max_batch_size must be at least 1"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be at least 1"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "must equal max_batch_size"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 4",
     "increasing"),
])
def test_a_bad_parameters_file_is_a_clear_error(tmp_path, text, problem):
    path = tmp_path / "bad.config"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError, match=problem) as info:
        read_batching_parameters(str(path))
    assert str(path) in str(info.value)


def test_a_bad_parameters_file_stops_psflow_serve_at_start(tmp_path, capsys):
    from psflow.serving.__main__ import main
    path = tmp_path / "bad.config"
    path.write_text("max_batch_size { value: -1 }")
    assert main(["--model_base_path", str(tmp_path), "--enable_batching",
                 "--batching_parameters_file", str(path)]) == 2
    assert "max_batch_size must be at least 1" in capsys.readouterr().err
    assert main(["--model_base_path", str(tmp_path), "--batching_parameters_file",
                 str(path)]) == 2


@pytest.mark.parametrize("row_wise", [True, False], ids=["numpy-rows", "graph"])
def test_16_concurrent_clients_get_the_unbatched_outputs(make, row_wise):
    inner = Recording(row_wise=row_wise)
    batching = make(inner, max_batch_size=32, batch_timeout_micros=20000, num_batch_threads=2)
    rng = np.random.default_rng(0)
    requests = [_request(rng, 1 + k % 3) for k in range(16 * 8)]
    expected = [inner.model.predict(r) for r in requests]
    inner.sizes.clear()
    answers = [None] * len(requests)

    def client(k):
        for i in range(k, len(requests), 16):
            answers[i] = batching.predict(requests[i])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for got, want in zip(answers, expected, strict=True):
        assert set(got) == set(want)
        for key in want:
            if row_wise:
                np.testing.assert_array_equal(got[key], want[key])
            else:
                np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6)
    assert sum(inner.sizes) == sum(len(r["x"]) for r in requests)
    assert max(inner.sizes) > 3, inner.sizes  # requests were batched together
    assert max(inner.sizes) <= 32


def test_a_lone_request_runs_when_its_batch_times_out(make):
    inner = Recording()
    batching = make(inner, max_batch_size=64, batch_timeout_micros=50000)
    request = _request(np.random.default_rng(1), 2)
    started = time.monotonic()
    outputs = batching.predict(request)
    waited = time.monotonic() - started
    assert 0.04 <= waited < 2.0
    assert inner.sizes == [2]
    np.testing.assert_array_equal(outputs["scores"], inner.model.predict(request)["scores"])


def test_a_batch_closes_at_max_batch_size_before_its_timeout(make):
    inner = Recording()
    batching = make(inner, max_batch_size=4, batch_timeout_micros=10_000_000,
                    num_batch_threads=1)
    rng = np.random.default_rng(2)
    requests = [_request(rng, 1) for _ in range(8)]
    threads = [threading.Thread(target=batching.predict, args=(r,)) for r in requests]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - started < 5  # never waited for the 10 s timeout
    assert inner.sizes == [4, 4]


def test_shapes_are_never_mixed_and_padding_fills_allowed_sizes(make):
    inner = Recording()
    batching = make(inner, max_batch_size=8, batch_timeout_micros=30000,
                    allowed_batch_sizes=(4, 8))
    good = _request(np.random.default_rng(3), 1)
    wide = {"x": np.zeros((1, 4), np.float32), "ids": np.zeros(1, np.int64)}
    results = {}

    def run(name, request):
        try:
            results[name] = batching.predict(request)
        except InvalidArgumentError as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=("good", good)),
               threading.Thread(target=run, args=("wide", wide))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert isinstance(results["wide"], InvalidArgumentError)  # its own error, alone
    assert results["good"]["scores"].shape == (1, 1)
    np.testing.assert_array_equal(results["good"]["scores"],
                                  inner.model.predict(good)["scores"])
    assert sorted(inner.sizes) == [4, 4]  # each padded to 4, in batches of their own


def test_a_full_queue_refuses_with_resource_exhausted(make):
    inner = Recording()
    inner.gate.clear()  # the one batch thread is held
    batching = make(inner, max_batch_size=1, batch_timeout_micros=0, num_batch_threads=1,
                    max_enqueued_batches=2)
    request = _request(np.random.default_rng(4), 1)
    threads = [threading.Thread(target=batching.predict, args=(request,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(inner.sizes) == 1 and batching.enqueued == 2, 10, "queue full")
    with pytest.raises(ResourceExhaustedError, match="queue is full"):
        batching.predict(request)
    inner.gate.set()
    for thread in threads:
        thread.join(10)
    assert inner.sizes == [1, 1, 1]


def _post(server, body):
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_api_port}/v1/models/ctr:predict",
        data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.cluster
def test_the_server_batches_and_a_full_queue_answers_429(tmp_path):
    base = tmp_path / "ctr"
    base.mkdir()
    live_predictor.write_version(base, 1, seed=1, delay=0.3)
    server = ModelServer([ModelSettings("ctr", str(base))], port=0, rest_port=0,
                         poll_wait_seconds=0.05, load_fn=live_predictor.load, host="127.0.0.1",
                         batching=BatchingOptions(max_batch_size=1, num_batch_threads=1,
                                                  max_enqueued_batches=1))
    server.start()
    try:
        wait_for(lambda: server.core.available, 10, "version 1 available")
        body = {"instances": [{"x": [0.5, -1, 2], "ids": 3}]}
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(_post(server, body)))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        codes = sorted(code for code, _ in answers)
        assert codes[0] == 200 and 429 in codes, answers
        want = live_predictor.expected(1, [[0.5, -1, 2]], [3])["scores"][0]
        for code, answer in answers:
            if code == 200:
                np.testing.assert_allclose(answer["predictions"][0]["scores"], want, rtol=1e-6)
            else:
                assert "queue is full" in answer["error"]
    finally:
        server.stop(grace=2)


def test_16_grpc_clients_of_a_batching_server_get_their_own_answers(tmp_path):
    import grpc

    from psflow.proto.tfserving import predict_pb2, prediction_service_pb2_grpc
    from psflow.serving import tensor_proto
    base = tmp_path / "ctr"
    base.mkdir()
    live_predictor.write_version(base, 1, seed=1)
    server = ModelServer([ModelSettings("ctr", str(base))], port=0, poll_wait_seconds=0.05,
                         load_fn=live_predictor.load, host="127.0.0.1",
                         batching=BatchingOptions(max_batch_size=16, batch_timeout_micros=5000,
                                                  num_batch_threads=2))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rng = np.random.default_rng(5)
    requests = [_request(rng, 1 + k % 2) for k in range(64)]
    answers = [None] * len(requests)

    def client(k):
        for i in range(k, len(requests), 16):
            message = predict_pb2.PredictRequest()
            message.model_spec.name = "ctr"
            for key, value in requests[i].items():
                message.inputs[key].CopyFrom(tensor_proto.from_numpy(value))
            response = stub.Predict(message, timeout=10)
            answers[i] = tensor_proto.to_numpy(response.outputs["scores"])

    try:
        wait_for(lambda: server.core.available, 10, "version 1 available")
        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for request, got in zip(requests, answers, strict=True):
            want = live_predictor.expected(1, request["x"], request["ids"])["scores"]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    finally:
        channel.close()
        server.stop(grace=2)


def test_a_request_larger_than_max_batch_size_is_refused_by_its_sizes(make):
    inner = Recording()
    batching = make(inner, max_batch_size=4, batch_timeout_micros=0)
    rng = np.random.default_rng(6)
    with pytest.raises(InvalidArgumentError) as info:
        batching.predict(_request(rng, 5))
    assert str(info.value) == "Task size 5 is larger than maximum input batch size 4"
    assert inner.sizes == []  # refused before it reached the model
    largest = _request(rng, 4)
    np.testing.assert_array_equal(batching.predict(largest)["scores"],
                                  inner.model.predict(largest)["scores"])


def test_the_server_refuses_a_request_over_max_batch_size_with_400_and_invalid_argument(
        tmp_path):
    import grpc

    from psflow.proto.tfserving import predict_pb2, prediction_service_pb2_grpc
    from psflow.serving import tensor_proto
    base = tmp_path / "ctr"
    base.mkdir()
    live_predictor.write_version(base, 1, seed=1)
    server = ModelServer([ModelSettings("ctr", str(base))], port=0, rest_port=0,
                         poll_wait_seconds=0.05, load_fn=live_predictor.load, host="127.0.0.1",
                         batching=BatchingOptions(max_batch_size=2))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    try:
        wait_for(lambda: server.core.available, 10, "version 1 available")
        rows = [{"x": [0.5, -1, 2], "ids": 3}, {"x": [1, 0, 0.25], "ids": 7},
                {"x": [0, 0, 1], "ids": 1}]
        code, answer = _post(server, {"instances": rows})
        assert code == 400
        assert answer == {"error": "Task size 3 is larger than maximum input batch size 2"}
        message = predict_pb2.PredictRequest()
        message.model_spec.name = "ctr"
        message.inputs["x"].CopyFrom(tensor_proto.from_numpy(np.zeros((3, 3), np.float32)))
        message.inputs["ids"].CopyFrom(tensor_proto.from_numpy(np.zeros(3, np.int64)))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(message, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Task size 3 is larger than maximum input batch size 2" in info.value.details()
        code, answer = _post(server, {"instances": rows[:2]})  # the largest batch is served
        assert code == 200
        want = live_predictor.expected(1, [r["x"] for r in rows[:2]], [3, 7])["scores"]
        np.testing.assert_allclose([p["scores"] for p in answer["predictions"]], want,
                                   rtol=1e-6)
    finally:
        channel.close()
        server.stop(grace=2)


@pytest.mark.parametrize("in_loop", [True, False])
def test_requests_awaiting_on_a_loop_are_batched_and_get_their_own_rows(make, in_loop):
    inner = Recording(row_wise=True)
    batching = make(inner, max_batch_size=8, batch_timeout_micros=20000)
    rng = np.random.default_rng(7)
    requests = [_request(rng, 1 + k % 3) for k in range(5)]  # 1, 2, 3, 1 and 2 rows

    async def main():
        return await asyncio.gather(*(batching.predict_async(r, in_loop=in_loop)
                                      for r in requests))

    answers = asyncio.run(main())
    assert sorted(inner.sizes) == [2, 7]  # the first four fill 7 of 8; the fifth would overflow
    for request, got in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(got["scores"], inner.model.predict(request)["scores"])


def test_a_request_too_large_for_a_loop_batch_is_refused(make):
    batching = make(Recording(), max_batch_size=2)
    with pytest.raises(InvalidArgumentError, match="Task size 3 is larger"):
        asyncio.run(batching.predict_async(_request(np.random.default_rng(8), 3), in_loop=True))


def test_a_batching_versions_warm_up_times_the_model_not_the_batch_timeout(tmp_path):
    live_predictor.write_version(tmp_path, 1, seed=1)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000))
    try:
        loader = Loader(batching_load_fn(live_predictor.load, scheduler))
        servable = loader.load(1, str(tmp_path / "1"))
        assert servable.warmup_seconds < 0.1  # a batch of its own would wait 0.2 s
    finally:
        scheduler.stop()
