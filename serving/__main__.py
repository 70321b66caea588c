"""`psflow-serve` (`python -m psflow.serving`): serves exported models over TensorFlow
Serving's gRPC and REST APIs, with tensorflow_model_server's flags.

    psflow-serve --port=8500 --rest_api_port=8501 --model_name=ctr --model_base_path=/models/ctr
    psflow-serve --port=8500 --model_config_file=/models/models.config
    psflow-serve --model_name=ctr --model_base_path=/models/ctr --follow=ps0:2222,ps1:2222
    psflow-serve --model_name=ctr --model_base_path=/models/ctr \
        --params_shard=params-0-0:2300,params-0-1:2300 --params_shard=params-1-0:2300,...
    psflow-serve --k8s --image=IMAGE --model_name=ctr --model_base_path=/checkpoints/export \
        --pvc=CLAIM      # prints the Kubernetes manifests that serve it instead

SIGTERM (or Ctrl-C) refuses new requests, finishes those in flight and exits 0.
"""

import argparse
import logging
import signal
import sys
import threading

from threadpoolctl import threadpool_limits

from psflow.errors import InvalidArgumentError
from psflow.serving import k8s_manifests
from psflow.serving.batching_config import BatchingOptions, read_batching_parameters
from psflow.serving.live_params import live_load_fn
from psflow.serving.model_config import ModelSettings, read_model_config
from psflow.serving.model_server import ModelServer
from psflow.serving.version_loader import (
    LOAD_RETRY_INTERVAL_SECONDS,
    MAX_NUM_LOAD_RETRIES,
    load_predictor,
)
from psflow.transport import auth

log = logging.getLogger("psflow.serving")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="psflow-serve",
        description="Serve psflow exports over TensorFlow Serving's gRPC and REST APIs.")
    parser.add_argument("--port", type=int, default=8500,
                        help="gRPC port (PredictionService, ModelService, grpc.health.v1); "
                             "0 takes a free port")
    parser.add_argument("--rest_api_port", type=int, default=0,
                        help="REST port; 0 (the default) serves no REST API")
    parser.add_argument("--model_name", default="default",
                        help="the model's name, with --model_base_path")
    parser.add_argument("--model_base_path", default="",
                        help="the folder holding the model's numbered versions (BASE/1, ...)")
    parser.add_argument("--model_config_file", default="",
                        help="models in ModelServerConfig text format (model_config_list); "
                             "instead of --model_name/--model_base_path")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="seconds between looks at the base paths for new versions; "
                             "0 looks once")
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0,
                        help="seconds between re-reads of --model_config_file, whose models "
                             "are applied without a restart; 0 (the default) reads it once")
    parser.add_argument("--traffic_split_file", default="",
                        help="YAML model -> {version label: weight}: requests naming no "
                             "version are split by weight between the labels' versions; "
                             "re-read when it changes")
    parser.add_argument("--max_num_load_retries", type=int, default=MAX_NUM_LOAD_RETRIES,
                        help="how many times a version that failed to load is tried again "
                             f"(default: {MAX_NUM_LOAD_RETRIES})")
    parser.add_argument("--load_retry_interval_micros", type=int,
                        default=int(LOAD_RETRY_INTERVAL_SECONDS * 1e6),
                        help="microseconds between tries at loading a version (default: "
                             f"{LOAD_RETRY_INTERVAL_SECONDS:g} s)")
    parser.add_argument("--shutdown_grace_seconds", type=float, default=30.0,
                        help="how long SIGTERM waits for requests in flight")
    parser.add_argument("--enable_batching", action="store_true",
                        help="batch concurrent requests to a model version")
    parser.add_argument("--batching_parameters_file", default="",
                        help="BatchingParameters in text format (max_batch_size, "
                             "batch_timeout_micros, ...); TF Serving's defaults without it")
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=1,
                        help="threads one op (a matrix product) may use; requests run side by "
                             "side, so 1 (the default) keeps them from fighting over the cores")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    live = parser.add_argument_group(
        "live parameters", "serve the rows and variables a training job is changing now, "
        "instead of those frozen in the export")
    live.add_argument("--follow", default="", metavar="HOST:PORT,...",
                      help="the training job's parameter servers, in shard order: keep a "
                           "copy of every shard here, updated as the job trains")
    live.add_argument("--params_shard", action="append", default=[], metavar="HOST:PORT,...",
                      help="the replicas of one shard of the serving parameter tier "
                           "(psflow-params); once per shard, in shard order: rows are read "
                           "from it at each request")
    live.add_argument("--params_deadline_ms", type=float, default=100.0,
                      help="how long a request's row lookup may take, replicas retried "
                           "included")
    live.add_argument("--params_cache_ttl_ms", type=float, default=250.0,
                      help="how long a row read from the tier is kept for other requests; "
                           "0 keeps none")
    live.add_argument("--params_cache_rows", type=int, default=100_000,
                      help="rows kept per table at most")
    live.add_argument("--dense_poll_seconds", type=float, default=1.0,
                      help="how often variables are read again from the tier")
    k8s_manifests.add_arguments(parser)
    return parser


