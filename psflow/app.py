"""`tf.app`: TF1's flags (`tf.app.flags.DEFINE_*`, `tf.app.flags.FLAGS`) and `tf.app.run`,
on argparse. Flags are parsed from sys.argv when first read (or by run), accepting
`--name=value`, `--name value`, and for booleans `--name`, `--noname`, `--name=false`."""

import argparse
import sys
import types

from .train.cluster import task_config_from_env


def _boolean(text):
    lowered = str(text).lower()
    if lowered in ("1", "true", "t", "yes", "y"):
        return True
    if lowered in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean")


CLASSIC_FLAGS = ("ps_hosts", "worker_hosts", "job_name", "task_index")


class _FlagValues:
    """FLAGS: attribute access to the defined flags' values."""

    def __init__(self):
        object.__setattr__(self, "_defs", {})
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_parsed", False)

    def _define(self, name, default, help_text, parse):
        if name in self._defs:
            raise ValueError(f"flag --{name} is defined twice")
        self._defs[name] = (default, help_text, parse)
        self._values[name] = default

    def _parse(self, argv):
        """Sets the flags from `argv` (without the program name); returns the rest."""
        parser = argparse.ArgumentParser(add_help=True, allow_abbrev=False)
        for name, (default, help_text, parse) in self._defs.items():
            if parse is _boolean:
                parser.add_argument(f"--{name}", nargs="?", const=True, default=default,
                                    type=_boolean, help=help_text)
                parser.add_argument(f"--no{name}", dest=name, action="store_false")
            else:
                parser.add_argument(f"--{name}", default=default, type=parse, help=help_text)
        known, rest = parser.parse_known_args(argv)
        self._values.update(vars(known))
        self._classic_flags_from_tf_config(argv)
        object.__setattr__(self, "_parsed", True)
        return rest

    def _classic_flags_from_tf_config(self, argv):
        """TF1's distributed scripts take --ps_hosts, --worker_hosts, --job_name and
        --task_index. Those the command line does not give come from TF_CONFIG when it names
        a cluster, so the same script runs on Kubernetes (a "chief" counts as worker 0)."""
        given = {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}
        wanted = [name for name in CLASSIC_FLAGS if name in self._defs and name not in given]
        if not wanted:
            return
        try:
            task = task_config_from_env()
        except ValueError:
            return  # a malformed TF_CONFIG is for whatever reads it to report
        if task is None:
            return
        cluster = task.cluster
        workers = [address for job in ("chief", "worker") if job in cluster.jobs
                   for address in cluster.job_tasks(job)]
        is_ps = task.task_type == "ps"
        values = {"ps_hosts": ",".join(task.ps_addresses), "worker_hosts": ",".join(workers),
                  "job_name": "ps" if is_ps else "worker",
                  "task_index": str(task.task_index if is_ps else task.worker_index)}
        for name in wanted:
            self._values[name] = self._defs[name][2](values[name])

    def __call__(self, argv):
        return [argv[0]] + self._parse(list(argv[1:]))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._defs:
            raise AttributeError(f"no flag --{name} is defined (tf.app.flags.DEFINE_...)")
        if not self._parsed:
            self._parse(sys.argv[1:])
        return self._values[name]

    def __setattr__(self, name, value):
        if name not in self._defs:
            raise AttributeError(f"no flag --{name} is defined")
        self._values[name] = value

    def flag_values_dict(self):
        return dict(self._values)


FLAGS = _FlagValues()


def _list(text):
    return [item for item in str(text).split(",") if item]


def DEFINE_string(name, default, help=None):  # noqa: A002 (TF's argument name)
    FLAGS._define(name, default, help, str)


def DEFINE_integer(name, default, help=None, lower_bound=None, upper_bound=None):  # noqa: A002
    FLAGS._define(name, default, help, int)


def DEFINE_float(name, default, help=None, lower_bound=None, upper_bound=None):  # noqa: A002
    FLAGS._define(name, default, help, float)


def DEFINE_boolean(name, default, help=None):  # noqa: A002
    FLAGS._define(name, default, help, _boolean)


DEFINE_bool = DEFINE_boolean


def DEFINE_list(name, default, help=None):  # noqa: A002
    FLAGS._define(name, _list(default) if isinstance(default, str) else default, help, _list)


def DEFINE_enum(name, default, enum_values, help=None):  # noqa: A002
    def choice(text):
        if text not in enum_values:
            raise argparse.ArgumentTypeError(f"--{name} must be one of {enum_values}")
        return text
    FLAGS._define(name, default, help, choice)


flags = types.SimpleNamespace(
    FLAGS=FLAGS, DEFINE_string=DEFINE_string, DEFINE_integer=DEFINE_integer,
    DEFINE_float=DEFINE_float, DEFINE_boolean=DEFINE_boolean, DEFINE_bool=DEFINE_bool,
    DEFINE_list=DEFINE_list, DEFINE_enum=DEFINE_enum)


def run(main=None, argv=None):
    """Parses the flags, then calls main(argv) (the __main__ module's main by default) and
    exits with what it returns."""
    argv = list(sys.argv if argv is None else argv)
    rest = FLAGS(argv)
    if main is None:
        main = sys.modules["__main__"].main
    sys.exit(main(rest))
