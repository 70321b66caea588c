"""The bench's workloads in a PyTorch RPC parameter server, the pattern of PyTorch's own
parameter-server tutorial: the PS processes own the parameters (spread over them by size);
each worker fetches them, computes the loss and its gradients with autograd, and sends the
gradients back, which each PS applies (SGD) under a lock. Asynchronous only. Same model,
data, batch, steps and throughput measure as bench/cluster_model.py: the chief reads the PS's
global step.

    python bench/peers/torch_rpc.py --model mlp --workers 2 --ps 1    # runs a job
"""

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

_ps = None  # the ParameterServer, in the PS process


class ParameterServer:
    """The parameters of `placed` (their indices in the model's list: w0, b0, w1, b1, ...)."""

    def __init__(self, sizes, placed):
        import numpy as np
        import torch
        self.params = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            limit = (6.0 / (fan_in + fan_out)) ** 0.5
            rng = np.random.default_rng(i)
            if 2 * i in placed:
                self.params[2 * i] = torch.from_numpy(
                    rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
            if 2 * i + 1 in placed:
                self.params[2 * i + 1] = torch.zeros(fan_out)
        self.lock = threading.Lock()
        self.global_step = 0
        self.running = 0


def placement(sizes, num_ps):
    """[indices] per PS: the largest parameters first, each to the PS holding the fewest
    bytes so far (psflow's placement balances bytes alike)."""
    shapes = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        shapes += [fan_in * fan_out, fan_out]
    load, placed = [0] * num_ps, [[] for _ in range(num_ps)]
    for i in sorted(range(len(shapes)), key=lambda i: -shapes[i]):
        ps = load.index(min(load))
        placed[ps].append(i)
        load[ps] += shapes[i]
    return [sorted(p) for p in placed]


def create(model, placed):
    global _ps
    _ps = ParameterServer(common.MODELS[model], set(placed))


def pull():
    with _ps.lock:
        return {i: p.clone() for i, p in _ps.params.items()}


def push(grads, count_step):
    with _ps.lock:
        for i, g in grads.items():
            _ps.params[i].sub_(g, alpha=common.LEARNING_RATE)
        if count_step:
            _ps.global_step += 1
        return _ps.global_step


def mark_running():
    with _ps.lock:
        _ps.running += 1


def state():
    with _ps.lock:
        return _ps.global_step, _ps.running


def worker_loop(index, workers, num_ps, model):
    import torch
    import torch.distributed.rpc as rpc
    import torch.nn.functional as F
    torch.set_num_threads(1)
    servers = [f"ps{j}" for j in range(num_ps)]
    if index == 0:
        for name, placed in zip(servers, placement(common.MODELS[model], num_ps), strict=True):
            rpc.rpc_sync(name, create, args=(model, placed))
        rpc.rpc_sync("ps0", mark_running)
    else:
        while True:  # the chief creates the parameters
            try:
                if rpc.rpc_sync("ps0", state)[1] >= 1:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        rpc.rpc_sync("ps0", mark_running)
    steps, warmup = common.STEPS[model]
    features, targets = common.data(index, workers)
    start = None
    for batch_x, batch_y in common.batches(features, targets):
        params = {}
        for future in [rpc.rpc_async(name, pull) for name in servers]:
            params.update(future.wait())
        params = [params[i].requires_grad_() for i in range(len(params))]
        h = torch.from_numpy(batch_x)
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i < len(params) - 2:
                h = F.relu(h)
        loss = F.cross_entropy(h, torch.from_numpy(batch_y))
        grads = [g.detach() for g in torch.autograd.grad(loss, params)]
        placed = placement(common.MODELS[model], num_ps)
        futures = [rpc.rpc_async(name, push, args=({i: grads[i] for i in mine}, j == 0))
                   for j, (name, mine) in enumerate(zip(servers, placed, strict=True))]
        global_step = [f.wait() for f in futures][0]
        if index == 0:
            if start is None and global_step >= warmup and \
                    rpc.rpc_sync("ps0", state)[1] >= workers:
                start = (time.perf_counter(), global_step)
            if start is not None and global_step >= steps - 1:
                seconds = time.perf_counter() - start[0]
                print(common.throughput_line(global_step - start[1], seconds, 1), flush=True)
                return
        elif global_step >= steps:
            return


def task(args):
    import torch
    import torch.distributed.rpc as rpc
    torch.set_num_threads(1)
    options = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{args.port}",
                                              num_worker_threads=8, rpc_timeout=600)
    name = f"{args.role}{args.index}"
    rank = args.index if args.role == "ps" else args.ps + args.index
    rpc.init_rpc(name, rank=rank, world_size=args.workers + args.ps,
                 rpc_backend_options=options)
    if args.role == "worker":
        worker_loop(args.index, args.workers, args.ps, args.model)
    rpc.shutdown()


def job(model, workers=2, ps=1):
    port = common.free_ports(1)[0]
    commands = []
    for role, count in (("ps", ps), ("worker", workers)):
        for i in range(count):
            commands.append((f"{role}{i}", [common.python(), __file__, "--task", role,
                                             "--index", str(i), "--port", str(port),
                                             "--workers", str(workers), "--ps", str(ps),
                                             "--model", model], {}))
    return common.run(commands)


def main():
    parser = common.task_parser()
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.role:
        task(args)
    else:
        print(f"throughput: {job(args.model, args.workers, args.ps):.1f} examples/s")


if __name__ == "__main__":
    main()
