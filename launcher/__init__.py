"""psflow.launcher: the `launch` command and the local process supervisor."""
