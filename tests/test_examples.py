"""The example scripts, run as a user runs them, in one process."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster  # every test runs an example script end to end

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, *args):
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_seed_mlp_loss_falls_and_it_separates_the_clouds():
    out = run_example("seed_mlp.py")
    losses = [float(v) for v in re.findall(r"^step +\d+: loss ([0-9.]+)$", out, re.M)]
    assert len(losses) == 20  # every 100 of 2000 steps
    assert losses[-1] < losses[0] / 10
    assert float(re.search(r"training accuracy: ([0-9.]+)", out).group(1)) >= 0.99


@pytest.mark.parametrize("args,floor", [((), 0.95), (("--cnn", "--steps", 600), 0.95)],
                         ids=["mlp", "cnn"])
def test_digits_reaches_its_accuracy_locally(args, floor):
    out = run_example("digits.py", *args)
    assert float(re.search(r"test accuracy: ([0-9.]+)", out).group(1)) >= floor
