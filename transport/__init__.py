"""psflow.transport: how the wire's bytes move between processes: gRPC channels with the job's
token and TLS, and the same-host lane (a Unix socket and shared memory)."""
