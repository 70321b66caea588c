"""The gRPC load generator of bench/serve.py, a process of its own: the same serialized
PredictRequest (or several, taken in turn) sent again and again to one method, timed per call,
raw bytes on both sides so the client spends no time encoding or decoding.

    python bench/serve_load.py --target 127.0.0.1:8500 --request FILE --seconds 5 \
        --concurrency 64            # closed loop: 64 calls always in flight
    python bench/serve_load.py ... --rate 500   # open loop: a call every 1/500 s
    python bench/serve_load.py ... --rate 200 --versions   # and which version answered

Closed loop: `concurrency` callers, each sending its next call when the last one returns.
Open loop: calls start on a fixed schedule whatever the answers do, and a call's latency runs
from its scheduled start, so a stalled server counts against itself (no coordinated omission).
It prints one JSON line: the count, errors (by code), seconds, requests/s, p50/p90/p99/max in
ms, and with --versions each call's (scheduled start, latency, version) for the swap figures.
"""

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

METHOD = "/tensorflow.serving.PredictionService/Predict"


def summary(latencies, errors, seconds):
    ms = np.asarray(latencies, dtype=np.float64) * 1e3
    pct = (lambda q: float(np.percentile(ms, q))) if ms.size else (lambda q: float("nan"))
    return {"requests": int(ms.size), "errors": errors, "seconds": seconds,
            "rps": ms.size / seconds if seconds else 0.0, "p50_ms": pct(50), "p90_ms": pct(90),
            "p99_ms": pct(99), "max_ms": float(ms.max()) if ms.size else float("nan")}


async def closed_loop(call, requests, seconds, concurrency):
    latencies, errors = [], {}
    deadline = time.perf_counter() + seconds

    async def caller(k):
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            k += 1
            try:
                await call(requests[k % len(requests)], timeout=10)
            except grpc.RpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return summary(latencies, errors, time.perf_counter() - start), []


async def open_loop(call, requests, seconds, rate, versions):
    latencies, errors, calls = [], {}, []
    parse = None
    if versions:
        from psflow.proto.tfserving import predict_pb2
        parse = predict_pb2.PredictResponse.FromString

    async def one(scheduled, request):
        try:
            answer = await call(request, timeout=10)
        except grpc.RpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            calls.append((scheduled - start, None, exc.code().name))
            return
        latency = time.perf_counter() - scheduled
        latencies.append(latency)
        if parse is not None:
            calls.append((scheduled - start, latency, parse(answer).model_spec.version.value))

    start = time.perf_counter()
    epoch = time.time()
    tasks, i = [], 0
    while True:
        scheduled = start + i / rate
        if scheduled - start >= seconds:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled, requests[i % len(requests)])))
        i += 1
    await asyncio.gather(*tasks)
    return {**summary(latencies, errors, time.perf_counter() - start), "start_epoch": epoch}, calls


async def run(args):
    requests = []
    for path in args.request:
        with open(path, "rb") as f:
            requests.append(f.read())
    async with grpc.aio.insecure_channel(args.target) as channel:
        call = channel.unary_unary(args.method)
        for k in range(args.warmup):
            await call(requests[k % len(requests)], timeout=10)
        if args.rate:
            result, calls = await open_loop(call, requests, args.seconds, args.rate,
                                            args.versions)
        else:
            result, calls = await closed_loop(call, requests, args.seconds, args.concurrency)
    if args.versions:
        result["calls"] = calls
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--request", required=True, action="append",
                        help="a file of one serialized request; given several times, the "
                             "calls take them in turn")
    parser.add_argument("--method", default=METHOD)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop, calls per second")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--versions", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
