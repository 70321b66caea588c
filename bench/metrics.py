"""What watching a job costs: the digits MLP (bench/cluster_model.py, 2 workers, 1 parameter
server, async) run as `launch` jobs with --metrics and a scraper reading every process's
/metrics once a second (Prometheus's default is every 15 s), alternating with the same job
without metrics. Prints each job's examples/s, the best of each, their ratio and how many
scrapes the watched jobs answered.

    python bench/metrics.py [--repeat 3] [--model mlp] [--scrape-every 1.0]
"""

import argparse
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from common import STEPS  # noqa: E402  (global steps, warm-up) per model

THROUGHPUT = re.compile(r"throughput: ([0-9.]+) examples/s")


def scrape_until(urls, done, every, counts):
    """Reads every URL each `every` seconds until `done` is set; counts the answers."""
    while not done.wait(every):
        for url in urls:
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    reply.read()
                counts[0] += 1
            except OSError:
                pass  # the process has finished


def run_job(model, metrics, every):
    """(examples/s, scrapes answered) of one job."""
    steps, warmup = STEPS[model]
    command = [sys.executable, "-m", "psflow.launcher", "--no-progress", "--workers", "2",
               "--ps", "1", *(["--metrics"] if metrics else []), str(HERE / "cluster_model.py"),
               "--model", model, "--steps", str(steps), "--warmup", str(warmup)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    done, counts, scraper, lines = threading.Event(), [0], None, []
    for line in process.stdout:
        lines.append(line)
        urls = re.findall(r"http://\S+/metrics", line)
        if metrics and urls and scraper is None:
            scraper = threading.Thread(target=scrape_until, args=(urls, done, every, counts))
            scraper.start()
    process.wait()
    done.set()
    if scraper is not None:
        scraper.join()
    match = THROUGHPUT.search("".join(lines))
    if process.returncode != 0 or not match:
        raise SystemExit(f"job failed ({' '.join(command)}):\n{''.join(lines)[-3000:]}")
    return float(match.group(1)), counts[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="jobs of each kind; the best "
                                                              "counts")
    parser.add_argument("--model", default="mlp", choices=sorted(STEPS))
    parser.add_argument("--scrape-every", type=float, default=1.0, metavar="SECONDS")
    args = parser.parse_args()
    off, on, scrapes = [], [], 0
    for round_ in range(args.repeat):
        off.append(run_job(args.model, False, args.scrape_every)[0])
        rate, answered = run_job(args.model, True, args.scrape_every)
        on.append(rate)
        scrapes += answered
        print(f"round {round_ + 1}: metrics off {off[-1]:,.0f} examples/s, on {on[-1]:,.0f} "
              f"({answered} scrapes)", flush=True)
    print(f"{args.model} 2x1 async, best of {args.repeat}: metrics off {max(off):,.0f} "
          f"examples/s, metrics on and scraped every {args.scrape_every:g} s {max(on):,.0f} "
          f"-> {max(on) / max(off):.3f}x ({scrapes} scrapes answered)")


if __name__ == "__main__":
    main()
