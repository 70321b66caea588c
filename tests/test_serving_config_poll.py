"""--model_config_file_poll_wait_seconds: models added, removed, or with a changed policy or
labels in the model config file are applied while the server serves; a bad file changes
nothing."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from psflow.errors import NotFoundError
from psflow.serving import __main__ as serve_main
from psflow.serving.model_config import read_model_config
from psflow.serving.model_server import ModelServer
import live_predictor
from test_serving_api import IDS, X
from waiting import wait_for


def _config(*models):
    entries = []
    for name, base, policy, labels in models:
        label_text = "".join(f' version_labels {{ key: "{k}" value: {v} }}'
                             for k, v in labels.items())
        entries.append(f'config {{ name: "{name}" base_path: "{base}" '
                       f'model_version_policy {{ {policy} }}{label_text} }}')
    return "model_config_list { " + " ".join(entries) + " }\n"


def _served(server, name, **spec):
    version, _, outputs = server.core.predict(name, {"x": X, "ids": IDS}, **spec)
    return version, outputs


@pytest.fixture
def bases(tmp_path):
    found = {}
    for name, seeds in (("ctr", (1, 2)), ("mlp", (5,))):
        base = tmp_path / name
        base.mkdir()
        for version, seed in enumerate(seeds, 1):
            live_predictor.write_version(base, version, seed=seed)
        found[name] = base
    return found


def test_the_model_config_file_is_re_read_and_applied(tmp_path, bases):
    path = tmp_path / "models.config"
    path.write_text(_config(("ctr", bases["ctr"], "all {}", {"stable": 1, "canary": 2})))
    server = ModelServer(read_model_config(str(path)), port=0, poll_wait_seconds=0.05,
                         load_fn=live_predictor.load, host="127.0.0.1",
                         model_config_file=str(path), config_poll_wait_seconds=0.05)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)

    def health_of(service):
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    try:
        wait_for(lambda: server.core.available, 10, "ctr available")
        assert _served(server, "ctr", label="stable")[0] == 1
        # A model added, ctr's labels swapped and its policy narrowed to the latest version.
        path.write_text(_config(("ctr", bases["ctr"], "latest { num_versions: 1 }",
                                 {"stable": 2}),
                                ("mlp", bases["mlp"], "latest {}", {})))
        wait_for(lambda: "mlp" in server.core.managers and server.core.available, 10,
                 "mlp added")
        version, outputs = _served(server, "mlp")
        np.testing.assert_allclose(outputs["scores"],
                                   live_predictor.expected(5, X, IDS)["scores"], rtol=1e-6)
        assert health_of("mlp") == health_pb2.HealthCheckResponse.SERVING
        assert _served(server, "ctr", label="stable")[0] == 2
        wait_for(lambda: {s.version: s.state for s in server.core.status("ctr")}.get(1)
                 == "END", 10, "ctr version 1 unloaded by the new policy")
        # A bad file changes nothing.
        path.write_text("model_config_list { config { name: ")
        assert not server.config_poller.poll()
        assert sorted(server.core.managers) == ["ctr", "mlp"]
        # A model removed.
        path.write_text(_config(("mlp", bases["mlp"], "latest {}", {})))
        wait_for(lambda: "ctr" not in server.core.managers, 10, "ctr removed")
        with pytest.raises(NotFoundError, match="model 'ctr' is not served"):
            _served(server, "ctr")
        assert _served(server, "mlp")[0] == 1
        assert health_of("") == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
        server.stop(grace=2)


def test_the_poll_flag_reaches_the_server(tmp_path, bases, monkeypatch):
    path = tmp_path / "models.config"
    path.write_text(_config(("ctr", bases["ctr"], "all {}", {})))
    made = {}

    class Recorded(ModelServer):
        def __init__(self, *args, **kwargs):
            made.update(kwargs)
            raise RuntimeError("stop here")

    monkeypatch.setattr(serve_main, "ModelServer", Recorded)
    code = serve_main.main(["--port=0", f"--model_config_file={path}",
                            "--model_config_file_poll_wait_seconds=2.5"])
    assert code == 2
    assert made["model_config_file"] == str(path)
    assert made["config_poll_wait_seconds"] == 2.5
