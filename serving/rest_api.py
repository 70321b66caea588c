"""The REST front, TF Serving's API on the front loop's HTTP server: a thin translation of
JSON to the ServerCore's calls.

    POST /v1/models/NAME[/versions/N|/labels/L]:predict   {"instances": ...} | {"inputs": ...}
    GET  /v1/models/NAME[/versions/N|/labels/L]           the versions' states
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata  the signatures
    GET  /monitoring/prometheus/metrics                   Prometheus metrics

An error is answered `{"error": "..."}` with its HTTP status; the server keeps serving.
"""

import functools
import json
import logging
import re

import numpy as np
import orjson
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST

from psflow.errors import InvalidArgumentError, NotFoundError
from psflow.proto.tfserving import get_model_metadata_pb2, model_pb2
from psflow.serving import rest_json
from psflow.serving.error_mapping import grpc_code_of, http_status_of
from psflow.serving.http_server import HttpServer
from psflow.serving.prediction_servicer import SIGNATURE_DEF, metadata_response, status_response
from psflow.serving.request_metrics import metrics_text

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 << 20
METRICS_PATH = "/monitoring/prometheus/metrics"
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?P<verb>:[a-zA-Z]+|/metadata)?/?$")
# Both the choice of where a request runs and its answer read its path: one match per path.
_route = functools.lru_cache(maxsize=1024)(_PATH.match)


def _spec(match):
    spec = model_pb2.ModelSpec(name=match["name"])
    if match["version"] is not None:
        if not match["version"].isdigit():
            raise InvalidArgumentError(f"version '{match['version']}' is not a number")
        if int(match["version"]) >= 1 << 63:
            raise InvalidArgumentError(f"version {match['version']} is out of range")
        spec.version.value = int(match["version"])
    elif match["label"] is not None:
        spec.version_label = match["label"]
    return spec


def _json(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class RestApi:
    """TF Serving's REST API over a ServerCore: `respond(method, target, headers, body)` ->
    (status, content type, bytes), called by the HTTP server in its loop or pool."""

    def __init__(self, core, front):
        self.core = core
        self.front = front

    @property
    def max_body_bytes(self):
        return MAX_BODY_BYTES

    def runs_inline(self, method, target, size):
        """A predict is answered in the loop when it is small and its model quick; anything
        else a REST client asks is."""
        if method != "POST":
            return True
        match = _route(target.split("?", 1)[0])
        return match is None or (self.front.runs_inline(size) and self.core.quick(match["name"]))

    def respond(self, method, target, headers, body):
        path = target.split("?", 1)[0]
        if method == "GET" and path == METRICS_PATH:
            return 200, CONTENT_TYPE_LATEST, metrics_text(self.core)
        if method not in ("GET", "POST"):
            return _error(405, f"method {method} is not allowed on {path}")
        try:
            with self.core.request():
                match = _route(path)
                if match is None:
                    raise NotFoundError(f"no such resource: {method} {target}")
                answer = self._dispatch(method, match, target, body)
            return 200, "application/json", _dumps(answer)
        except Exception as exc:  # every failure becomes an error answer, never a dead server
            status = http_status_of(exc)
            if status == 500:
                log.exception("%s %s failed", method, target)
            message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
            return _error(status, message or grpc_code_of(exc).name)

    def _dispatch(self, method, match, target, body):
        verb = match["verb"]
        spec = _spec(match)
        if method == "GET" and verb is None:
            return _json(status_response(self.core, spec))
        if method == "GET" and verb == "/metadata":
            response = metadata_response(self.core, spec)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            response.metadata[SIGNATURE_DEF].Unpack(signatures)
            spec_json = _json(response.model_spec)
            return {"model_spec": spec_json, "metadata": {SIGNATURE_DEF: _json(signatures)}}
        if method == "POST" and verb == ":predict":
            return self._predict(spec, _parsed_json(body))
        if verb in (":classify", ":regress"):
            raise InvalidArgumentError(f"{verb[1:]} is not served; use :predict")
        raise NotFoundError(f"no such resource: {method} {target}")

    def _predict(self, spec, body):
        rows = []

        def inputs(signature):
            found, row_format = rest_json.request_inputs(body, signature)
            rows.append(row_format)
            return found

        if not isinstance(body, dict):
            raise InvalidArgumentError("the request body must be a JSON object")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise InvalidArgumentError("'signature_name' must be a string")
        version = spec.version.value if spec.HasField("version") else None
        label = spec.version_label or None
        _, _, outputs = self.core.predict(spec.name, inputs, version=version, label=label,
                                          signature_name=signature_name)
        answer = rest_json.predict_answer(outputs, rows[0])
        if not all(v.dtype.kind != "f" or np.isfinite(v).all() for v in outputs.values()):
            answer = _NonFinite(answer)
        return answer


def _parsed_json(body):
    """The JSON of a request body: orjson's fast reading, else the standard reader's, which
    also takes what TF Serving's takes beyond strict JSON (NaN, Infinity) and names where a
    malformed body goes wrong."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"malformed JSON: {exc}") from None


class _NonFinite(dict):
    """An answer holding NaN or Infinity, which only the standard writer writes as TF
    Serving does (orjson would write null)."""


def _dumps(answer):
    if isinstance(answer, _NonFinite):
        return json.dumps(answer).encode()
    try:
        return orjson.dumps(answer)
    except TypeError:  # an integer beyond 64 bits: the standard writer takes any
        return json.dumps(answer).encode()


def _error(status, message):
    return status, "application/json", json.dumps({"error": message}).encode()


class RestServer:
    """The REST front on `port` (0: any free port), on the front loop."""

    def __init__(self, core, front, port, host="0.0.0.0"):
        self.http = HttpServer(RestApi(core, front), front, host, port)
        self.port = self.http.port

    def start(self):
        self.http.start()

    def stop(self):
        self.http.stop()
