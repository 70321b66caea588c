"""Serving speed: psflow-serve against KServe's Python ModelServer and a bare gRPC server,
side by side in one run, on the CTR model of bench/serve_model.py (1M-key tables).

Every figure is printed with its target, met or not:
- REST, 16 closed-loop clients of batch-1 requests: requests/s, >= 2x KServe's;
- REST, 16 clients of ranking requests (one user, 100 candidates): candidates/s, >= 2x KServe's;
- one client, batch 1: p50 <= 1 ms over REST, <= 0.7 ms over gRPC (KServe's beside them);
- gRPC capacity, 64 batch-1 calls in flight: >= 0.7x a bare Python gRPC server answering the
  same response bytes without work (the transport floor; the better of its threaded and
  asyncio forms);
- gRPC at 500 batch-1 requests/s (open loop): p50 <= 1 ms, p99 <= 3 ms, beside the in-process
  predict time of the same request;
- batching (max_batch_size 64, batch_timeout_micros 1000), 64 concurrent batch-1 gRPC clients:
  >= 1.3x the predictions/s of batching off, p99 no higher;
- a new version appearing under 200 requests/s: 0 failed requests, p99 during the swap <= 1.5x
  steady state;
- a version with a 10M-key table: loaded in <= 10 s; the server's memory once every row has
  been read <= 1.3x the export's bytes above an idle server's.

REST load comes from wrk (Debian's `wrk`), gRPC load from bench/serve_load.py, each in a
process of its own; the servers run one at a time under load, with one math thread each
(OPENBLAS_NUM_THREADS=1 on every side). KServe runs from a virtual environment of its own:
PSFLOW_KSERVE_PYTHON names its python (`python3 -m venv ENV && ENV/bin/pip install kserve`);
without it the KServe figures are skipped.

    python bench/serve.py [--rows 1000000] [--big-rows 10000000] [--seconds 5] [--repeat 2]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import serve_model as model
from serve_processes import Processes, grpc_load, predict_rest, rss_bytes, wait_available, wrk

import psflow as tf

HERE = Path(__file__).resolve().parent
RANKING = 100
results = []


def report(name, value, unit, target=None, met=None):
    mark = "" if met is None else ("  met" if met else "  NOT MET")
    line = f"{name:<58} {value:>10.3f} {unit}" + (f"   target {target}{mark}" if target else "")
    results.append((name, met))
    print(line, flush=True)


def compare(name, ours, theirs, unit, target_ratio):
    report(f"{name}: psflow-serve", ours, unit)
    report(f"{name}: KServe", theirs, unit)
    ratio = ours / theirs if theirs else float("inf")
    report(f"{name}: ratio", ratio, "x", f">= {target_ratio}x", ratio >= target_ratio)


def rest_figures(procs, psflow_rest, kserve_rest, rows, seconds, repeat):
    single = model.json_body(*model.rows_of(rows, 1, seed=1))
    ranking = model.json_body(*model.rows_of(rows, RANKING, seed=2, candidates_of_one_user=True))
    paths = {"psflow": f"http://127.0.0.1:{psflow_rest}/v1/models/ctr:predict"}
    if kserve_rest:
        paths["kserve"] = f"http://127.0.0.1:{kserve_rest}/v1/models/ctr:predict"
    best = {}
    for _ in range(repeat):  # alternately, best of the rounds
        for who, url in paths.items():
            for case, body, clients in (("batch1", single, 16), ("ranking", ranking, 16),
                                        ("one", single, 1)):
                run = wrk(url, body, clients, seconds, procs.tmp)
                key = (who, case)
                if key not in best or run["rps"] > best[key]["rps"]:
                    best[key] = run
    for (who, case), run in sorted(best.items()):
        if run["errors"]:
            report(f"REST {case} {who}: failed requests", run["errors"], "", "0", False)
    if kserve_rest:
        compare("REST batch-1, 16 clients, requests/s", best["psflow", "batch1"]["rps"],
                best["kserve", "batch1"]["rps"], "req/s", 2)
        compare("REST ranking x100, 16 clients, candidates/s",
                best["psflow", "ranking"]["rps"] * RANKING,
                best["kserve", "ranking"]["rps"] * RANKING, "cand/s", 2)
    else:
        report("REST batch-1, 16 clients, requests/s: psflow-serve",
               best["psflow", "batch1"]["rps"], "req/s")
        report("REST ranking x100, 16 clients, candidates/s: psflow-serve",
               best["psflow", "ranking"]["rps"] * RANKING, "cand/s")
    one = best["psflow", "one"]
    report("REST one client batch-1 p50: psflow-serve", one["p50_ms"], "ms", "<= 1 ms",
           one["p50_ms"] <= 1.0)
    report("REST one client batch-1 p99: psflow-serve", one["p99_ms"], "ms")
    if kserve_rest:
        report("REST one client batch-1 p50: KServe", best["kserve", "one"]["p50_ms"], "ms")
        report("REST one client batch-1 p99: KServe", best["kserve", "one"]["p99_ms"], "ms")


def grpc_figures(procs, psflow_grpc, rows, seconds, repeat, export_dir):
    ids, dense = model.rows_of(rows, 1, seed=1)
    request = procs.file("request.bin", model.predict_request(ids, dense).SerializeToString())
    target = f"127.0.0.1:{psflow_grpc}"
    one = min((grpc_load(target, request, seconds, concurrency=1) for _ in range(repeat)),
              key=lambda r: r["p50_ms"])
    report("gRPC one client batch-1 p50: psflow-serve", one["p50_ms"], "ms", "<= 0.7 ms",
           one["p50_ms"] <= 0.7)
    report("gRPC one client batch-1 p99: psflow-serve", one["p99_ms"], "ms")

    response = procs.grpc_response(target, request)
    floors = {}
    for kind in ("threads", "aio"):
        port = procs.floor(response, aio=kind == "aio")
        floors[kind] = max(grpc_load(f"127.0.0.1:{port}", request, seconds, concurrency=64)["rps"]
                           for _ in range(repeat))
        procs.stop(f"floor-{kind}")
        report(f"gRPC 64 in flight: bare gRPC server ({kind})", floors[kind], "req/s")
    ours = max(grpc_load(target, request, seconds, concurrency=64)["rps"] for _ in range(repeat))
    report("gRPC 64 in flight: psflow-serve", ours, "req/s")
    ratio = ours / max(floors.values())
    report("gRPC capacity / transport floor", ratio, "x", ">= 0.7x", ratio >= 0.7)

    steady = grpc_load(target, request, max(seconds, 5), rate=500)
    report("gRPC at 500 req/s: p50", steady["p50_ms"], "ms", "<= 1 ms", steady["p50_ms"] <= 1)
    report("gRPC at 500 req/s: p99", steady["p99_ms"], "ms", "<= 3 ms", steady["p99_ms"] <= 3)
    if steady["errors"]:
        report("gRPC at 500 req/s: failed requests", sum(steady["errors"].values()), "", "0",
               False)
    predictor = tf.saved_model.Predictor.load(export_dir)
    feed = {"ids": ids, "dense": dense}
    for _ in range(200):
        predictor.predict(feed)
    times = []
    for _ in range(2000):
        start = time.perf_counter()
        predictor.predict(feed)
        times.append(time.perf_counter() - start)
    report("in-process predict of the same request (p50)", float(np.median(times)) * 1e3, "ms")
    return request


def batching_figures(procs, base, request, seconds, repeat):
    params = procs.file("batching.txt", b"max_batch_size { value: 64 }\n"
                        b"batch_timeout_micros { value: 1000 }\n"
                        b"num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 1000 }\n")
    runs = {}
    for batching in (False, True):
        extra = ["--enable_batching", f"--batching_parameters_file={params}"] if batching else []
        grpc_port, _ = procs.psflow_serve("batching" if batching else "plain", base, extra)
        runs[batching] = max((grpc_load(f"127.0.0.1:{grpc_port}", request, seconds,
                                        concurrency=64) for _ in range(repeat)),
                             key=lambda r: r["rps"])
        procs.stop("batching" if batching else "plain")
    off, on = runs[False], runs[True]
    report("64 clients batch-1, batching off: predictions/s", off["rps"], "pred/s")
    report("64 clients batch-1, batching on: predictions/s", on["rps"], "pred/s")
    ratio = on["rps"] / off["rps"]
    report("batching on / off", ratio, "x", ">= 1.3x", ratio >= 1.3)
    report("p99 batching off", off["p99_ms"], "ms")
    report("p99 batching on", on["p99_ms"], "ms", "<= off", on["p99_ms"] <= off["p99_ms"])


def swap_figures(procs, rows, seconds):
    base = procs.dir("swap")
    model.export(os.path.join(base, "1"), rows, seed=0)
    staged = procs.dir("staged")
    model.export(os.path.join(staged, "2"), rows, seed=1)
    grpc_port, _ = procs.psflow_serve("swap", base, ["--file_system_poll_wait_seconds=0.5"])
    ids, dense = model.rows_of(rows, 1, seed=1)
    request = procs.file("request.bin", model.predict_request(ids, dense).SerializeToString())
    load = procs.grpc_load_async(f"127.0.0.1:{grpc_port}", request, 6 + 3 * seconds,
                                 rate=200, versions=True)
    time.sleep(6)  # the load starts (a second or two) and runs steadily for a few seconds
    renamed = time.time()
    os.rename(os.path.join(staged, "2"), os.path.join(base, "2"))
    run = load.result()
    appear = renamed - run["start_epoch"]
    procs.stop("swap")
    calls = run["calls"]
    failed = sum(1 for c in calls if c[1] is None)
    first_new = min((c[0] for c in calls if c[2] == 2), default=None)
    steady = [c[1] for c in calls if c[0] < appear - 0.2 and c[1] is not None]
    during = [c[1] for c in calls if first_new is not None and
              appear <= c[0] <= first_new + 1.0 and c[1] is not None]
    report("swap under 200 req/s: failed requests", failed, "", "0", failed == 0)
    if first_new is None:
        report("swap: the new version answered", 0, "", "yes", False)
        return
    report("swap: new version answering after it appeared", first_new - appear, "s")
    p99_steady = float(np.percentile(steady, 99)) * 1e3
    p99_during = float(np.percentile(during, 99)) * 1e3
    report("swap: p99 steady", p99_steady, "ms")
    report("swap: p99 during the swap", p99_during, "ms")
    report("swap: p99 during / steady", p99_during / p99_steady, "x", "<= 1.5x",
           p99_during <= 1.5 * p99_steady)


def big_table_figures(procs, rows):
    base = procs.dir("big")
    started = time.perf_counter()
    model.export(os.path.join(base, "1"), rows)
    report(f"export of a {rows / 1e6:.0f}M-key model (bench side)", time.perf_counter() - started,
           "s")
    export_bytes = sum(p.stat().st_size for p in Path(base, "1").rglob("*") if p.is_file())
    _, idle_rest = procs.psflow_serve("idle", procs.dir("empty"), [], wait=False)
    time.sleep(3)
    idle = rss_bytes(procs.pid("idle"))
    procs.stop("idle")
    started = time.perf_counter()
    grpc_port, rest_port = procs.psflow_serve("big", base, [], wait=False)
    wait_available(rest_port, timeout=300)
    loaded = time.perf_counter() - started
    report(f"load of a {rows / 1e6:.0f}M-key version (process start to AVAILABLE)", loaded, "s",
           "<= 10 s", loaded <= 10)
    target = f"127.0.0.1:{grpc_port}"
    for ids, dense in model.every_key(rows, 20000):
        procs.grpc_predict(target, model.predict_request(ids, dense))
    grown = rss_bytes(procs.pid("big")) - idle
    procs.stop("big")
    report("export bytes", export_bytes / 2**20, "MiB")
    report("server memory above idle, every row read once", grown / 2**20, "MiB")
    report("memory above idle / export bytes", grown / export_bytes, "x", "<= 1.3x",
           grown <= 1.3 * export_bytes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=10_000_000, help="0 skips that part")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=["rest", "grpc", "batching", "swap", "big"])
    args = parser.parse_args()
    kserve_python = os.environ.get("PSFLOW_KSERVE_PYTHON")
    with tempfile.TemporaryDirectory(prefix="psflow-bench-serve-") as tmp, Processes(tmp) as procs:
        base = procs.dir("ctr")
        export_dir = os.path.join(base, "1")
        model.export(export_dir, args.rows)
        grpc_port, rest_port = procs.psflow_serve("psflow", base, [])
        kserve_rest = None
        if kserve_python:
            kserve_rest = procs.kserve(kserve_python, export_dir)
        else:
            print("PSFLOW_KSERVE_PYTHON is not set: the KServe figures are skipped", flush=True)
        check = model.rows_of(args.rows, 8, seed=3)
        expected = tf.saved_model.Predictor.load(export_dir).predict(
            {"ids": check[0], "dense": check[1]})["prob"].ravel()
        for who, port in (("psflow-serve", rest_port), ("KServe", kserve_rest)):
            if port:
                got = predict_rest(port, model.json_body(*check))
                report(f"{who} REST answers vs in-process predict: max abs diff",
                       float(np.max(np.abs(got - expected))), "", "<= 1e-6",
                       float(np.max(np.abs(got - expected))) <= 1e-6)
        request = None
        if "rest" in args.only:
            rest_figures(procs, rest_port, kserve_rest, args.rows, args.seconds, args.repeat)
        if kserve_rest:
            procs.stop("kserve")
        if "grpc" in args.only:
            request = grpc_figures(procs, grpc_port, args.rows, args.seconds, args.repeat,
                                   export_dir)
        procs.stop("psflow")
        if "batching" in args.only:
            if request is None:
                ids, dense = model.rows_of(args.rows, 1, seed=1)
                request = procs.file("request.bin",
                                     model.predict_request(ids, dense).SerializeToString())
            batching_figures(procs, base, request, args.seconds, args.repeat)
        if "swap" in args.only:
            swap_figures(procs, args.rows, args.seconds)
        if "big" in args.only and args.big_rows:
            big_table_figures(procs, args.big_rows)
    missed = [name for name, met in results if met is False]
    print(f"{sum(met is True for _, met in results)} targets met, {len(missed)} not met"
          + (": " + "; ".join(missed) if missed else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
