"""What a local job takes from the machine: free ports, and the cores its children share."""

import os
import socket

MATH_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def free_ports(host, count, base=0):
    """`count` ports free on `host` now: base, base+1, ... where free (when base is given),
    else ports the system picks."""
    ports = []
    for i in range(count):
        for wanted in ((base + i, 0) if base else (0,)):
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
                try:
                    sock.bind((host, wanted))
                except OSError:
                    continue
                port = sock.getsockname()[1]
                if port not in ports:
                    ports.append(port)
                    break
    return ports


def port_in(path):
    """The port a child wrote to the file `path`; None while it has not (or not whole)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def math_thread_env(threads):
    """Caps the BLAS/OpenMP threads of a child at `threads`, unless the user chose a number.
    Every worker's numpy would otherwise start one spinning BLAS thread per core, and N
    workers on C cores fight over them: on 2 cores, 2 workers run several times slower."""
    return {name: str(threads) for name in MATH_THREAD_VARIABLES if name not in os.environ}
