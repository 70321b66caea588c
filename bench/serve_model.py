"""The model bench/serve.py serves: a wide & deep click-through-rate model over hash-keyed
embedding tables, as bench/ctr_model.py trains it (26 categorical ids, 13 dense features,
dim-16 embeddings, a DNN 256-128, a wide table summed into the logit), exported as
`ctr` with inputs `ids` (int64, N x 26) and `dense` (float32, N x 13) and output `prob`.

The tables hold `rows` keys each (hashed ids: spread over int64, as a log's hashes are),
made by a training lookup of every key, so the export is a real servable of that size.
Requests are made here too: ids drawn Zipf-like from the keys (a few unknown ones, which
read zeros), for one row, for a ranking request (one user, N candidates: the user's fields
repeat, the item's change), and covering every key once (to read every row).
"""

import numpy as np

import psflow as tf
from psflow.proto.tfserving import predict_pb2
from psflow.serving.tensor_proto import from_numpy

FIELDS, DENSE, DIM, HIDDEN = 26, 13, 16, (256, 128)
USER_FIELDS = 13  # of a ranking request's 26 ids, the first 13 describe the user
_SPREAD = 0x9E3779B97F4A7C15 >> 2  # odd: key i -> i * _SPREAD mod 2^62 is one-to-one


def keys_of(rows):
    return (np.arange(rows, dtype=np.uint64) * np.uint64(_SPREAD) % np.uint64(1 << 62)).astype(
        np.int64)


def build():
    ids = tf.placeholder(tf.int64, shape=(None, FIELDS), name="ids")
    dense = tf.placeholder(tf.float32, shape=(None, DENSE), name="dense")
    table = tf.get_embedding_variable("embedding", DIM)
    wide = tf.get_embedding_variable("wide", 1)
    h = tf.concat([tf.reshape(tf.nn.embedding_lookup(table, ids), (-1, FIELDS * DIM)), dense],
                  axis=1)
    width_in = FIELDS * DIM + DENSE
    for i, width in enumerate(HIDDEN):
        w = tf.get_variable(f"dnn/w{i}", shape=(width_in, width),
                            initializer=tf.glorot_uniform_initializer(seed=i))
        h = tf.nn.relu(h @ w + tf.Variable(np.full((width,), 0.01, np.float32), name=f"dnn/b{i}"))
        width_in = width
    out = tf.get_variable("dnn/out", shape=(width_in, 1),
                          initializer=tf.glorot_uniform_initializer(seed=9))
    logit = h @ out + tf.reduce_sum(tf.nn.embedding_lookup(wide, ids), axis=1)
    return (ids, dense), (table, wide), tf.sigmoid(logit, name="prob")


def export(export_dir, rows, seed=0):
    """Writes the model with `rows`-key tables to `export_dir` (a version folder)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        (ids, dense), tables, prob = build()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            keys = keys_of(rows)
            for table in tables:
                store = sess.store_for(table)
                for lo in range(0, rows, 1 << 20):
                    store.read_rows(table, keys[lo:lo + (1 << 20)], train=True)
            tf.saved_model.simple_save(sess, export_dir, {"ids": ids, "dense": dense},
                                       {"prob": prob})


def rows_of(rows, count, seed=0, candidates_of_one_user=False):
    """(ids, dense) for `count` rows: ids Zipf-drawn over the keys, 1 in 50 unknown."""
    rng = np.random.default_rng(seed)
    keys = keys_of(rows)
    ids = keys[np.minimum(rng.zipf(1.2, size=(count, FIELDS)) - 1, rows - 1)]
    unknown = rng.random(ids.shape) < 0.02
    ids[unknown] = -1 - rng.integers(0, 1 << 40, size=int(unknown.sum()))
    dense = rng.random((count, DENSE), dtype=np.float32)
    if candidates_of_one_user:
        ids[:, :USER_FIELDS] = ids[0, :USER_FIELDS]
        dense[:] = dense[0]
    return ids, dense


def every_key(rows, per_request):
    """Requests' (ids, dense) that together name every key once."""
    keys = keys_of(rows)
    pad = (-rows) % FIELDS
    ids = np.concatenate([keys, keys[:pad]]).reshape(-1, FIELDS)
    for lo in range(0, len(ids), per_request):
        part = ids[lo:lo + per_request]
        yield part, np.zeros((len(part), DENSE), np.float32)


def json_body(ids, dense):
    """TF Serving's REST row format (KServe's V1 too)."""
    rows = [f'{{"ids": [{", ".join(map(str, i))}], "dense": [{", ".join(map(repr, d))}]}}'
            for i, d in zip(ids.tolist(), dense.tolist(), strict=True)]
    return ('{"instances": [' + ", ".join(rows) + "]}").encode()


def predict_request(ids, dense, model="ctr"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["ids"].CopyFrom(from_numpy(ids))
    request.inputs["dense"].CopyFrom(from_numpy(dense))
    return request
