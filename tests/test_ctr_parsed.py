"""bench/ctr_parsed.py: examples/ctr.py's model fed batches parsed before the clock trains as
examples/ctr.py does on the same lines in the same order."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.cluster
@pytest.mark.parametrize("table", ["buckets", "dynamic"])
def test_parsed_batches_train_as_the_example_does_in_one_process(tmp_path, table):
    path = tmp_path / "clicks.tsv"
    run(ROOT / "examples" / "make_ctr_data.py", path, "--rows", 20000, "--seed", 3)
    args = ("--data", path, "--steps", 100, "--table", table)
    figures = []
    for script in (ROOT / "examples" / "ctr.py", ROOT / "bench" / "ctr_parsed.py"):
        out = run(script, *args)
        assert float(re.search(r"throughput: ([0-9.]+) examples/s", out).group(1)) > 0
        found = re.search(r"test auc: ([0-9.]+)  logloss: ([0-9.]+)  \(2000 held-out rows\)",
                          out)
        assert found, out[-3000:]
        figures.append((float(found.group(1)), float(found.group(2))))
    (auc, logloss), (parsed_auc, parsed_logloss) = figures
    assert auc > 0.65
    assert abs(parsed_auc - auc) < 1e-3 and abs(parsed_logloss - logloss) < 1e-3
