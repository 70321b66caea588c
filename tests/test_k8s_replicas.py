"""Kubernetes manifests of a job whose shards run as chains (`launch --k8s --ps-replicas R`):
they validate, and what each pod is told (its command, as the kubelet expands it, and its
TF_CONFIG), read back with psflow's own parsers, is what the replicas, the chain master and the
workers need to find one another."""

import json
import re

import kubernetes_validate
import pytest

from psflow.launcher import cli, k8s
from psflow.launcher.job_spec import JobSpec
from psflow.ps import __main__ as ps_main
from psflow.ps.chain_master import parse_chains
from psflow.train.cluster import task_config_from_env
from test_k8s import KUBERNETES_VERSION, ROOT, by_kind, generate

DIGITS = str(ROOT / "examples" / "digits.py")


def pod_spec(document):
    return document["spec"]["template"]["spec"]


def kubelet_env(container, index, token="job-token"):
    """The container's environment as the kubelet sets it for the pod of `index`: its
    fieldRef index, the secret, and `$(VAR)` expanded from the variables defined before."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = str(index)
        else:
            env[item["name"]] = token
    return env


def expand(text, env):
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def pod_dns(document, index, service, namespace):
    """The DNS name of pod `index` of an Indexed Job or StatefulSet (host `<name>-<index>`)."""
    return f"{document['metadata']['name']}-{index}.{service}.{namespace}.svc.cluster.local"


def split_flags(command, *own):
    """(the command without the flags `own` and their values, {flag: value or True})."""
    rest, found, k = [], {}, 0
    while k < len(command):
        if command[k] in own:
            takes_value = k + 1 < len(command) and not command[k + 1].startswith("--")
            found[command[k]] = command[k + 1] if takes_value else True
            k += 2 if takes_value else 1
        else:
            rest.append(command[k])
            k += 1
    return rest, found


def values_of(command, flag):
    return [command[k + 1] for k, part in enumerate(command[:-1]) if part == flag]


def test_each_replica_the_master_and_the_workers_are_told_the_same_chains():
    docs = generate("--workers", 3, "--ps", 2, "--ps-replicas", 2, "--k8s", "--name", "digits",
                    "--namespace", "ml", "--cpu", "1", "examples/digits.py", "--steps", 600)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = by_kind(docs)
    assert set(kinds) == {("Secret", "digits-auth"), ("Service", "digits"),
                          ("Job", "digits-chain"), ("Job", "digits-ps-0"),
                          ("Job", "digits-ps-1"), ("Job", "digits-worker")}
    selector = kinds[("Service", "digits")]["spec"]["selector"]
    jobs = {name: doc for (kind, name), doc in kinds.items() if kind == "Job"}
    for doc in jobs.values():  # every pod has its name in the headless Service
        assert doc["spec"]["completionMode"] == "Indexed"
        assert pod_spec(doc)["subdomain"] == "digits"
        assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()

    master_job = jobs["digits-chain"]
    assert master_job["spec"]["completions"] == 1
    master_address = pod_dns(master_job, 0, "digits", "ml") + ":2222"
    master = pod_spec(master_job)["containers"][0]
    rest, extra = split_flags(master["command"], "--exit-after-silence")
    assert rest[:4] == ["python", "-P", "-m", "psflow.ps.chain_master"]
    assert extra == {"--exit-after-silence": "30"}  # so that its Job completes
    chains = parse_chains(values_of(rest, "--chain"))
    assert values_of(rest, "--host") == ["0.0.0.0"] and values_of(rest, "--port") == ["2222"]
    assert kubelet_env(master, 0)["PSFLOW_AUTH_TOKEN"] == "job-token"
    assert "readinessProbe" not in master and "volumes" not in pod_spec(master_job)

    replicas = {}
    for shard in range(2):
        job = jobs[f"digits-ps-{shard}"]
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
        assert job["spec"]["backoffLimit"] == 3 * 2
        pod = pod_spec(job)
        assert pod["restartPolicy"] == "OnFailure"  # restarted in place, under its own name
        container = pod["containers"][0]
        assert container["readinessProbe"]["grpc"] == {"port": 2222,
                                                       "service": "psflow.ParameterServer"}
        assert container["livenessProbe"]["grpc"]["port"] == 2222
        assert container["resources"] == {"requests": {"cpu": "1"}}
        for index in range(2):
            env = kubelet_env(container, index)
            command = [expand(part, env) for part in container["command"]]
            assert command[:4] == ["python", "-P", "-m", "psflow.ps"]
            args = ps_main.parse_args(command[4:])  # as the server reads them
            assert (args.task_index, args.num_workers) == (shard, 3)
            assert (args.host, args.port) == ("0.0.0.0", 2222)
            assert args.chain_master == master_address and args.join
            assert args.advertise_address == pod_dns(job, index, "digits", "ml") + ":2222"
            replicas.setdefault(shard, []).append(args.advertise_address)
            config = task_config_from_env(env)
            assert (config.task_type, config.task_index) == ("ps", shard)
    # The master knows each replica by the address it heartbeats with, in the chain's order.
    assert chains == replicas

    worker = pod_spec(jobs["digits-worker"])["containers"][0]
    for index in range(3):
        env = kubelet_env(worker, index)
        config = task_config_from_env(env)
        assert (config.task_type, config.task_index) == ("worker", index)
        assert config.chain_master == master_address
        raw = json.loads(env["TF_CONFIG"])
        assert raw["cluster"]["ps"] == [replicas[0][0], replicas[1][0]]  # the heads
        assert raw["psflow"] == {"ps_replicas": [replicas[0], replicas[1]],
                                 "chain_master": master_address}
        assert raw["psflow"] == json.loads(JobSpec(script=DIGITS).tf_config(
            [], "worker", index, ps_replicas=replicas.values(),
            chain_master=master_address))["psflow"]


def test_never_restart_policy_bounds_each_replica_and_the_master():
    job = JobSpec(script=DIGITS, workers=2, ps=3, ps_replicas=3)
    docs = by_kind(k8s.manifests(job, k8s.K8sSpec(name="r", restart_policy="Never"),
                                 max_restarts=2))
    assert [name for kind, name in docs if kind == "Job"] == [
        "r-chain", "r-ps-0", "r-ps-1", "r-ps-2", "r-worker"]
    for name in ("r-chain", "r-ps-0", "r-ps-1", "r-ps-2"):
        spec = docs[("Job", name)]["spec"]
        assert spec["backoffLimitPerIndex"] == 2 and "backoffLimit" not in spec
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert docs[("Job", "r-ps-2")]["spec"]["completions"] == 3


def test_online_replicas_are_stateful_sets_each_selecting_its_own_pods():
    job = JobSpec(script=DIGITS, workers=2, ps=2, ps_replicas=2, online=True, stop_timeout=60)
    docs = k8s.manifests(job, k8s.K8sSpec(name="live", namespace="ml"))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    sets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StatefulSet"}
    assert list(sets) == ["live-chain", "live-ps-0", "live-ps-1", "live-worker"]
    for name, doc in sets.items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"] == labels
        assert pod_spec(doc)["restartPolicy"] == "Always"
        others = [o for n, o in sets.items() if n != name]
        assert not any(o["spec"]["selector"]["matchLabels"].items() <= labels.items()
                       for o in others), name
    assert sets["live-chain"]["spec"]["replicas"] == 1
    master = pod_spec(sets["live-chain"])["containers"][0]["command"]
    assert "--exit-after-silence" not in master  # an online job's master serves on
    master_address = pod_dns(sets["live-chain"], 0, "live", "ml") + ":2222"
    chains = parse_chains(values_of(master, "--chain"))
    for shard in range(2):
        doc = sets[f"live-ps-{shard}"]
        assert doc["spec"]["replicas"] == 2
        container = pod_spec(doc)["containers"][0]
        for index in range(2):
            env = kubelet_env(container, index)
            assert env["POD_INDEX"] == str(index)
            command = [expand(part, env) for part in container["command"]]
            args = ps_main.parse_args(command[4:])
            assert args.online and args.stop_timeout == 60 and args.join
            assert args.chain_master == master_address and args.task_index == shard
            assert args.advertise_address == chains[shard][index] == \
                pod_dns(doc, index, "live", "ml") + ":2222"


@pytest.mark.parametrize("args, problem", [
    (["--k8s-flavor", "tfjob"], "--ps-replicas > 1 needs --k8s-flavor jobs"),
    (["--tls-secret", "tls"], "--ps-replicas > 1 does not go with --tls-secret"),
])
def test_what_replicated_manifests_cannot_express_is_a_one_line_error(args, problem, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--workers", "1", "--ps", "1", "--ps-replicas", "2", "--k8s", *args, DIGITS])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1


def test_ps_replicas_must_be_a_positive_whole_number(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--workers", "1", "--ps", "1", "--ps-replicas", "0", "--k8s", DIGITS])
    assert info.value.code == 2 and "--ps-replicas" in capsys.readouterr().err
    job = JobSpec(script=DIGITS, ps_replicas=0)
    with pytest.raises(ValueError, match="--ps-replicas must be a whole number >= 1, got 0"):
        k8s.manifests(job, k8s.K8sSpec())


@pytest.mark.parametrize("flavor", ["jobs", "tfjob"])
@pytest.mark.parametrize("online", [False, True])
def test_one_replica_makes_the_manifests_of_a_job_without_replicas(flavor, online):
    def documents(**replicas):
        job = JobSpec(script=DIGITS, workers=2, ps=2, online=online, **replicas)
        return k8s.manifests(job, k8s.K8sSpec(flavor=flavor, token="same"))
    assert k8s.to_yaml(documents(ps_replicas=1)) == k8s.to_yaml(documents())
    assert "chain" not in k8s.to_yaml(documents(ps_replicas=1))
