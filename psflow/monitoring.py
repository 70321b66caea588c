"""Serving a process's Prometheus metrics on `/metrics` (prometheus_client's own server).

Parameter servers and workers each hand `serve` a collector that reads their counters when
Prometheus scrapes, so training pays nothing per step for being watched. The port comes from
`--metrics-port` or PSFLOW_METRICS_PORT (0 picks a free one); a port already taken is logged
and replaced by a free one, since a job must not fail for the sake of its metrics.
"""

import errno
import logging
import math

from . import settings

log = logging.getLogger(__name__)

PORT_ENV = settings.METRICS_PORT.name
HOST_ENV = settings.METRICS_HOST.name


def port_from_env(environ=None):
    """The metrics port PSFLOW_METRICS_PORT asks for, or None when it is unset or empty.
    SettingError (a ValueError) naming the variable when it is not a port number."""
    return settings.METRICS_PORT.get(environ)


def bucket_bound(upper):
    """A histogram bucket's `le` label for upper bound `upper`."""
    return "+Inf" if math.isinf(upper) else repr(float(upper))


def cumulative(counts, bounds):
    """[(le, cumulative count)] of a histogram's per-bucket `counts` with upper `bounds` (the
    last infinite), as prometheus_client's HistogramMetricFamily takes them."""
    total, out = 0, []
    for count, upper in zip(counts, bounds, strict=False):
        total += count
        out.append((bucket_bound(upper), total))
    return out


def serve(collector, port, host="127.0.0.1", what="metrics"):
    """Serves `collector` (a prometheus_client collector) on http://host:port/metrics in a
    daemon thread; returns (the HTTP server, the port it listens on). Call
    `server.shutdown()` to stop it."""
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)  # the process's CPU seconds and resident memory
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if port == 0 or exc.errno != errno.EADDRINUSE:
            raise OSError(exc.errno, f"cannot serve {what} on {host}:{port}: "
                                     f"{exc.strerror or exc}") from exc
        server, _ = start_http_server(0, addr=host, registry=registry)
        log.warning("%s port %d on %s is taken; serving on port %d instead", what, port, host,
                    server.server_port)
    bound = server.server_port
    log.info("serving %s on http://%s:%d/metrics", what, host, bound)
    return server, bound
