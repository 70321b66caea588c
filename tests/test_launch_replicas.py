"""`launch --ps-replicas R`: each shard runs as a chain of R replicas under a chain master.
Whole jobs of real processes: a job of 2 shards x 2 replicas ends as the same job of lone
shards does, with the same trained values; a head killed mid-run (PSFLOW_FAULT, or SIGKILL)
is replaced without the job noticing, the values unchanged, and its replacement joins the
chain (or, failing, is retried and given up on); a replica gone silent is stopped and
replaced; a chain master killed is restarted and the chains go on (past --max-restarts it
stops the job, as a shard whose every replica died does, named); `launch --status` reads a
chain from its new head; an online job goes on through a replaced head; and the flags chains
do not go with are refused."""

import io
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import psflow
from psflow.launcher import cli
from psflow.launcher.job import run_job
from psflow.launcher.job_spec import JobSpec
from test_launcher import (
    FAKE_WORKER,
    ROOT,
    SCRIPTS,
    LaunchInBackground,
    _answers,
    alive,
    explain,
    job_env,
    launcher_command,
    run_launch,
    wait_until,
)

TRAINING = SCRIPTS / "chain_training.py"


def trained(tmp_path, *flags, pause=None):
    """Runs a job of 1 worker training TRAINING on 2 shards with `flags` (and a `pause` after
    each step); (launch's result, the chief's values)."""
    out = tmp_path / "values.json"
    result = run_launch(tmp_path, "--no-progress", "--workers", 1, "--ps", 2, *flags, TRAINING,
                        out, *([] if pause is None else [pause]))
    assert result.returncode == 0, explain(result)
    return result, json.loads(out.read_text())


@pytest.fixture(scope="module")
def lone_shards(tmp_path_factory):
    """The values the job trains with one parameter server per shard."""
    return trained(tmp_path_factory.mktemp("lone"))[1]


