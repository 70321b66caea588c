"""psflow.launcher: the `launch` command, the supervision of a local job's processes and the
Kubernetes manifests."""
