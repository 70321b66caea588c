"""A running job as its parameter servers see it: worker.jobstats' percentiles and rates, the
progress line's notes on a worker or shard that stands out, and `launch --status` against two
real parameter servers in this process."""

import io
import math
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from psflow.launcher import cli, progress, status
from psflow.launcher.output import Output
from psflow.launcher.progress import ProgressPoller, format_progress, standout_notes
from psflow.proto import codec
from psflow.proto import psflow_pb2 as pb
from psflow.ps.shard_server import ParameterServer
from psflow.worker.client import ShardClient
from psflow.worker.jobstats import Look, Rates, percentile, rates

FAKE_WORKER = Path(__file__).resolve().parent / "launcher_scripts" / "fake_worker.py"
SGD = pb.UpdateRule(name="sgd", hyper={"learning_rate": 0.1})
TIMEOUT = 10


def worker(index, local_step=0, examples=0, loss=math.nan, done=False, registered=True,
           **fields):
    return pb.WorkerStats(task_index=index, local_step=local_step, examples=examples,
                          loss=loss, done=done, registered=registered, **fields)


def shard(index, pushes=0, staleness=(0, 0, 0, 0), global_step=-1, uptime=5.0, **fields):
    return pb.StatsResponse(shard=index, pushes=pushes, staleness_histogram=staleness,
                            global_step=global_step, uptime_s=uptime, **fields)


def two_looks():
    """Two Looks 2 s apart at a job of two shards and four workers: worker 2 finished before
    the first look, worker 3 joined after it."""
    before = Look(10.0, [
        shard(0, pushes=50, staleness=[10, 2, 0, 0], global_step=100, variables=2,
              variable_bytes=160, workers=[
                  worker(0, 40, 1280, 0.5), worker(1, 60, 1920, 0.25),
                  worker(2, 10, 320, 0.75, done=True)]),
        shard(1, pushes=20, staleness=[4, 0, 0, 0], variables=1, variable_bytes=4096)])
    now = Look(12.0, [
        shard(0, pushes=90, staleness=[40, 6, 2, 0], global_step=140, variables=2,
              variable_bytes=160, workers=[
                  worker(0, 44, 1408, 0.5, last_seen_s=0.25, activity="run 44: Push"),
                  worker(1, 80, 2560, 0.25, last_seen_s=0.5),
                  worker(2, 10, 320, 0.75, done=True, last_seen_s=30.0),
                  worker(3, 3, 96, last_seen_s=0.0)]),
        shard(1, pushes=24, staleness=[8, 0, 0, 0], variables=1, variable_bytes=4096)])
    return before, now


# -- jobstats: pure functions ------------------------------------------------------------------
@pytest.mark.parametrize("histogram, q, expected", [
    ([5, 3, 0, 2], 0.0, 0),
    ([5, 3, 0, 2], 0.5, 0),   # rank 5: the fifth value is still 0
    ([5, 3, 0, 2], 0.6, 1),
    ([5, 3, 0, 2], 0.8, 1),
    ([5, 3, 0, 2], 0.81, 3),  # rank 9 skips the empty bucket 2
    ([5, 3, 0, 2], 1.0, 3),
    ([0, 0, 4], 0.0, 2),
    ([7, 93], 0.07, 0),       # 0.07 * 100 is 7.000000000000001 in floating point: still rank 7
    ([0, 0], 0.5, None),
    ([], 0.99, None),
])
def test_percentile_is_the_nearest_rank(histogram, q, expected):
    assert percentile(histogram, q) == expected


def test_percentile_refuses_a_quantile_out_of_0_to_1():
    with pytest.raises(ValueError, match="from 0 to 1, got 99"):
        percentile([1, 2], 99)


def test_rates_between_two_looks():
    before, now = two_looks()
    between = rates(before, now)
    assert between.seconds == 2.0
    assert between.steps_per_s == 20.0
    assert between.shard_pushes_per_s == {0: 20.0, 1: 2.0}
    # Worker 2 is done and worker 3 was not there at the first look.
    assert between.worker_steps_per_s == {0: 2.0, 1: 10.0}
    assert between.worker_examples_per_s == {0: 64.0, 1: 320.0, 2: 0.0}
    assert between.examples_per_s == 384.0
    assert between.shard_staleness == {0: [30, 4, 2, 0], 1: [4, 0, 0, 0]}
    assert between.staleness == [34, 4, 2, 0]
    assert (between.staleness_percentile(0.5), between.staleness_percentile(0.99)) == (0, 2)
    assert [between.shard_staleness_percentile(0, q) for q in (0.5, 0.9, 0.99)] == [0, 1, 2]
    assert between.shard_staleness_percentile(1, 0.99) == 0
    assert between.shard_staleness_percentile(7, 0.5) is None
    assert between.slowest_worker() == (0, 2.0)
    assert between.hottest_shard() == (0, 20.0)


