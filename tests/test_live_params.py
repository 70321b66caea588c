"""A served model reading live parameters (serving/live_params.py): its table rows come from a
follower of the training job at each request, its Variables take the follower's values at
each dense update, and what the follower does not hold keeps its exported value."""

import gc

import numpy as np
import pytest

from psflow.errors import InvalidArgumentError
from psflow.saved_model import Predictor
from psflow.serving.live_params import live_load_fn
from test_saved_model import ctr, ctr_feeds, serving_inputs, trained

DIM = 4


class Follower:
    """What live_params asks of a follower: rows by key (None for a table it does not
    mirror), dense values by name (None for one it does not hold), dense-update callbacks."""

    def __init__(self):
        self.rows, self.values, self.callbacks = {}, {}, []

    def lookup(self, name, keys):
        held = self.rows.get(name)
        if held is None:
            return None
        return np.array([held.get(int(k), np.zeros(DIM)) for k in keys], dtype=np.float32)

    def dense(self, name):
        return self.values.get(name)

    def on_dense(self, callback):
        self.callbacks.append(callback)

    def publish_dense(self):
        self.callbacks = [c for c in self.callbacks if c() is not False]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    _, sess, inputs, outputs = trained(ctr, ctr_feeds, steps=4)
    path = tmp_path_factory.mktemp("live") / "ctr"
    import psflow as tf
    return tf.saved_model.simple_save(sess, str(path), serving_inputs(inputs), outputs)


def request(users):
    users = np.asarray(users, dtype=np.int64)
    return {"multi_indices": np.array([[r, 0] for r in range(users.size)], dtype=np.int64),
            "multi_values": users, "multi_shape": np.array([users.size, 1]), "user": users}


def load(export, follower):
    return live_load_fn(lambda path, signature: Predictor.load(path, signature=signature),
                        follower)(export, signature="serving_default")


def test_rows_come_from_the_follower_once_it_holds_the_table(export):
    follower = Follower()
    frozen = Predictor.load(export)
    live = load(export, follower)
    users = [1, 2, 3, 10**12]
    np.testing.assert_array_equal(live.predict(request(users))["user_embedding"],
                                  frozen.predict(request(users))["user_embedding"])
    follower.rows["features"] = {1: np.full(DIM, 0.5), 10**12: np.arange(DIM) + 1.0}
    got = live.predict(request(users))["user_embedding"]
    np.testing.assert_array_equal(got, [[0.5] * DIM, [0] * DIM, [0] * DIM, [1, 2, 3, 4]])
    follower.rows["features"][2] = np.full(DIM, -1.0)  # a later delta: the next request
    assert (live.predict(request(users))["user_embedding"][1] == -1).all()


def test_variables_take_the_followers_values_at_each_dense_update(export):
    follower = Follower()
    follower.rows["features"] = {7: np.array([1.0, 2.0, 0.0, -1.0])}
    live = load(export, follower)
    w, b = np.linspace(-1, 1, 2 * DIM).reshape(2 * DIM, 1), 0.25
    follower.values.update({"tower/w": w, "tower/b": np.array([b])})
    row = follower.rows["features"][7]
    by_hand = 1 / (1 + np.exp(-(np.concatenate([row, row]) @ w[:, 0] + b)))
    assert abs(live.predict(request([7]))["ctr"][0] - by_hand) > 1e-3  # not taken yet
    follower.publish_dense()
    assert live.predict(request([7]))["ctr"][0] == pytest.approx(by_hand, abs=1e-6)


def test_a_version_that_does_not_fit_the_job_fails_to_load(export):
    follower = Follower()
    follower.values["tower/w"] = np.zeros((3, 1))
    with pytest.raises(InvalidArgumentError, match="tower/w.*shape"):
        load(export, follower)


def test_an_unloaded_version_leaves_the_followers_callbacks(export):
    follower = Follower()
    live = load(export, follower)
    follower.publish_dense()
    assert len(follower.callbacks) == 1
    del live
    gc.collect()
    follower.publish_dense()
    assert follower.callbacks == []


def test_rebind_refuses_what_the_model_does_not_read(export):
    predictor = Predictor.load(export)
    before = predictor.predict(request([1, 2]))
    with pytest.raises(InvalidArgumentError, match="reads no variable 'nope'"):
        predictor.rebind(variables={"tower/b": np.array([9.0]), "nope": np.zeros(1)})
    with pytest.raises(InvalidArgumentError, match="reads no table 'tower/w'"):
        predictor.rebind(tables={"tower/w": object()})
    after = predictor.predict(request([1, 2]))  # nothing of the refused calls was taken
    np.testing.assert_array_equal(before["ctr"], after["ctr"])


@pytest.mark.parametrize("remote", [False, True])
def test_a_version_reading_rows_over_the_network_never_runs_in_the_loop(export, remote):
    from psflow.serving.version_loader import Loader
    follower = Follower()
    follower.remote = remote
    load_fn = live_load_fn(lambda path, signature: Predictor.load(path, signature=signature),
                           follower)
    servable = Loader(load_fn).load(1, export)
    assert servable.blocks == remote and servable.warmup_seconds is not None