def pids(stderr):
    """{"ps 0.1": pid, "the chain master": pid, ...} from launch's `started` lines."""
    return {name: int(pid) for name, pid in
            re.findall(r"^\[launch\] started (ps \d+\.\d+|the chain master) \(pid (\d+)\)",
                       stderr, re.M)}


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, problem", [
    (["--ps-replicas", "0"], "argument --ps-replicas: must be at least 1, got 0"),
    (["--ps-replicas", "two"], "argument --ps-replicas: must be a whole number"),
    (["--ps-replicas", "2", "--script-ps"], "it does not go with --script-ps"),
    (["--ps-replicas", "3", "--ps-port", "65531"], "PS ports 65531..65536 go past 65535"),
])
def test_flags_chains_do_not_go_with_are_one_line_and_exit_2(args, problem, capsys,
                                                             monkeypatch):
    monkeypatch.setattr(cli, "run_job", lambda spec: pytest.fail("a job was started"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--workers", "1", "--ps", "2", *args, str(FAKE_WORKER)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launch: error: "), err
    assert problem in err


def test_the_spec_takes_the_replicas_and_places_their_ports():
    spec = cli.parse_args(["--workers", "1", "--ps", "2", "--ps-replicas", "3", "--ps-port",
                           "5000", str(FAKE_WORKER)])
    assert spec.ps_replicas == 3
    assert [spec.ps_port_of(s, r) for s in range(2) for r in range(3)] == \
        list(range(5000, 5006))
    assert cli.parse_args(["--workers", "1", "--ps", "2", str(FAKE_WORKER)]).ps_replicas == 1
    with pytest.raises(ValueError, match="ps_replicas must be a whole number >= 1, got 0"):
        JobSpec(script=str(FAKE_WORKER), ps_replicas=0).validate()


# -- whole jobs ---------------------------------------------------------------------------------
@pytest.mark.cluster
def test_a_job_of_chains_trains_what_lone_shards_train(tmp_path, lone_shards):
    result, values = trained(tmp_path, "--ps-replicas", 2)
    assert values == lone_shards and values["step"] == 40
    started = pids(result.stderr)
    assert sorted(started) == ["ps 0.0", "ps 0.1", "ps 1.0", "ps 1.1", "the chain master"]
    assert "[launch] shard 0: a chain of 2 replicas, head first: ps 0.0, ps 0.1" in result.stderr
    heads = re.search(r"job status: launch --status (\S+)", result.stderr).group(1).split(",")
    serving = dict(re.findall(r"^\[launch\] (ps \d\.\d) serving on (\S+)", result.stderr, re.M))
    assert heads == [serving["ps 0.0"], serving["ps 1.0"]]
    assert "4 of 4 parameter-server replicas exited by themselves" in result.stderr
    assert "launch:" not in result.stderr, result.stderr  # no failure, no warning
    assert not [name for name, pid in started.items() if alive(pid)]


@pytest.mark.cluster
def test_a_head_killed_mid_run_is_replaced_and_the_values_are_unchanged(tmp_path, lone_shards,
                                                                        monkeypatch):
    # Shard 0's head dies at its 21st write, after the tail applied it, before answering.
    monkeypatch.setenv("PSFLOW_FAULT", "kill:before-ack:0:0:1:20")
    result, values = trained(tmp_path, "--ps-replicas", 2)
    assert values == lone_shards and values["step"] == 40
    assert "launch: ps 0.0 failed with exit code 137 while the workers were running; shard 0 " \
           "goes on with ps 0.1; starting a replacement" in result.stderr, result.stderr
    # Its replacement may join before the job ends (and then, as the head of a chain of two
    # again, ps 0.1 dies at its own 21st write there, and is replaced in turn).
    summary = re.search(r"(\d) of (\d) parameter-server replicas exited by themselves, (\d) "
                        r"replicas? lost on the way", result.stderr)
    assert summary and summary[1] == summary[2] and int(summary[3]) >= 1, result.stderr
    for line in result.stderr.splitlines():  # every line names its source
        assert re.match(r"(\[(worker:0|ps:\d\.\d|chain:master|launch)\] |launch: )", line), line
    assert not [name for name, pid in pids(result.stderr).items() if alive(pid)]


@pytest.mark.cluster
@pytest.mark.parametrize("victims, message", [
    (["ps 0.1", "ps 0.0"], "launch: ps 0.0 was killed by SIGKILL while the workers were "
                           "running, and shard 0 has no other live replica; stopping the job"),
    (["the chain master"], "launch: the chain master was killed by SIGKILL while the workers "
                           "were running; stopping the job"),
])
def test_a_shard_without_replicas_or_a_dead_master_stops_the_job(victims, message, tmp_path):
    job = LaunchInBackground(tmp_path, "--no-progress", "--max-restarts", 0, "--workers", 1,
                             "--ps", 2, "--ps-replicas", 2, TRAINING, tmp_path / "v.json", 0.2)
    wait_until(lambda: "started worker 0" in job.stderr or job.process.poll() is not None, 30,
               "the worker to start")
    started = pids(job.stderr)
    for victim in victims:
        os.kill(started[victim], signal.SIGKILL)
        wait_until(lambda v=victim: f"launch: {v} was killed" in job.stderr, 10,
                   f"the launcher to notice {victim}")
    assert job.wait() == 1, job.explain()
    assert message in job.stderr, job.explain()
    assert not [name for name, pid in pids(job.stderr).items() if alive(pid)]


@pytest.mark.cluster
def test_a_replacement_joins_the_chain_and_status_reads_the_new_head(tmp_path, lone_shards):
    # 40 steps 0.15 s apart: the job trains on while the head is replaced.
    job = LaunchInBackground(tmp_path, "--no-progress", "--workers", 1, "--ps", 2,
                             "--ps-replicas", 2, TRAINING, tmp_path / "v.json", 0.15)
    try:
        wait_until(lambda: "started worker 0" in job.stderr or job.process.poll() is not None,
                   30, "the worker to start")
        os.kill(pids(job.stderr)["ps 0.0"], signal.SIGKILL)
        wait_until(lambda: "[worker:0] parameter server 0: its chain is at epoch 2" in job.stderr,
                   15, "the worker to move to shard 0's new head")
        serving = dict(re.findall(r"^\[launch\] (ps \d\.\d) serving on (\S+)", job.stderr,
                                  re.M))
        result = subprocess.run(launcher_command("--status", "--interval", "0.5"),
                                capture_output=True, text=True, timeout=30, cwd=ROOT,
                                env=job_env(tmp_path))
        assert result.returncode == 0, explain(result)
        rows = [line.split() for line in result.stdout.splitlines()]
        assert ["0", serving["ps 0.1"]] in [row[:2] for row in rows], result.stdout
        assert ["1", serving["ps 1.0"]] in [row[:2] for row in rows], result.stdout
    finally:
        assert job.wait() == 0, job.explain()
    assert re.search(r"^\[launch\] ps 0\.2 joined shard 0's chain at epoch \d+: ps 0\.1, ps 0\.2$",
                     job.stderr, re.M), job.explain()
    assert "4 of 4 parameter-server replicas exited by themselves, 1 replica lost on the way" \
        in job.stderr, job.explain()
    assert json.loads((tmp_path / "v.json").read_text()) == lone_shards
    assert not [name for name, pid in pids(job.stderr).items() if alive(pid)]


@pytest.mark.cluster
def test_an_online_job_of_chains_replaces_a_head_and_counts_every_line_once(tmp_path,
                                                                           monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(6):
        (data / f"part-{k:03d}.csv").write_text("".join(f"{i}\n" for i in range(10 * k,
                                                                                10 * k + 10)))
    monkeypatch.setenv("PSFLOW_FAULT", "kill:before-ack:0:0:1:10")
    result = run_launch(tmp_path, "--no-progress", "--online", "--workers", 2, "--ps", 2,
                        "--ps-replicas", 2, "--checkpoint-root", tmp_path,
                        ROOT / "tests" / "cluster_scripts" / "online_counts.py", "--data", data,
                        "--checkpoint-dir", tmp_path / "ckpt", "--idle-timeout", 2,
                        "--step-sleep", 0.05)
    assert result.returncode == 0, explain(result)
    assert "launch: ps 0.0 failed with exit code 137 while the workers were running; shard 0 " \
           "goes on with ps 0.1; starting a replacement" in result.stderr, explain(result)
    counts = psflow.load_model(str(tmp_path / "ckpt"))["counts"]
    np.testing.assert_array_equal(counts[:60], -1.0)  # every line once
    np.testing.assert_array_equal(counts[60:], 0.0)
    assert not [name for name, pid in pids(result.stderr).items() if alive(pid)]


@pytest.mark.cluster
def test_a_replacement_that_fails_is_retried_then_given_up_on(tmp_path, monkeypatch):
    # Shard 0's head dies at its 41st write: about half way through the steps.
    monkeypatch.setenv("PSFLOW_FAULT", "kill:before-ack:0:0:1:40")
    out, err = io.StringIO(), io.StringIO()
    spec = JobSpec(script=str(TRAINING), script_args=[str(tmp_path / "v.json"), "0.1"],
                   workers=1, ps=2, ps_replicas=2, max_restarts=1, progress=False,
                   ps_command=[sys.executable, str(SCRIPTS / "ps_without_join.py")])
    assert run_job(spec, out, err) == 0, err.getvalue()
    text = err.getvalue()
    assert "launch: ps 0.2 failed with exit code 2 before joining shard 0's chain; starting " \
           "another replacement (retry 1 of 1)" in text, text
    assert "launch: ps 0.3 failed with exit code 2 before joining shard 0's chain; giving up on " \
           "replacing the replica after 2 failed replacements: shard 0 goes on with ps 0.1" \
           in text, text
    assert "started ps 0.4" not in text
    assert "3 of 3 parameter-server replicas exited by themselves, 1 replica lost" in text
    assert json.loads((tmp_path / "v.json").read_text())["step"] == 40


@pytest.mark.cluster
def test_a_replica_the_master_removed_is_stopped_and_replaced(tmp_path, lone_shards,
                                                              monkeypatch):
    # Shard 0's tail goes silent at its 8th heartbeat (about 2 s after the master serves), as
    # one cut off from the master would, while the job (40 steps 0.2 s apart) trains on.
    monkeypatch.setenv("PSFLOW_FAULT", "stall:heartbeat:0:1:1:7")
    result, values = trained(tmp_path, "--ps-replicas", 2, pause=0.2)
    assert values == lone_shards
    assert "launch: ps 0.1 was removed from shard 0's chain by the chain master (its " \
           "heartbeats stopped); stopping it\n" \
           "launch: ps 0.1 was killed by SIGKILL while the workers were running; shard 0 goes " \
           "on with ps 0.0; starting a replacement" in result.stderr, explain(result)
    assert "[launch] started ps 0.2 (pid" in result.stderr
    assert not [name for name, pid in pids(result.stderr).items() if alive(pid)]


@pytest.mark.cluster
def test_a_chain_master_killed_mid_run_is_restarted_and_the_chains_go_on(tmp_path,
                                                                         lone_shards):
    job = LaunchInBackground(tmp_path, "--no-progress", "--workers", 1, "--ps", 2,
                             "--ps-replicas", 2, TRAINING, tmp_path / "v.json", 0.1)
    wait_until(lambda: "started worker 0" in job.stderr or job.process.poll() is not None, 30,
               "the worker to start")
    os.kill(pids(job.stderr)["the chain master"], signal.SIGKILL)
    assert job.wait() == 0, job.explain()
    address = re.search(r"chain master serving on (\S+)", job.stderr)[1]
    assert f"launch: the chain master was killed by SIGKILL while the workers were running; " \
           f"restarting it on {address}\n" in job.stderr, job.explain()
    assert "(pid" in re.search(r"\[launch\] started the chain master .*restart 1 of 3",
                               job.stderr)[0]
    assert json.loads((tmp_path / "v.json").read_text()) == lone_shards
    assert "4 of 4 parameter-server replicas exited by themselves" in job.stderr
    started = [int(pid) for pid in re.findall(r"started the chain master \(pid (\d+)\)",
                                              job.stderr)]
    assert len(started) == 2 and not any(alive(pid) for pid in started)


def trained_sync(tmp_path):
    """Runs TRAINING with 2 workers in sync mode on 2 shards of 2 replicas each, 0.1 s between
    steps; (launch's result, the chief's values)."""
    tmp_path.mkdir()
    out = tmp_path / "values.json"
    result = run_launch(tmp_path, "--no-progress", "--workers", 2, "--ps", 2, "--ps-replicas", 2,
                        "--mode", "sync", TRAINING, out, 0.1)
    assert result.returncode == 0, explain(result)
    return result, json.loads(out.read_text())


@pytest.mark.cluster
def test_a_sync_job_whose_head_is_killed_trains_what_it_trains_without(tmp_path, monkeypatch):
    _, expected = trained_sync(tmp_path / "whole")
    assert expected["step"] == 40
    # Shard 0's head dies at its 21st write, after the tail applied it, before answering; its
    # replacement copies the steps under way from the tail and joins the chain.
    monkeypatch.setenv("PSFLOW_FAULT", "kill:before-ack:0:0:1:20")
    result, values = trained_sync(tmp_path / "fault")
    assert values == expected
    assert "launch: ps 0.0 failed with exit code 137 while the workers were running; shard 0 " \
           "goes on with ps 0.1; starting a replacement" in result.stderr, explain(result)
    assert re.search(r"^\[launch\] ps 0\.2 joined shard 0's chain at epoch \d+: ps 0\.1, ps 0\.2$",
                     result.stderr, re.M), explain(result)
    assert not [name for name, pid in pids(result.stderr).items() if alive(pid)]


@pytest.mark.cluster
def test_a_serving_tier_follows_each_chain_s_tail_through_a_replica_s_death(tmp_path):
    from psflow.serving.remote_params import RemoteParams
    stop = tmp_path / "stop"
    token = "tier-test-token"
    launcher = subprocess.Popen(
        launcher_command("--no-progress", "--workers", 1, "--ps", 2, "--ps-replicas", 2,
                         "--serving-replicas", 1,
                         ROOT / "tests" / "cluster_scripts" / "table_until_told.py", stop),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env=dict(job_env(tmp_path), PSFLOW_AUTH_TOKEN=token))
    lines = []
    try:
        while not lines or "serving tier:" not in lines[-1]:
            lines.append(launcher.stdout.readline())
            assert lines[-1], "the launcher ended before printing the tier:\n" + "".join(lines)
        shards = [flag.split("=", 1)[1].split(",") for flag in lines[-1].split()
                  if flag.startswith("--params_shard=")]
        tier = RemoteParams(shards, token=token, cache_ttl=0, deadline=2.0)
        keys = np.arange(1, 21)
        wait_until(lambda: _answers(tier, keys), 30, "the tier to hold the trained rows")
        # Shard 0's tail, which its tier process follows, dies; the tier follows the new tail.
        os.kill(pids("".join(lines))["ps 0.1"], signal.SIGKILL)
        before = tier.lookup("items", keys)
        wait_until(lambda: not np.array_equal(tier.lookup("items", keys), before), 30,
                   "the tier to move on with the new tail")
        tier.close()
    finally:
        stop.touch()
        out, _ = launcher.communicate(timeout=120)
        lines.append(out)
    text = "".join(lines)
    assert launcher.returncode == 0, text
    assert "following shard 0's chain: now" in text, text
