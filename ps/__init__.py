"""psflow.ps: the parameter-server process (variable store, shards, server-side optimizers)."""
