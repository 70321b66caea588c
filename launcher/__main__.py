"""`python -m psflow.launcher` is the `launch` command."""

from .cli import main

main()
