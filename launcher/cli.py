"""`launch`: run a psflow job as local processes.

    launch --workers N --ps M [--ps-replicas R] [--mode async|sync|ssp] [--staleness S]
           [--replicas-to-aggregate K] [--ps-port BASE] [--max-restarts K]
           [--grace-period SECONDS] [--no-progress] [--export-dir BASE]
           [--online [--stop-timeout SECONDS]] script.py [script args...]
    launch --status [ADDRESS[,ADDRESS...]] [--interval SECONDS] [--timeout SECONDS]

Everything after the script's path goes to the script, options that look like launch's
included. `python -m psflow.launcher` is the same command. Exit codes: 0 when every worker
succeeded, 1 when a process of the job failed, 2 on bad arguments, 128 + N after signal N
(130 for Ctrl-C). An --online job runs until stopped: SIGTERM or Ctrl-C stops it with a final
checkpoint, and the exit code is then 0 (see docs/online-training.md).
"""

import argparse
import logging
import os
import sys

from psflow import settings
from psflow.argparsing import OneLineParser, non_negative_seconds, port, seconds, whole_number
from psflow.fileio import default_checkpoint_roots
from psflow.train.consistency import MODES
from . import k8s, status
from .job import run_job
from .job_spec import JobSpec


def build_parser():
    parser = OneLineParser(
        prog="launch",
        description="Run a psflow training job on this machine: the parameter servers on "
                    "free loopback ports, then the workers, each running SCRIPT with its "
                    "TF_CONFIG. The job ends when every worker has finished (the parameter "
                    "servers then exit by themselves) or at the first failure, which stops "
                    "the rest.",
        epilog="launch --status [ADDRESS,...] shows a running job's shards and workers "
               "(launch --status --help).")
    job = parser.add_argument_group("job")
    job.add_argument("--workers", type=whole_number(1), required=True,
                     metavar="N", help="worker processes, each running the script")
    job.add_argument("--ps", type=whole_number(1), required=True, metavar="M",
                     help="parameter-server processes (shards of the variables)")
    job.add_argument("--ps-replicas", type=whole_number(1), default=1, metavar="R",
                     help="run each shard as a chain of R replicas under a chain master: a "
                          "replica that dies is replaced while training goes on, and the "
                          "workers move to the shard's next replica (in every --mode; see "
                          "docs/replication.md; default: 1)")
    job.add_argument("--mode", choices=MODES, default="async",
                     help="how the workers' gradients are applied: async (on arrival), sync "
                          "(averaged per step) or ssp (bounded staleness); a mode the script "
                          "sets with SyncReplicasOptimizer or BoundedStalenessOptimizer wins "
                          "(default: async)")
    job.add_argument("--staleness", type=whole_number(0), default=None,
                     metavar="S", help="ssp: steps a worker may run ahead of the slowest "
                                       "(default: 0, which is synchronous)")
    job.add_argument("--replicas-to-aggregate", type=whole_number(1),
                     default=None, metavar="K",
                     help="sync: gradients averaged per step; workers beyond K are backups "
                          "(default: every worker)")
    job.add_argument("--online", action="store_true",
                     help="online training on an unbounded stream: the parameter servers never "
                          "exit on their own, failed workers are restarted (with a backoff, "
                          "without bound), and SIGTERM or Ctrl-C stops the job with a final "
                          "checkpoint by the chief, exit code 0")
    job.add_argument("--tf-flags", action="store_true",
                     help="pass each worker TF1's classic flags: --ps_hosts, --worker_hosts, "
                          "--job_name=worker and --task_index=I (TF_CONFIG is set too)")
    job.add_argument("--script-ps", action="store_true",
                     help="run the script itself as the ps tasks, with --job_name=ps, for "
                          "scripts whose ps tasks call tf.train.Server(...).join(); implies "
                          "--tf-flags (default: psflow's own parameter servers)")
    network = parser.add_argument_group("network")
    network.add_argument("--ps-port", type=port, default=0, metavar="BASE",
                         help="PS i asks for port BASE+i and takes any free port if that one "
                              "is taken; 0 (the default) takes free ports")
    supervision = parser.add_argument_group("supervision")
    supervision.add_argument("--grace-period", type=seconds, default=5.0, metavar="SECONDS",
                             help="how long a process gets to stop after SIGTERM before it "
                                  "is killed (default: 5)")
    supervision.add_argument("--max-restarts", type=whole_number(0),
                             default=3, metavar="K",
                             help="restart a failed worker up to K times before giving up on "
                                  "it (default: 3)")
    supervision.add_argument("--timeout", type=non_negative_seconds, default=0,
                             metavar="SECONDS",
                             help="stop the job if it runs longer than this (default: 0, no "
                                  "bound)")
    supervision.add_argument("--idle-timeout", type=non_negative_seconds, default=None,
                             metavar="SECONDS",
                             help="stop the job when a running worker has made no step for "
                                  "this long, naming it and what it was doing (default: 600, "
                                  "0 with --online, where workers wait for data; 0: no bound)")
    supervision.add_argument("--stop-timeout", type=seconds, default=120.0, metavar="SECONDS",
                             help="--online: how long the workers get to end their step, and "
                                  "then the chief to write its final checkpoint, when the job "
                                  "is stopped (default: 120)")
    supervision.add_argument("--no-progress", action="store_true",
                             help="do not show the job's progress (step, steps/s, loss)")
    supervision.add_argument("--metrics", action="store_true",
                             help="every parameter server and worker serves Prometheus "
                                  "metrics on a free port, printed at the start")
    data = parser.add_argument_group("data")
    data.add_argument("--checkpoint-root", default=None, metavar="DIR",
                      help="the folder the parameter servers may write checkpoints in "
                           "(the script's checkpoint_dir must be inside it), or several "
                           f"separated by '{os.pathsep}' (default: the current directory and "
                           "the system's temporary folder, where scripts make train dirs "
                           "with tempfile.mkdtemp())")
    data.add_argument("--checkpoint-full-every", type=whole_number(0), default=None,
                      metavar="K", help="one checkpoint in K holds every row of the "
                      "embedding tables, the others only the rows changed or removed since "
                      "the previous one (default 10; 0 or 1: every checkpoint whole)")
    data.add_argument("--serving-replicas", type=whole_number(0), default=0, metavar="R",
                      help="a serving parameter tier: R psflow-params per parameter server, "
                           "following its shard while the job trains; the launcher prints the "
                           "psflow-serve --params_shard flags that read it")
    data.add_argument("--export-dir", default="", metavar="BASE",
                      help="the chief exports servables (psflow.saved_model) as BASE/1, "
                           "BASE/2, ... at the end of training, for psflow-serve "
                           "--model_base_path BASE; the script's MonitoredTrainingSession "
                           "names what they take and return with export_signature (with "
                           "--k8s, a path in the pods, e.g. under /checkpoints)")
    data.add_argument("--export-every-n-checkpoints", type=whole_number(1), default=0,
                      metavar="N", help="with --export-dir, also export every N checkpoints")
    kube = parser.add_argument_group(
        "kubernetes", "with --k8s, print (or write) the manifests that run this job on a "
                      "cluster instead of running it here")
    kube.add_argument("--k8s", action="store_true", help="generate Kubernetes manifests")
    kube.add_argument("--k8s-out", metavar="DIR", help="write one file per manifest to DIR")
    kube.add_argument("--k8s-flavor", choices=k8s.FLAVORS, default="jobs",
                      help="jobs: Indexed Jobs and a headless Service, no operator needed "
                           "(default); tfjob: a Kubeflow TFJob")
    kube.add_argument("--image", default="psflow:latest",
                      help="the image built from this directory's Dockerfile")
    kube.add_argument("--namespace", default="default")
    kube.add_argument("--name", default="psflow", help="the job's name (a DNS label)")
    kube.add_argument("--cpu", default="", help="CPU request of every pod, e.g. 1 or 500m")
    kube.add_argument("--memory", default="", help="memory request of every pod, e.g. 2Gi")
    kube.add_argument("--cpu-limit", default="", help="CPU limit of every pod")
    kube.add_argument("--memory-limit", default="", help="memory limit of every pod")
    kube.add_argument("--k8s-restart-policy", choices=("OnFailure", "Never"),
                      default="OnFailure",
                      help="OnFailure restarts a failed container in place (same address); "
                           "Never makes a new pod, bounded per index (default: OnFailure)")
    kube.add_argument("--checkpoint-pvc", default="", metavar="CLAIM",
                      help="a ReadWriteMany PersistentVolumeClaim mounted at /checkpoints in "
                           "every pod; checkpoint_dir defaults to it")
    kube.add_argument("--tls-secret", default="", metavar="SECRET",
                      help="a Secret with tls.crt, tls.key and ca.crt: the parameter servers "
                           "then serve TLS and the workers check it")
    kube.add_argument("--ttl", type=whole_number(0), default=3600, metavar="SECONDS",
                      help="remove the finished Jobs after this long (default: 3600)")
    parser.add_argument("script", help="the training script every worker runs")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, metavar="...",
                        help="arguments for the script")
    return parser


