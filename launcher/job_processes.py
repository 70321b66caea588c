"""Starting a local job's processes: the parameter servers first, each on a free port (or the
one asked for, when it is free), which it reports in a port file; then the workers, with a
`TF_CONFIG` built from those ports; and each again in place of one that failed."""

import os
import time

from psflow import settings
from .process import Child, describe_exit
from .resources import available_cores, free_ports, math_thread_env

POLL_S = 0.05


class JobProcesses:
    """Job's starts and restarts of its children; they use the job's `spec`, `output`,
    `watchdog`, `token`, `_tmp` (its folder), `_stop` and `chain_config` (the "psflow" key of
    the workers' TF_CONFIG, for shards run as chains), and fill `ps`, `workers`,
    `ps_addresses`, `metrics_ports`, `restarts`, `ps_restarts` and `_moved`."""

    def _child_env(self, role, index, threads, **extra):
        """The environment of child (`role`, `index`): the launcher's, with unbuffered output,
        `threads` math threads (unless the user chose), the job's token, the child's metrics
        port and `extra`."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(math_thread_env(threads))
        env[settings.AUTH_TOKEN.name] = self.token
        env.update(self._metrics_env(role, index))
        env.update(extra)
        return env

    def _metrics_env(self, role, index):
        port = self.metrics_ports.get((role, index))
        return {} if port is None else {settings.METRICS_PORT.name: str(port),
                                        settings.METRICS_HOST.name: self.spec.host}

    def _pick_metrics_ports(self):
        """Picks a free port for every process's /metrics and says where to scrape."""
        spec = self.spec
        shards = [i if spec.ps_replicas == 1 else f"{i}.{r}"
                  for i in range(spec.ps) for r in range(spec.ps_replicas)]
        roles = [("ps", s) for s in shards] + [("worker", i) for i in range(spec.workers)]
        ports = free_ports(spec.host, len(roles))
        self.metrics_ports = dict(zip(roles, ports, strict=False))
        self.output.launcher("metrics: " + ", ".join(
            f"{role}:{index} http://{spec.host}:{port}/metrics"
            for (role, index), port in self.metrics_ports.items()))

    def _start_ps(self):
        """Starts the parameter servers and waits for their ports; their addresses, or None
        after saying why the job cannot start."""
        spec = self.spec
        # The script's own ps tasks must know every address before they start.
        self._script_ps_ports = free_ports(spec.host, spec.ps, spec.ps_port) \
            if spec.script_ps else None
        port_files = [os.path.join(self._tmp, f"ps-{i}.port") for i in range(spec.ps)]
        for i in range(spec.ps):
            child = self._ps_child(i, spec.ps_port_of(i), port_files[i], fallback=True)
            self.ps.append(child)
            self.output.launcher(f"started {child.name} (pid {child.pid})")
        ports = self._wait_for_ports(self.ps, port_files,
                                     [spec.ps_port_of(i) for i in range(spec.ps)])
        return None if ports is None else [f"{spec.host}:{port}" for port in ports]

    def _wait_for_ports(self, children, port_files, wanted):
        """Waits (up to ps_start_timeout) for each child to write its port file; the ports,
        or None after saying why the job cannot start. `wanted`: the port each asked for (0:
        any), to say when it was taken."""
        spec = self.spec
        ports = [None] * len(children)
        deadline = time.monotonic() + spec.ps_start_timeout
        while None in ports:
            if self._stop.is_set():
                return None
            for i, child in enumerate(children):
                if ports[i] is not None:
                    continue
                try:
                    exited = not child.running
                    # Read after looking at the process: a PS may write the file and exit.
                    ports[i] = _read_port(port_files[i])
                except ValueError as exc:
                    self.output.error(f"{child.name}: {exc}; stopping the job")
                    return None
                if ports[i] is None and exited:
                    self.output.error(f"{child.name} {describe_exit(child.exit_code())} "
                                      "before reporting its port; stopping the job")
                    return None
                if ports[i] is not None:
                    note = f" (port {wanted[i]} was taken)" \
                        if wanted[i] and wanted[i] != ports[i] else ""
                    self.output.launcher(f"{child.name} serving on {spec.host}:{ports[i]}{note}")
            if None in ports and time.monotonic() > deadline:
                missing = ", ".join(children[i].name for i, p in enumerate(ports) if p is None)
                self.output.error(f"{missing} did not report a port within "
                                  f"{spec.ps_start_timeout:g} s; stopping the job")
                return None
            self._stop.wait(POLL_S)
        return ports

    def _ps_child(self, index, port, port_file, fallback=False, replica=None, extra=()):
        """Starts PS `index`: `python -m psflow.ps` (with the flags `extra`; as replica
        `replica` of shard `index`'s chain, named "ps 0.1", when given), or with script_ps the
        script itself as ps task `index` on the address chosen for it."""
        spec = self.spec
        if not spec.script_ps:
            command = [*spec.ps_command, "--task-index", str(index), "--num-workers",
                       str(spec.workers), "--host", spec.host, "--port", str(port),
                       "--port-file", port_file, "--checkpoint-root", spec.checkpoint_root,
                       "--parent-pid", str(os.getpid())] + (["--port-fallback"] if fallback
                                                            else []) + \
                (["--online"] if spec.online else []) + list(extra)
            label = index if replica is None else f"{index}.{replica}"
            return Child("ps", label, command, self._child_env("ps", label, 1), self.output,
                         self.watchdog)
        addresses = [f"{spec.host}:{p}" for p in self._script_ps_ports]
        env = self._child_env("ps", index, 1, **{
            settings.PS_PORT_FILE.name: port_file,
            settings.CHECKPOINT_ROOT.name: spec.checkpoint_root,
            "TF_CONFIG": spec.tf_config(addresses, "ps", index),
            settings.PARENT_PID.name: str(os.getpid())})
        command = spec.script_command(*spec.classic_flags(addresses, "ps", index))
        return Child("ps", index, command, env, self.output, self.watchdog)

    def _restart_ps(self, child):
        """Starts PS `child.index` again on the same address (the workers' TF_CONFIG names
        it); True once it serves there. The chief restores its variables from the latest
        checkpoint."""
        index = child.index
        self.ps_restarts[index] = self.ps_restarts.get(index, 0) + 1
        child.reap()
        port = int(self.ps_addresses[index].rsplit(":", 1)[1])
        port_file = os.path.join(self._tmp, f"ps-{index}.restart-{self.ps_restarts[index]}.port")
        fresh = self._ps_child(index, port, port_file)
        self.ps[index] = fresh
        self.output.launcher(f"started {fresh.name} (pid {fresh.pid}) on "
                             f"{self.ps_addresses[index]}, "
                             f"{self._restart_count(self.ps_restarts[index])}")
        deadline = time.monotonic() + self.spec.ps_start_timeout
        while time.monotonic() < deadline:
            try:
                if _read_port(port_file) == port:
                    return True
            except ValueError:
                return False
            if not fresh.running or self._stop.wait(POLL_S):
                return False
        return False

    def _start_workers(self):
        spec = self.spec
        threads = max(1, available_cores() // spec.workers)
        for i in range(spec.workers):
            flags = spec.classic_flags(self.ps_addresses, "worker", i) \
                if spec.tf_flags or spec.script_ps else []
            command = spec.script_command(*flags)
            env = self._child_env("worker", i, threads, **spec.consistency.to_env(),
                                  **spec.export_env(), **{
                "TF_CONFIG": spec.tf_config(self.ps_addresses, "worker", i,
                                            **self.chain_config),
                settings.PARENT_PID.name: str(os.getpid())})
            self._worker_start[i] = (command, env)
            child = Child("worker", i, command, env, self.output, self.watchdog)
            self._moved[i] = (None, time.monotonic())
            self.workers.append(child)
            self.output.launcher(f"started {child.name} (pid {child.pid})")

    def _restart_worker(self, child):
        """Starts worker `child.index` again in place of the one that failed."""
        index = child.index
        self.restarts[index] = self.restarts.get(index, 0) + 1
        child.reap()
        command, env = self._worker_start[index]
        fresh = Child("worker", index, command, env, self.output, self.watchdog)
        self._moved[index] = (None, time.monotonic())
        self.workers[index] = fresh
        self.output.launcher(f"started {fresh.name} (pid {fresh.pid}), "
                             f"{self._restart_count(self.restarts[index])}")

    def _restart_count(self, count):
        """"restart 2 of 3" (online jobs restart without bound: "restart 2")."""
        return f"restart {count}" if self.spec.online else \
            f"restart {count} of {self.spec.max_restarts}"


def _read_port(path):
    """The port in a PS's port file; None while there is no file. The PS writes the file
    atomically, so it is complete once it exists."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"its port file holds {text!r}, not a port number")
    return int(text)
