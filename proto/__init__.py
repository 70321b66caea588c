"""psflow.proto: the wire contract between workers and parameter servers."""