def parse_args(argv):
    """The JobSpec `argv` describes; exits 2 with a one-line error on bad input."""
    return _parse(argv)[0]


def _parse(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings.check()  # a bad PSFLOW_* variable stops here, before anything starts
    except settings.SettingError as exc:
        parser.error(str(exc))
    if args.staleness is not None and args.mode != "ssp":
        parser.error("--staleness applies to --mode ssp")
    if args.replicas_to_aggregate is not None and args.mode != "sync":
        parser.error("--replicas-to-aggregate applies to --mode sync")
    if args.online and args.script_ps:
        parser.error("--online runs psflow's own parameter servers; it does not go with "
                     "--script-ps")
    spec = JobSpec(script=args.script, script_args=list(args.script_args),
                   workers=args.workers, ps=args.ps, ps_replicas=args.ps_replicas,
                   mode=args.mode,
                   staleness=args.staleness or 0,
                   replicas_to_aggregate=args.replicas_to_aggregate or 0, ps_port=args.ps_port,
                   max_restarts=args.max_restarts, timeout=args.timeout,
                   idle_timeout=args.idle_timeout if args.idle_timeout is not None else
                   0 if args.online else 600,
                   online=args.online, stop_timeout=args.stop_timeout,
                   checkpoint_root=os.pathsep.join(
                       os.path.abspath(root) for root in
                       (args.checkpoint_root or default_checkpoint_roots()).split(os.pathsep)
                       if root),
                   grace_period=args.grace_period, progress=not args.no_progress,
                   tf_flags=args.tf_flags or args.script_ps, script_ps=args.script_ps,
                   metrics=args.metrics,
                   export_dir=args.export_dir if args.k8s or not args.export_dir
                   else os.path.abspath(args.export_dir),
                   export_every_n_checkpoints=args.export_every_n_checkpoints,
                   checkpoint_full_every=args.checkpoint_full_every,
                   serving_replicas=args.serving_replicas)
    try:
        spec.validate()  # what argparse cannot see: the script file, the port range's end
    except ValueError as exc:
        parser.error(str(exc))
    kube = None
    if args.k8s and args.serving_replicas:
        parser.error("on Kubernetes the serving tier comes with the serving manifests: "
                     "psflow-serve --k8s --follow=<the job's parameter servers> "
                     "--serving-replicas R")
    if args.k8s and args.export_dir and not args.export_dir.startswith("/"):
        parser.error(f"with --k8s, --export-dir is a path in the pods, absolute; got "
                     f"{args.export_dir!r}")
    if args.k8s:
        kube = k8s.K8sSpec(image=args.image, namespace=args.namespace, name=args.name,
                           flavor=args.k8s_flavor, cpu=args.cpu, memory=args.memory,
                           cpu_limit=args.cpu_limit, memory_limit=args.memory_limit,
                           restart_policy=args.k8s_restart_policy,
                           checkpoint_pvc=args.checkpoint_pvc, tls_secret=args.tls_secret,
                           ttl_seconds=args.ttl)
        try:
            kube.validate()
            documents = k8s.manifests(spec, kube, max_restarts=spec.max_restarts)
        except ValueError as exc:
            parser.error(str(exc))
        return spec, (documents, args.k8s_out)
    if args.k8s_out:
        parser.error("--k8s-out goes with --k8s")
    return spec, kube


def main(argv=None):
    """The `launch` command; returns its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    # The launcher's own calls to a shard follow its chain's new head without a word (the
    # workers and the launcher's supervision say it): no unprefixed lines from its clients.
    logging.getLogger("psflow.worker.client").addHandler(logging.NullHandler())
    if status.requested(argv):
        return status.main(argv)
    spec, kube = _parse(argv)
    if kube is not None:
        documents, out = kube
        if out:
            for path in k8s.write(documents, out):
                print(path)
        else:
            sys.stdout.write(k8s.to_yaml(documents))
        return 0
    return run_job(spec)
