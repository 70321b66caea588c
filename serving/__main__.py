"""`python -m psflow.serving`: the psflow-serve command."""

import sys

from psflow.serving.cli import main

sys.exit(main())
