"""psflow.worker: the worker runtime (PS client, variable placement, distributed session)."""
