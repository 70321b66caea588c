"""The gRPC front: TensorFlow Serving's PredictionService (Predict, GetModelMetadata) and
ModelService (GetModelStatus), each a thin translation of messages to the ServerCore's calls.
A failure is answered with its status code and message; the server keeps serving."""

import logging

import grpc
from google.protobuf.message import DecodeError

from psflow.errors import InvalidArgumentError
from psflow.proto.tfserving import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    meta_graph_pb2,
    predict_pb2,
)
from psflow.serving import tensor_proto
from psflow.serving.error_mapping import grpc_code_of

log = logging.getLogger(__name__)

SIGNATURE_DEF = "signature_def"
_STATES = get_model_status_pb2.ModelVersionStatus.State


def version_choice(spec):
    """(version, label) a ModelSpec names; (None, None) for the latest."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def _parsed(message_class, data):
    try:
        return message_class.FromString(data)
    except DecodeError as exc:
        raise InvalidArgumentError(f"malformed {message_class.__name__}: {exc}") from None


def _handler(core, front, method, request_class, response_class):
    """A gRPC handler on the front loop that parses the request itself, so a malformed
    message is answered INVALID_ARGUMENT (gRPC's own parsing would answer INTERNAL), and that
    turns any error into its status code and message. A small request to a quick model is
    answered in the loop, any other in the worker pool (front_loop.py)."""
    predicts = request_class is predict_pb2.PredictRequest
    batched = getattr(method.__self__, "predict_async", None) if predicts else None

    def answer(request):
        with core.request():
            return method(request, None)

    async def handle(data, context):
        try:
            request = _parsed(request_class, data)
            if predicts and front.batching:  # waits for its batch in the loop, no thread held
                with core.request():
                    return await batched(request, core.quick(request.model_spec.name))
            if not predicts or (front.runs_inline(len(data)) and
                                core.quick(request.model_spec.name)):
                return answer(request)
            return await front.offload(answer, request)
        except Exception as exc:  # every failure becomes a status, never a dead server
            code = grpc_code_of(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method.__name__)
            message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
        await context.abort(code, message)
    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=None, response_serializer=response_class.SerializeToString)


def tensor_info_proto(info):
    """A TensorInfo message from a Signature's TensorInfo (unknown sizes as -1)."""
    message = meta_graph_pb2.TensorInfo(name=info.name)
    try:
        message.dtype = tensor_proto.datatype_of(info.dtype)
    except InvalidArgumentError:
        pass  # DT_INVALID: a dtype TensorFlow has no name for
    if info.shape is None:
        message.tensor_shape.unknown_rank = True
    else:
        for size in info.shape:
            message.tensor_shape.dim.add(size=-1 if size is None else size)
    return message


def signature_def_map(signatures):
    """A SignatureDefMap of {name: Signature}."""
    message = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in signatures.items():
        entry = message.signature_def[name]
        entry.method_name = signature.method_name
        for key, info in signature.inputs.items():
            entry.inputs[key].CopyFrom(tensor_info_proto(info))
        for key, info in signature.outputs.items():
            entry.outputs[key].CopyFrom(tensor_info_proto(info))
    return message


def metadata_response(core, spec, fields=()):
    """GetModelMetadataResponse for a ModelSpec (the REST front answers it as JSON too)."""
    unknown = sorted(set(fields) - {SIGNATURE_DEF})
    if unknown:
        raise InvalidArgumentError(f"metadata_field {unknown} is not supported; only "
                                   f"'{SIGNATURE_DEF}' is")
    version, label = version_choice(spec)
    served, signatures = core.metadata(spec.name, version, label)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = spec.name
    response.model_spec.version.value = served
    response.metadata[SIGNATURE_DEF].Pack(signature_def_map(signatures))
    return response


def status_response(core, spec):
    """GetModelStatusResponse for a ModelSpec."""
    version, label = version_choice(spec)
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in core.status(spec.name, version, label):
        entry = response.model_version_status.add(version=status.version,
                                                  state=_STATES.Value(status.state))
        entry.status.error_code = status.error_code
        entry.status.error_message = status.error_message
    return response


def _predict_arguments(request):
    """ServerCore.predict's arguments for a PredictRequest."""
    spec = request.model_spec
    version, label = version_choice(spec)
    inputs = {key: tensor_proto.to_numpy(value, key) for key, value in request.inputs.items()}
    return (spec.name, inputs, version, label, spec.signature_name,
            tuple(request.output_filter))


class PredictionServicer:
    """tensorflow.serving.PredictionService."""

    def __init__(self, core):
        self.core = core

    def Predict(self, request, context):
        return self._response(request, self.core.predict(*_predict_arguments(request)))

    async def predict_async(self, request, in_loop=False):
        """Predict on the front loop, for batching predictors (ServerCore.predict_async)."""
        return self._response(request, await self.core.predict_async(
            *_predict_arguments(request), in_loop=in_loop))

    @staticmethod
    def _response(request, answer):
        served, signature, outputs = answer
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = served
        response.model_spec.signature_name = signature
        for key, value in outputs.items():
            tensor_proto.from_numpy(value, response.outputs[key])
        return response

    def GetModelMetadata(self, request, context):
        return metadata_response(self.core, request.model_spec, request.metadata_field)


class ModelServicer:
    """tensorflow.serving.ModelService."""

    def __init__(self, core):
        self.core = core

    def GetModelStatus(self, request, context):
        return status_response(self.core, request.model_spec)


def generic_handlers(core, front):
    """The two services' handlers for grpc.aio.Server.add_generic_rpc_handlers, answering on
    `front` (a FrontLoop)."""
    prediction, model = PredictionServicer(core), ModelServicer(core)
    return [
        grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "Predict": _handler(core, front, prediction.Predict, predict_pb2.PredictRequest,
                                predict_pb2.PredictResponse),
            "GetModelMetadata": _handler(core, front, prediction.GetModelMetadata,
                                         get_model_metadata_pb2.GetModelMetadataRequest,
                                         get_model_metadata_pb2.GetModelMetadataResponse),
        }),
        grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {
            "GetModelStatus": _handler(core, front, model.GetModelStatus,
                                       get_model_status_pb2.GetModelStatusRequest,
                                       get_model_status_pb2.GetModelStatusResponse),
        }),
    ]
