"""Writes tests/tf1_scripts/tf1_api_names.txt: TF1's public API names, one per line, read from
an installed TensorFlow's `tf.compat.v1` (the 1.x API as TensorFlow ships it): every module,
every public name in it, and the public members of its classes (tf.GraphKeys.UPDATE_OPS,
tf.train.Supervisor.managed_session). tf.contrib is not part of it.

    python tests/tf1_api_names.py   # with tensorflow-cpu and tf-keras installed
"""

import inspect
import os
import types
from pathlib import Path

seen = set()
OUT = Path(__file__).resolve().parent / "tf1_scripts" / "tf1_api_names.txt"


def public(obj):
    try:
        names = dir(obj)
    except Exception:  # a lazy module that cannot load: its name is still listed
        return []
    return [n for n in names if not n.startswith("_")]


def api_module(module):
    try:
        name = module.__name__
    except Exception:  # Keras 3's lazy stand-ins
        return False
    return name.startswith(("tensorflow._api.", "tensorflow.compat", "tf_keras.api."))


def walk(module, prefix, names):
    for attr in public(module):
        try:
            value = getattr(module, attr)
        except Exception:
            continue
        dotted = f"{prefix}.{attr}"
        names.add(dotted)
        if isinstance(value, types.ModuleType):
            # The API's own modules are walked down; a module of TensorFlow's internals
            # that the API exposes (tf.app.flags) only for its names. tf.compat holds the
            # other API versions, tf.keras is Keras's; a module reached twice is walked once.
            if dotted not in ("tf.compat", "tf.keras") and id(value) not in seen:
                seen.add(id(value))
                if api_module(module):
                    walk(value, dotted, names)
        elif inspect.isclass(value):
            names.update(f"{dotted}.{member}" for member in public(value))


def main():
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.layers and tf.keras as in TF1 (tf-keras)
    import tensorflow as tf
    names = set()
    walk(tf.compat.v1, "tf", names)
    OUT.write_text("".join(f"{n}\n" for n in sorted(names)))
    print(f"{len(names)} names -> {OUT}")


if __name__ == "__main__":
    main()