def models_of(args):
    """[ModelSettings] the flags name; InvalidArgumentError for a wrong combination."""
    if args.model_config_file:
        if args.model_base_path:
            raise InvalidArgumentError("give either --model_config_file or --model_base_path")
        return read_model_config(args.model_config_file)
    if not args.model_base_path:
        raise InvalidArgumentError("give --model_base_path (or --model_config_file)")
    return [ModelSettings(args.model_name, args.model_base_path)]


def load_retries_of(args):
    """(max_num_load_retries, retry interval in seconds) of the flags."""
    if args.max_num_load_retries < 0:
        raise InvalidArgumentError(f"--max_num_load_retries must be at least 0, got "
                                   f"{args.max_num_load_retries}")
    if args.load_retry_interval_micros < 0:
        raise InvalidArgumentError(f"--load_retry_interval_micros must be at least 0, got "
                                   f"{args.load_retry_interval_micros}")
    return args.max_num_load_retries, args.load_retry_interval_micros / 1e6


def batching_of(args):
    """BatchingOptions of --enable_batching (None without it)."""
    if not args.enable_batching:
        if args.batching_parameters_file:
            raise InvalidArgumentError("--batching_parameters_file goes with --enable_batching")
        return None
    if args.batching_parameters_file:
        return read_batching_parameters(args.batching_parameters_file)
    return BatchingOptions()


def follower_of(args):
    """What the served versions read their parameters from (--follow or --params_shard), or
    None: the values frozen in each export."""
    if args.follow and args.params_shard:
        raise InvalidArgumentError("give either --follow or --params_shard")
    # the job's token: PSFLOW_AUTH_TOKEN, else that of the job `launch` runs here on them
    addresses = [a for a in args.follow.split(",") if a] + [
        a for shard in args.params_shard for a in shard.split(",") if a]
    token = auth.token_from_env() or auth.local_job_token(addresses) or ""
    if args.follow:
        from psflow.serving.param_follower import JobFollower
        return JobFollower([a for a in args.follow.split(",") if a], token=token)
    if args.params_shard:
        from psflow.serving.remote_params import RemoteParams
        for name, value in (("--params_deadline_ms", args.params_deadline_ms),
                            ("--params_cache_ttl_ms", args.params_cache_ttl_ms),
                            ("--params_cache_rows", args.params_cache_rows)):
            if value < 0:
                raise InvalidArgumentError(f"{name} must be at least 0, got {value}")
        return RemoteParams([[a for a in shard.split(",") if a] for shard in args.params_shard],
                            token=token, deadline=args.params_deadline_ms / 1e3,
                            cache_rows=args.params_cache_rows,
                            cache_ttl=args.params_cache_ttl_ms / 1e3,
                            dense_period=args.dense_poll_seconds)
    return None


def main(argv=None, load_fn=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        retries, interval = load_retries_of(args)
        if args.k8s:
            return k8s_manifests.main(args)
        models = models_of(args)
        batching = batching_of(args)
        follower = follower_of(args)
        if follower is not None:
            load_fn = live_load_fn(load_fn or load_predictor, follower)
        server = ModelServer(models, args.port,
                             args.rest_api_port if args.rest_api_port > 0 else None,
                             args.file_system_poll_wait_seconds, load_fn=load_fn,
                             traffic_split_file=args.traffic_split_file or None,
                             model_config_file=args.model_config_file or None,
                             config_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
                             batching=batching)
        # Before start(): every model's manager reads them from the one loader.
        server.loader.max_num_load_retries = retries
        server.loader.load_retry_interval_seconds = interval
    except (InvalidArgumentError, RuntimeError, OSError) as exc:
        print(f"psflow-serve: {exc}", file=sys.stderr)
        return 2
    if args.tensorflow_intra_op_parallelism > 0:
        threadpool_limits(args.tensorflow_intra_op_parallelism)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(f"psflow-serve: gRPC on port {server.grpc_port}"
          + (f", REST on port {server.rest_api_port}" if server.rest_api_port else ""),
          file=sys.stderr, flush=True)
    while not stop.wait(3600):
        pass
    log.info("stopping: finishing the requests in flight")
    server.stop(args.shutdown_grace_seconds)
    if follower is not None:
        follower.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
