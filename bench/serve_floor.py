"""The transport floor of bench/serve.py: a bare Python gRPC server on the Predict method's
path that answers every call with the same response bytes, without reading the request or
doing any work. What psflow-serve adds on top of gRPC is measured against it.

    python bench/serve_floor.py --port 0 --response FILE [--aio]

It prints `port N` once it listens. Without --aio it is grpc.server over a thread pool (the
server kind psflow-serve runs); with --aio, grpc.aio's server on one event loop.
"""

import argparse
import asyncio
from concurrent import futures

import grpc

SERVICE, METHOD = "tensorflow.serving.PredictionService", "Predict"


def handlers(response, aio=False):
    def answer(request, context):
        return response

    async def answer_async(request, context):
        return response
    return grpc.method_handlers_generic_handler(SERVICE, {
        METHOD: grpc.unary_unary_rpc_method_handler(answer_async if aio else answer)})


def serve_threads(port, response, threads):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers((handlers(response),))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"port {port}", flush=True)
    server.wait_for_termination()


async def serve_aio(port, response):
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers(response, aio=True),))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--response", required=True, help="a file of the response's bytes")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--aio", action="store_true")
    args = parser.parse_args()
    with open(args.response, "rb") as f:
        response = f.read()
    if args.aio:
        asyncio.run(serve_aio(args.port, response))
    else:
        serve_threads(args.port, response, args.threads)


if __name__ == "__main__":
    main()
