"""A simulated cluster: the generated manifests' pods, each in a network namespace of its own
(one host per pod, as the kubelet would run them), joined by a bridge, with the Service's DNS
names in each namespace's /etc/hosts. The job must train and every process exit 0 by itself."""

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.231.{}.{}"


def _usable():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2's `ip`"
    probe = f"psflow-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


REASON = _usable()
pytestmark = [pytest.mark.cluster, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def ip(*args, netns=None):
    command = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    subprocess.run(command, check=True, capture_output=True, text=True)


class SimulatedCluster:
    """Network namespaces on one bridge; `add(pod)` gives a pod its host and address."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.tag = tag
        self.bridge = f"psbr{tag}"
        self.subnet = int(tag[:2], 16) % 200 + 20
        self.pods = []  # (pod name, netns, address)
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", SUBNET.format(self.subnet, 1) + "/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, pod):
        k = len(self.pods)
        netns = f"ps{self.tag}-{k}"
        address = SUBNET.format(self.subnet, 10 + k)
        outside, inside = f"v{self.tag}{k}a", f"v{self.tag}{k}b"
        ip("netns", "add", netns)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", netns)
        ip("link", "set", outside, "master", self.bridge, "up")
        ip("addr", "add", address + "/24", "dev", inside, netns=netns)
        ip("link", "set", inside, "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)
        self.pods.append((pod, netns, address))
        return netns

    def write_hosts(self, names):
        """Every namespace resolves each pod's DNS names (`names[pod]`) to its address."""
        lines = ["127.0.0.1 localhost"]
        for pod, _, address in self.pods:
            lines.append(f"{address} {' '.join(names[pod])}")
        for _, netns, _ in self.pods:
            folder = Path("/etc/netns") / netns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text("\n".join(lines) + "\n")

    def close(self):
        for _, netns, _ in self.pods:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / netns, ignore_errors=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)


ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def container_env(container, secrets, index):
    """The container's environment as the kubelet would set it: secrets, the completion
    index annotation, and `$(VAR)` expanded from the variables defined before."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)",
                                       lambda m: env.get(m.group(1), m.group(0)), item["value"])
        elif "fieldRef" in item["valueFrom"]:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == ANNOTATION
            env[item["name"]] = str(index)
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    env.setdefault("JOB_COMPLETION_INDEX", str(index))  # the Job controller adds it too
    return env


def run_on_simulated_cluster(tmp_path, *launch_args, cwd=ROOT, while_running=None):
    """Runs the pods of `launch --k8s *launch_args`'s manifests on a simulated cluster until
    all exit; ({pod: exit code or "still running"}, {pod: its output}). `while_running` is
    called with {pod: its address} once every pod has started."""
    out = subprocess.run(
        [sys.executable, "-m", "psflow.launcher", "--k8s", "--name", "sim", "--namespace",
         "test", *launch_args], capture_output=True, text=True, timeout=60, cwd=cwd,
        check=True).stdout
    docs = list(yaml.safe_load_all(out))
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    service = next(d for d in docs if d["kind"] == "Service")["metadata"]["name"]
    jobs = [d for d in docs if d["kind"] == "Job"]
    cluster = SimulatedCluster()
    processes = []
    try:
        pods, names = [], {}
        for job in jobs:
            for index in range(job["spec"]["completions"]):
                pod = f"{job['metadata']['name']}-{index}"  # an Indexed Job's pod hostname
                netns = cluster.add(pod)
                fqdn = f"{pod}.{service}.{job['metadata']['namespace']}.svc.cluster.local"
                names[pod] = [fqdn, f"{pod}.{service}", pod]
                pods.append((pod, netns, job, index))
        cluster.write_hosts(names)
        for pod, netns, job, index in pods:
            container = job["spec"]["template"]["spec"]["containers"][0]
            command = [sys.executable if c == "python" else
                       re.sub(r"^/app/", str(cwd) + "/", c) for c in container["command"]]
            log = open(tmp_path / f"{pod}.log", "w")
            processes.append((pod, log, subprocess.Popen(
                ["ip", "netns", "exec", netns, *command], cwd=cwd, stdout=log,
                stderr=subprocess.STDOUT, env=container_env(container, secrets, index))))
        if while_running is not None:
            while_running({pod: address for pod, _, address in cluster.pods})
        codes = {}
        for pod, log, process in processes:
            try:
                codes[pod] = process.wait(timeout=240)
            except subprocess.TimeoutExpired:
                codes[pod] = "still running"
            log.close()
        return codes, {pod: (tmp_path / f"{pod}.log").read_text() for pod, _, _ in processes}
    finally:
        for _, _log, process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        cluster.close()


def explain(codes, logs):
    return "\n".join(f"== {pod}: {codes[pod]}\n{text[-1500:]}" for pod, text in logs.items())


def scrape_global_step(addresses, scraped, timeout=60):
    """Reads ps 0's global step from its pod's metrics port, as Prometheus would, once it
    is past 0."""
    from prometheus_client.parser import text_string_to_metric_families
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            url = f"http://{addresses['sim-ps-0']}:9090/metrics"
            with urllib.request.urlopen(url, timeout=2) as reply:
                text = reply.read().decode()
        except OSError:
            time.sleep(0.1)
            continue
        for family in text_string_to_metric_families(text):
            if family.name == "psflow_ps_global_step" and family.samples[0].value > 0:
                scraped.append(family.samples[0].value)
                return
        time.sleep(0.1)


def test_the_manifests_train_digits_on_a_simulated_cluster(tmp_path):
    scraped = []
    codes, logs = run_on_simulated_cluster(
        tmp_path, "--workers", "2", "--ps", "2", "examples/digits.py", "--steps", "800",
        "--learning-rate", "0.02",
        while_running=lambda addresses: scrape_global_step(addresses, scraped))
    assert all(code == 0 for code in codes.values()), explain(codes, logs)
    # The pods' metrics answer on their annotated port while the job trains.
    assert scraped and 0 < scraped[0] <= 800, explain(codes, logs)
    accuracy = re.search(r"test accuracy: ([0-9.]+)", logs["sim-worker-0"])
    assert accuracy and float(accuracy.group(1)) >= 0.95, explain(codes, logs)
    assert "exiting: all workers are done" in logs["sim-ps-1"], explain(codes, logs)
