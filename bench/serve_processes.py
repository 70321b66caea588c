"""The processes bench/serve.py runs and the loads it sends: psflow-serve, KServe's server, the
bare gRPC floor, wrk and bench/serve_load.py, each a real process on loopback, started and
stopped by name and ended when the bench ends."""

import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from psflow.launcher.resources import free_ports

HERE = Path(__file__).resolve().parent
ONE_MATH_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PREDICT = "/tensorflow.serving.PredictionService/Predict"


def free_port():
    return free_ports("127.0.0.1", 1)[0]


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.status, answer.read()


def wait_available(rest_port, model="ctr", timeout=60.0, process=None):
    """Waits until the model has an AVAILABLE version (TF Serving's REST status)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            status, body = _get(f"http://127.0.0.1:{rest_port}/v1/models/{model}")
            if status == 200 and any(v.get("state") == "AVAILABLE"
                                     for v in json.loads(body)["model_version_status"]):
                return
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"model {model} not available on port {rest_port} after {timeout} s")


def predict_rest(port, body, model="ctr"):
    """The `prob` of each row a REST predict answers (TF Serving's and KServe's forms)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{model}:predict",
                                     data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        rows = json.loads(answer.read())["predictions"]
    return np.asarray([row["prob"] if isinstance(row, dict) else row for row in rows],
                      dtype=np.float64).ravel()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * _UNITS[unit]


def wrk(url, body, clients, seconds, tmp):
    """wrk's closed-loop POST of `body` by `clients` connections: rps, p50/p99 ms, errors."""
    script = Path(tmp, "post.lua")
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body.decode())}\n")
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{max(1, int(seconds))}s",
                          "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.M)
    if socket_errors:
        print(f"wrk {url}: socket errors {socket_errors.group(1)}", flush=True)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(latency["50"]), "p99_ms": _ms(latency["99"]),
            "errors": int(errors.group(1)) if errors else 0}


def _load_command(target, request_file, seconds, concurrency=1, rate=0.0, versions=False):
    return ([sys.executable, str(HERE / "serve_load.py"), "--target", target, "--request",
             str(request_file), "--seconds", str(seconds), "--concurrency", str(concurrency)]
            + (["--rate", str(rate)] if rate else []) + (["--versions"] if versions else []))


def grpc_load(target, request_file, seconds, concurrency=1, rate=0.0, versions=False):
    """bench/serve_load.py's figures (a process of its own)."""
    out = subprocess.run(_load_command(target, request_file, seconds, concurrency, rate,
                                       versions),
                         capture_output=True, text=True, check=True, env=_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def _env():
    return {**os.environ, **ONE_MATH_THREAD, "PYTHONUNBUFFERED": "1"}


class Processes:
    """Named processes under `tmp`, all ended on exit."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.running = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for name in list(self.running):
            self.stop(name)
        self.pool.shutdown()

    def dir(self, name):
        path = os.path.join(self.tmp, name)
        os.makedirs(path, exist_ok=True)
        return path

    def file(self, name, data):
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def start(self, name, command):
        log = open(os.path.join(self.tmp, f"{name}.log"), "wb")  # noqa: SIM115 -- kept open
        self.running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env=_env()), log)
        return self.running[name][0]

    def pid(self, name):
        return self.running[name][0].pid

    def stop(self, name):
        process, log = self.running.pop(name)
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()

    def psflow_serve(self, name, base, extra, wait=True):
        grpc_port, rest_port = free_port(), free_port()
        process = self.start(name, [sys.executable, "-m", "psflow.serving", f"--port={grpc_port}",
                                    f"--rest_api_port={rest_port}", "--model_name=ctr",
                                    f"--model_base_path={base}", *extra])
        if wait:
            wait_available(rest_port, process=process)
        return grpc_port, rest_port

    def kserve(self, python, export_dir):
        http_port, grpc_port = free_port(), free_port()
        process = self.start("kserve", [python, str(HERE / "peers" / "kserve_ctr.py"),
                                        f"--export_dir={export_dir}", "--model_name=ctr",
                                        f"--http_port={http_port}", f"--grpc_port={grpc_port}"])
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"KServe exited: see {self.tmp}/kserve.log")
            try:
                if _get(f"http://127.0.0.1:{http_port}/v1/models/ctr")[0] == 200:
                    return http_port
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise RuntimeError("KServe did not come up in 120 s")

    def floor(self, response, aio=False):
        name = f"floor-{'aio' if aio else 'threads'}"
        path = self.file("response.bin", response)
        port = free_port()
        self.start(name, [sys.executable, str(HERE / "serve_floor.py"), f"--port={port}",
                          f"--response={path}"] + (["--aio"] if aio else []))
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not listen")

    def grpc_response(self, target, request_file):
        with open(request_file, "rb") as f:
            request = f.read()
        with grpc.insecure_channel(target) as channel:
            return channel.unary_unary(PREDICT)(request, timeout=30)

    def grpc_predict(self, target, message):
        with grpc.insecure_channel(target, options=[
                ("grpc.max_send_message_length", 1 << 30),
                ("grpc.max_receive_message_length", 1 << 30)]) as channel:
            return channel.unary_unary(PREDICT)(message.SerializeToString(), timeout=120)

    def grpc_load_async(self, *args, **kwargs):
        return self.pool.submit(grpc_load, *args, **kwargs)