def test_rates_count_from_zero_after_a_restart():
    before = Look(0.0, [
        shard(0, pushes=500, global_step=90, uptime=100.0,
              workers=[worker(0, 40, 1280), worker(1, 30, 960)]),
        shard(1, pushes=300, staleness=[250, 50, 0, 0], uptime=100.0)])
    now = Look(2.0, [
        shard(0, pushes=520, global_step=80, uptime=102.0,  # restored from a checkpoint
              workers=[worker(0, 4, 128), worker(1, 36, 1152)]),  # worker 0 started again
        shard(1, pushes=6, staleness=[5, 1, 0, 0], uptime=1.5)])  # shard 1 restarted
    between = rates(before, now)
    assert between.steps_per_s is None  # the global step went back: unknown
    assert between.shard_pushes_per_s == {0: 10.0, 1: 3.0}
    assert between.shard_staleness[1] == [5, 1, 0, 0]
    assert between.worker_steps_per_s == {0: 2.0, 1: 3.0}
    assert between.worker_examples_per_s == {0: 64.0, 1: 96.0}


def test_rates_leave_out_what_did_not_answer_both_times():
    before, now = two_looks()
    now.shards[1] = None
    between = rates(before, now)
    assert between.shard_pushes_per_s == {0: 20.0}
    assert between.hottest_shard() is None  # one shard: nothing to compare with
    before.shards[0] = None
    between = rates(before, now)
    assert between.steps_per_s is None
    assert between.shard_pushes_per_s == {} and between.worker_steps_per_s == {}
    assert between.examples_per_s == 0.0


def test_a_shard_that_holds_nothing_does_not_make_another_the_hottest():
    before, now = two_looks()
    for look in (before, now):
        look.shards[1].variables = 0
    now.shards[1].pushes = before.shards[1].pushes
    between = rates(before, now)
    assert between.empty_shards == {1}
    assert between.shard_pushes_per_s == {0: 20.0, 1: 0.0}
    assert between.hottest_shard() is None
    now.shards[1].tables.add(name="emb")  # a share of a table is something
    assert rates(before, now).hottest_shard() == (0, 20.0)


def interval(workers=None, shards=None):
    return Rates(seconds=5.0, steps_per_s=35.25, examples_per_s=0.0,
                 shard_pushes_per_s=shards or {}, worker_steps_per_s=workers or {},
                 staleness=[])


@pytest.mark.parametrize("workers, expected", [
    ({}, None),
    ({0: 1.0}, None),                       # nobody to compare with
    ({0: 10.0, 1: 10.0}, None),
    ({0: 10.0, 1: 4.0}, (1, 4.0)),
    ({0: 10.0, 1: 12.0, 2: 4.0}, (2, 4.0)),  # below half the others' median, 11
    ({0: 10.0, 1: 12.0, 2: 6.0}, None),
    ({0: 3.5, 1: 4.0, 2: 8.0}, None),       # the others' median is 6, not 8
    ({0: 0.0, 1: 0.0}, None),               # nobody moves: nobody is slow
    ({0: 0.0, 1: 2.0}, (0, 0.0)),
])
def test_slowest_worker_only_when_it_stands_out(workers, expected):
    assert interval(workers=workers).slowest_worker() == expected


@pytest.mark.parametrize("shards, expected", [
    ({0: 400.0}, None),
    ({0: 10.0, 1: 10.0}, None),
    ({0: 14.0, 1: 10.0}, None),
    ({0: 10.0, 1: 16.0}, (1, 16.0)),
    ({0: 22.0, 1: 10.0, 2: 20.0}, None),  # not above 1.5 x the others' mean, 15
    ({0: 23.0, 1: 10.0, 2: 20.0}, (0, 23.0)),
    ({0: 0.0, 1: 0.0}, None),
    ({0: 1.0, 1: 0.0}, (0, 1.0)),
])
def test_hottest_shard_only_when_it_stands_out(shards, expected):
    assert interval(shards=shards).hottest_shard() == expected


