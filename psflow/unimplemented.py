"""What psflow does not implement is refused by name: `tf.X` that psflow lacks raises an
AttributeError saying "psflow does not implement tf.X", with what to use instead where there
is something."""

INSTEAD = {
    "estimator": "build the graph and train it with tf.train.MonitoredTrainingSession",
    "contrib": None,
    "FIFOQueue": "feed batches through feed_dict",
    "RandomShuffleQueue": "feed batches through feed_dict",
    "QueueRunner": "feed batches through feed_dict",
    "keras": "build the graph with psflow's ops, tf.nn and get_variable",
}


def refuse(module, name):
    """The AttributeError for tf-module `module` (e.g. "tf.train") lacking `name`."""
    if name.startswith("__") and name.endswith("__"):
        return AttributeError(name)
    instead = INSTEAD.get(name)
    return AttributeError(f"psflow does not implement {module}.{name}" +
                          (f"; instead, {instead}" if instead else ""))
