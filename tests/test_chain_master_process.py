"""The chain master and a shard's two replicas as processes: the head, killed by PSFLOW_FAULT
after the tail applied a push and before answering it, is removed from the chain, and a
worker's ShardClient gets the push's answer from the new head without an error, the push
applied once. A master run as launch runs it writes its port file once its replicas hold
leases and exits when its parent is gone."""

import os
import subprocess
import sys

import numpy as np
import pytest

from launcher.resources import free_ports
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.worker.client import ShardClient
from psflow.worker.failover import ChainLookup
from waiting import wait_for

TIMEOUT = 30


def start(args, fault=""):
    return subprocess.Popen([sys.executable, "-m", *args],
                            env=dict(os.environ, PSFLOW_FAULT=fault),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def push(step):
    request = pb.PushRequest(rule=pb.UpdateRule(name="sgd", hyper={"learning_rate": 1.0}),
                             increment_global_step=True, global_step=step, worker=0,
                             id=pb.PushId(incarnation=1, sequence=step + 1))
    codec.encode(np.ones(2, np.float32), request.gradients.add(name="w").values)
    return request


@pytest.mark.cluster  # three processes and a lease to run out, two seconds or three
def test_a_head_process_killed_mid_push_is_replaced_and_the_push_answered_once():
    master_port, head_port, tail_port = free_ports("127.0.0.1", 3)
    head, tail = f"127.0.0.1:{head_port}", f"127.0.0.1:{tail_port}"
    master = f"127.0.0.1:{master_port}"
    processes = [start(["psflow.ps.chain_master", "--chain", f"0={head},{tail}",
                        "--port", str(master_port), "--lease", "1.5"])]
    # The head dies at its fourth write (declare, initialize, a push, then this push).
    for port, fault in ((head_port, "kill:before-ack:0:0:1:3"), (tail_port, "")):
        processes.append(start(["psflow.ps", "--task-index", "0", "--num-workers", "1",
                                "--port", str(port), "--chain-master", master,
                                "--heartbeat-interval", "0.1"], fault))
    client = ShardClient(0, head, timeout=TIMEOUT, token="", chain_master=master)
    try:
        assert (client.address, client.epoch) == (head, 1)
        client.call("DeclareVariables", pb.DeclareVariablesRequest(
            variables=[pb.VariableSpec(name="w", dtype="float32", shape=[2])]))
        initialize = pb.InitializeVariablesRequest()
        codec.encode(np.zeros(2, np.float32), initialize.values.add(name="w").tensor)
        client.call("InitializeVariables", initialize)
        client.call("Push", push(0))
        assert (client.address, client.epoch) == (head, 1)
        client.call("Push", push(1))  # the head dies before answering; the tail answers
        assert processes[1].wait(timeout=TIMEOUT) == 137
        assert (client.address, client.epoch) == (tail, 2)
        client.call("Push", push(1))  # a retry of an answered push: not applied again
        reply = client.call("Pull", pb.PullRequest(names=["w"]))
        values = {v.name: v.array for v in reply.values}
        np.testing.assert_array_equal(values["w"], [-2.0, -2.0])
        assert reply.global_step == 2
    finally:
        client.close()
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.mark.cluster  # a replica and a master as processes; a second or two
def test_a_master_writes_its_port_once_the_replicas_hold_leases_and_exits_with_its_parent(
        tmp_path):
    master_port, replica_port = free_ports("127.0.0.1", 2)
    replica, master = f"127.0.0.1:{replica_port}", f"127.0.0.1:{master_port}"
    port_file = tmp_path / "master.port"
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    processes = [parent, start(["psflow.ps", "--task-index", "0", "--num-workers", "1",
                                "--port", str(replica_port), "--chain-master", master,
                                "--heartbeat-interval", "0.1"])]
    processes.append(start(["psflow.ps.chain_master", "--chain", f"0={replica}", "--port",
                            str(master_port), "--port-file", str(port_file), "--parent-pid",
                            str(parent.pid)]))
    lookup = ChainLookup(master, 0, "")
    try:
        wait_for(port_file.exists, TIMEOUT, "the master's port file")
        assert port_file.read_text() == f"{master_port}\n"
        assert lookup.current(timeout=5) == (1, replica)
        parent.kill()
        parent.wait()
        assert processes[2].wait(timeout=10) == 0  # its parent is gone
        assert processes[1].poll() is None  # only the master watched that process
    finally:
        lookup.close()
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