# -- the progress line -------------------------------------------------------------------------
def test_progress_line_names_the_slowest_worker_and_the_hottest_shard():
    stats = pb.StatsResponse(global_step=120, workers=[
        worker(0, loss=0.5), worker(1, loss=0.25), worker(2, loss=0.75, done=True)])
    between = interval(workers={0: 17.0, 1: 3.14}, shards={0: 412.4, 1: 40.0})
    assert format_progress(stats, 35.25, between) == (
        "step 120 | 35.2 steps/s | loss 0.5 | 1/3 workers done | "
        "slowest worker 1 (3.1 steps/s) | hottest ps 0 (412 pushes/s)")
    even = interval(workers={0: 17.0, 1: 16.0}, shards={0: 40.0, 1: 40.0})
    assert format_progress(stats, 35.25, even) == \
        "step 120 | 35.2 steps/s | loss 0.5 | 1/3 workers done"
    assert format_progress(stats) == "step 120 | loss 0.5 | 1/3 workers done"
    assert standout_notes(None) == []


class ScriptedShard:
    """A shard's client whose n-th GetStats (from 1) answers `answer(n)`."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = 0

    def call(self, method, request, timeout=None, wait_for_ready=True):
        assert method == "GetStats"
        self.calls += 1
        return self.answer(self.calls)

    def close(self):
        pass


@pytest.mark.cluster
def test_progress_poller_notes_a_slow_worker_once_the_rates_span_enough(monkeypatch):
    shards = [
        ScriptedShard(lambda n: shard(0, pushes=11 * n, global_step=11 * n, variables=1,
                                      workers=[worker(0, 10 * n), worker(1, n)])),
        ScriptedShard(lambda n: shard(1, pushes=11 * n, variables=1))]
    monkeypatch.setattr(progress, "ShardClient", lambda index, address, **_: shards[index])
    monkeypatch.setattr(progress, "NOTES_AFTER_S", 1.0)
    err = io.StringIO()
    poller = ProgressPoller(["h0:1", "h1:2"], Output(io.StringIO(), err), interval=0.02,
                            print_every=0).start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while "slowest" not in err.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        poller.stop()
    lines = err.getvalue().splitlines()
    assert lines[0] == "[launch] step 11 | 0/2 workers done"
    assert "slowest" not in lines[1]  # rates, but over less than NOTES_AFTER_S
    assert re.fullmatch(r"\[launch\] step \d+ \| [\d.]+ steps/s \| 0/2 workers done \| "
                        r"slowest worker 1 \([\d.]+ steps/s\)", lines[-1]), lines[-1]
    assert shards[1].calls >= len(lines)  # every shard is asked at every look
    assert poller.last_stats.shard == 0 and poller.last_stats.global_step >= 11 * len(lines)


def test_progress_poller_takes_the_list_of_addresses():
    output = Output(io.StringIO(), io.StringIO())
    with pytest.raises(TypeError, match="list of the parameter servers' addresses"):
        ProgressPoller("127.0.0.1:2222", output)
    with pytest.raises(ValueError, match="at least one parameter server"):
        ProgressPoller([], output)


# -- launch --status: arguments ----------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--status", "a:1"], True),
    (["--status=a:1,b:2"], True),
    (["--interval", "2", "--status", "a:1"], True),
    (["--interval=2", "--timeout", "1", "--status", "a:1"], True),
    (["--workers", "2", "--ps", "1", "train.py", "--status", "a:1"], False),
    (["train.py", "--status", "a:1"], False),
    (["--interval", "2"], False),
    ([], False),
])
def test_status_is_asked_for_before_any_job_argument(argv, expected):
    assert status.requested(argv) is expected


def test_a_status_option_after_the_script_goes_to_the_script(monkeypatch):
    started = []
    monkeypatch.setattr(cli, "run_job", lambda spec: started.append(spec) or 0)
    assert cli.main(["--workers", "1", "--ps", "1", str(FAKE_WORKER), "--status", "a:1"]) == 0
    [spec] = started
    assert spec.script_args == ["--status", "a:1"]


def test_addresses_are_host_port():
    assert status.addresses("127.0.0.1:2222,ps-1.job:2223,[::1]:80") == \
        ["127.0.0.1:2222", "ps-1.job:2223", "[::1]:80"]
    for bad in ("127.0.0.1", ":2222", "host:", "host:0", "host:70000", "host:port", "::1:80",
                "a:1,,b:2"):
        with pytest.raises(Exception, match="is not host:port"):
            status.addresses(bad)


@pytest.mark.parametrize("argv, problem", [
    (["--status", "127.0.0.1"], "argument --status: '127.0.0.1' is not host:port"),
    (["--status", "127.0.0.1:1,localhost"], "argument --status: 'localhost' is not host:port"),
    (["--status", "127.0.0.1:1", "--interval", "0"],
     "argument --interval: must be more than 0 seconds, got 0"),
    (["--status", "127.0.0.1:1", "--workers", "2"], "unrecognized arguments: --workers 2"),
])
def test_bad_status_arguments_exit_2_with_one_line(argv, problem, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("launch: error: ")
    assert problem in captured.err
    assert captured.err.endswith(" (see launch --status HOST:PORT --help)\n")
    assert captured.out == ""


def test_human_bytes():
    assert [status.human_bytes(n) for n in (0, 160, 1023, 1024, 1536, 12 * 2**20, 3 * 2**40)] \
        == ["0 B", "160 B", "1023 B", "1.0 KiB", "1.5 KiB", "12.0 MiB", "3.0 TiB"]


def columns(line):
    return re.split(r"\s{2,}", line.strip())


def test_status_report_from_two_looks():
    before, now = two_looks()
    lines = status.render(["h0:1", "h1:2"], before, now).splitlines()
    assert lines[0] == ("global step 140 | 20.0 steps/s | 384 examples/s | loss 0.5 | "
                        "1/4 workers done | rates over 2.0 s | slowest worker 0 (2.0 steps/s) | "
                        "hottest ps 0 (20.0 pushes/s)")
    assert [columns(line) for line in lines[2:5]] == [
        ["shard", "address", "variables", "bytes", "pushes/s", "staleness p50/p99",
         "answered"],
        ["0", "h0:1", "2", "160 B", "20.0", "0/2", "yes"],
        ["1", "h1:2", "1", "4.0 KiB", "2.0", "0/0", "yes"]]
    assert [columns(line) for line in lines[6:]] == [
        ["worker", "step", "steps/s", "examples/s", "loss", "last seen", "state", "activity"],
        ["0", "44", "2.0", "64.0", "0.5", "0.2 s ago", "running", "run 44: Push"],
        ["1", "80", "10.0", "320", "0.25", "0.5 s ago", "running", "-"],
        ["2", "10", "-", "0.0", "0.75", "30.0 s ago", "done", "-"],
        ["3", "3", "-", "-", "-", "0.0 s ago", "running", "-"]]


def test_status_report_when_a_shard_answered_once_or_never():
    before, now = two_looks()
    now.shards[1] = None
    lines = status.render(["h0:1", "h1:2", "h2:3"], before, now).splitlines()
    assert [columns(line) for line in lines[3:6]] == [
        ["0", "h0:1", "2", "160 B", "20.0", "0/2", "yes"],
        ["1", "h1:2", "1", "4.0 KiB", "-", "-", "1 of 2"],
        ["2", "h2:3", "-", "-", "-", "-", "no"]]


# -- launch --status against real parameter servers --------------------------------------------
@pytest.fixture
def servers(monkeypatch):
    """Two parameter servers of a job of two workers, with a token: shard 0 holds w (float32
    (4, 8)) and b (float32 (8,)), shard 1 holds e (float32 (256, 4)), all initialized."""
    monkeypatch.setenv("PSFLOW_AUTH_TOKEN", "job-token")
    started = [ParameterServer(shard=i, num_workers=2).start() for i in range(2)]
    clients = [ShardClient(i, s.address, timeout=TIMEOUT) for i, s in enumerate(started)]
    for client, variables in zip(clients, [{"w": (4, 8), "b": (8,)}, {"e": (256, 4)}], strict=True):
        client.call("DeclareVariables", pb.DeclareVariablesRequest(variables=[
            pb.VariableSpec(name=n, dtype="float32", shape=s) for n, s in variables.items()]))
        request = pb.InitializeVariablesRequest()
        for name, shape in variables.items():
            codec.encode(np.zeros(shape, np.float32), request.values.add(name=name).tensor)
        client.call("InitializeVariables", request)
    yield started, clients
    for client in clients:
        client.close()
    for server in started:
        server.stop(grace=0)


def push(client, name, shape, version, step=False):
    """One gradient of ones for `name`, computed on its `version` (and, with `step`, on that
    global step, which the push then advances), from worker 0."""
    request = pb.PushRequest(rule=SGD, worker=0, increment_global_step=step,
                             global_step=version if step else 0)
    codec.encode(np.ones(shape, np.float32), request.gradients.add(name=name,
                                                                    version=version).values)
    return client.call("Push", request)


def scripted_looks(monkeypatch, between):
    """`launch --status` then looks at t = 100 s and t = 102 s, and `between()` runs just
    before the second look, so the rates are exact."""
    taken = []

    class ScriptedLook(Look):
        @classmethod
        def take(cls, clients, timeout=None):
            if taken:
                between()
            look = Look.take.__func__(cls, clients, timeout)
            look.when = 100.0 + 2.0 * len(taken)
            taken.append(look)
            return look

    monkeypatch.setattr(status, "Look", ScriptedLook)
    return taken


def test_status_of_two_real_parameter_servers(servers, monkeypatch, capsys):
    (ps0, ps1), (shard0, shard1) = servers
    for client in (shard0, shard1):
        client.call("RegisterWorker", pb.WorkerRequest(task_index=0))
    shard0.call("RegisterWorker", pb.WorkerRequest(task_index=1))
    shard0.call("WorkerDone", pb.WorkerRequest(task_index=1))
    for version in range(3):
        assert push(shard0, "w", (4, 8), version, step=True).global_step == version + 1
    push(shard1, "e", (256, 4), 0)
    shard0.call("Heartbeat", pb.HeartbeatRequest(task_index=0, local_step=3, loss=0.5,
                                                 examples=96, activity="run 3: Push"))

    def two_seconds_of_training():
        # The global step is 3: staleness 0, 1, 0 and 3; e is at version 1: 0 and 1.
        for version in (3, 3, 5, 3):
            push(shard0, "w", (4, 8), version, step=True)
        for version in (1, 1):
            push(shard1, "e", (256, 4), version)
        shard0.call("Heartbeat", pb.HeartbeatRequest(task_index=0, local_step=11, loss=0.25,
                                                     examples=352, activity="run 11: Push"))

    looks = scripted_looks(monkeypatch, two_seconds_of_training)
    addresses = f"{ps0.address},{ps1.address}"
    assert cli.main(["--status", addresses, "--interval", "0.01"]) == 0
    assert len(looks) == 2
    captured = capsys.readouterr()
    assert "launch:" not in captured.err
    lines = captured.out.splitlines()
    assert lines[0] == ("global step 7 | 2.0 steps/s | 128 examples/s | loss 0.25 | "
                        "1/2 workers done | rates over 2.0 s | hottest ps 0 (2.0 pushes/s)")
    assert [columns(line) for line in lines[3:5]] == [
        ["0", ps0.address, "2", "160 B", "2.0", "0/3", "yes"],
        ["1", ps1.address, "1", "4.0 KiB", "1.0", "0/1", "yes"]]
    assert columns(lines[6])[0] == "worker"
    workers = [columns(line) for line in lines[7:]]
    assert len(workers) == 2
    assert workers[0][:5] + workers[0][6:] == ["0", "11", "4.0", "128", "0.25", "running",
                                               "run 11: Push"]
    assert workers[1][:5] + workers[1][6:] == ["1", "0", "-", "0.0", "-", "done", "-"]
    assert all(re.fullmatch(r"\d+\.\d s ago", row[5]) for row in workers)


def test_status_with_another_token_names_the_refusal(servers, monkeypatch, capsys):
    (ps0, ps1), _ = servers
    monkeypatch.setenv("PSFLOW_AUTH_TOKEN", "another-token")
    assert cli.main(["--status", f"{ps0.address},{ps1.address}", "--interval", "0.01"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"launch: no parameter server answered at {ps0.address}, "
                                   f"{ps1.address} (")
    assert "UNAUTHENTICATED" in captured.err and captured.err.count("\n") == 1


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_status_of_parameter_servers_that_do_not_answer_exits_1_naming_them(capsys):
    gone = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    assert cli.main(["--status", ",".join(gone), "--timeout", "5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"launch: no parameter server answered at {gone[0]}, "
                                   f"{gone[1]} (parameter server 0 ({gone[0]}) GetStats: "
                                   "UNAVAILABLE: ")
    assert captured.err.count("\n") == 1


def test_status_without_shard_0_shows_the_others_and_exits_1(servers, capsys):
    (ps0, ps1), _ = servers
    gone = f"127.0.0.1:{free_port()}"
    assert cli.main(["--status", f"{gone},{ps1.address}", "--interval", "0.01"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "global step unknown (parameter server 0 did not answer)"
    assert [columns(line)[:4] + columns(line)[6:] for line in lines[3:5]] == [
        ["0", gone, "-", "-", "no"], ["1", ps1.address, "1", "4.0 KiB", "yes"]]
    assert len(lines) == 5  # no workers: shard 0 knows them
    assert captured.err.startswith(f"launch: parameter server 0 at {gone} did not answer")


def test_progress_poller_looks_at_every_shard(servers):
    (ps0, ps1), (shard0, _) = servers
    shard0.call("RegisterWorker", pb.WorkerRequest(task_index=0))
    push(shard0, "w", (4, 8), 0, step=True)
    err = io.StringIO()
    poller = ProgressPoller([ps0.address, ps1.address], Output(io.StringIO(), err),
                            interval=0.02, token="job-token")
    try:
        look = poller.look()
        assert [s.shard for s in look.shards] == [0, 1]
        assert [s.variables for s in look.shards] == [2, 1]
        assert poller.last_stats.shard == 0 and poller.last_stats.global_step == 1
        assert poller.poll().global_step == 1
        poller.start()
        deadline = time.monotonic() + TIMEOUT
        while "[launch] step 1" not in err.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        poller.stop()
    assert err.getvalue().splitlines()[0] == "[launch] step 1 | 0/1 workers done"


@pytest.mark.cluster
def test_a_job_launched_here_is_found_without_addresses_or_token(tmp_path, monkeypatch):
    import json
    import os
    import subprocess
    import sys
    monkeypatch.delenv("PSFLOW_AUTH_TOKEN", raising=False)
    release = tmp_path / "release"
    script = Path(__file__).resolve().parent / "cluster_scripts" / "watched.py"
    job = subprocess.Popen([sys.executable, "-m", "psflow.launcher", "--no-progress",
                            "--workers", "1", "--ps", "2", str(script), str(release)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={k: v for k, v in os.environ.items()
                                if k != "PSFLOW_AUTH_TOKEN"})
    try:
        for line in job.stdout:
            found = re.search(r"job status: launch --status (\S+)", line)
            if found:
                break
        addresses = found.group(1).split(",")
        assert len(addresses) == 2
        deadline = time.monotonic() + 60
        while True:  # the worker trains its 30 steps, then waits for the release
            out = io.StringIO()
            monkeypatch.setattr("sys.stdout", out)
            code = cli.main(["--status", "--interval", "0.2"])
            monkeypatch.undo()
            monkeypatch.delenv("PSFLOW_AUTH_TOKEN", raising=False)
            text = out.getvalue()
            if code == 0 and text.startswith("global step 30 |"):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        rows = {line.split()[0]: line.split() for line in text.splitlines()[2:5]}
        assert rows["0"][1] == addresses[0] and rows["0"][-1] == "yes"
        assert rows["1"][1] == addresses[1] and rows["1"][-1] == "yes"
        # The job's token is in a file its user alone may read.
        job_files = [p for p in Path(tempfile_dir()).glob("psflow-launch-*/job.json")
                     if json.loads(p.read_text())["ps"] == addresses]
        assert len(job_files) == 1 and job_files[0].stat().st_mode & 0o077 == 0
    finally:
        release.touch()
        job.communicate(timeout=60)
    assert job.returncode == 0


def tempfile_dir():
    import tempfile
    return tempfile.gettempdir()


def test_without_addresses_one_running_job_must_be_found(tmp_path, capsys):
    assert status.main(["--status"], folder=str(tmp_path)) == 1
    assert capsys.readouterr().err == (
        "launch: no job launched on this machine is running; give the parameter servers' "
        "addresses: launch --status HOST:PORT[,HOST:PORT...]\n")
    import json
    import os
    for n, port in enumerate((1111, 2222)):
        folder = tmp_path / f"psflow-launch-{os.getpid()}-{n}"
        folder.mkdir()
        (folder / "job.json").write_text(json.dumps({"ps": [f"127.0.0.1:{port}"],
                                                     "token": f"t{n}"}))
    (tmp_path / "psflow-launch-999999999-x").mkdir()  # a launcher that is gone
    assert status.main(["--status"], folder=str(tmp_path)) == 1
    assert "2 jobs launched on this machine are running (127.0.0.1:1111; 127.0.0.1:2222)" \
        in capsys.readouterr().err
    assert status._job_and_token(["127.0.0.1:2222"], str(tmp_path)) == (["127.0.0.1:2222"],
                                                                         "t1")
