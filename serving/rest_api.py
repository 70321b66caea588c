"""The REST front, TF Serving's API on a threaded http.server: a thin translation of JSON to
the ServerCore's calls.

    POST /v1/models/NAME[/versions/N|/labels/L]:predict   {"instances": ...} | {"inputs": ...}
    GET  /v1/models/NAME[/versions/N|/labels/L]           the versions' states
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata  the signatures
    GET  /monitoring/prometheus/metrics                   Prometheus metrics

An error is answered `{"error": "..."}` with its HTTP status; the server keeps serving.
"""

import http.server
import json
import logging
import re
import threading

from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST

from psflow.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from psflow.proto.tfserving import get_model_metadata_pb2, model_pb2
from psflow.serving import rest_json
from psflow.serving.error_mapping import grpc_code_of, http_status_of
from psflow.serving.prediction_servicer import SIGNATURE_DEF, metadata_response, status_response
from psflow.serving.request_metrics import metrics_text

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 << 20
METRICS_PATH = "/monitoring/prometheus/metrics"
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?P<verb>:[a-zA-Z]+|/metadata)?/?$")


class BodyTooLarge(ResourceExhaustedError):
    """A request body over MAX_BODY_BYTES: 413."""


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


class RestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "psflow-serve"
    core = None  # set on the class the server makes

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method):
        if method == "GET" and self.path.split("?", 1)[0] == METRICS_PATH:
            data = metrics_text(self.core)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        try:
            with self.core.request():
                body = self._read_body() if method == "POST" else None
                match = _PATH.match(self.path.split("?", 1)[0])
                if match is None:
                    raise NotFoundError(f"no such resource: {method} {self.path}")
                self._answer(200, self._dispatch(method, match, body))
        except Exception as exc:  # every failure becomes an error answer, never a dead server
            status = 413 if isinstance(exc, BodyTooLarge) else http_status_of(exc)
            if status == 500:
                log.exception("%s %s failed", method, self.path)
            message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
            self._answer(status, {"error": message or grpc_code_of(exc).name})

    def _read_body(self):
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise InvalidArgumentError("a POST needs a Content-Length") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise BodyTooLarge(f"the request body of {length} bytes is over the "
                                         f"limit of {MAX_BODY_BYTES}")
        data = self.rfile.read(length)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"malformed JSON: {exc}") from None

    def _dispatch(self, method, match, body):
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
            return self._predict(spec, body)
        if verb in (":classify", ":regress"):
            raise InvalidArgumentError(f"{verb[1:]} is not served; use :predict")
        raise NotFoundError(f"no such resource: {method} {self.path}")

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
        return rest_json.predict_answer(outputs, rows[0])

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._answer(405, {"error": f"method PUT is not allowed on {self.path}"})

    do_DELETE = do_PATCH = do_PUT


class RestServer:
    """The REST front on `port` (0: any free port), serving in a thread."""

    def __init__(self, core, port, host="0.0.0.0"):
        handler = type("BoundRestHandler", (RestHandler,), {"core": core})
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        # A short poll interval so that stopping does not wait half a second.
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        name="rest", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
