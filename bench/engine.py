"""Steps/second of one SGD training step as a psflow graph, beside the same step in numpy.

Two models, batch 64, float32, ReLU hidden layers, softmax cross-entropy: the digits MLP
(64-256-256-10) and a wide MLP (64-2048-2048-10). The engine runs `sess.run(train_op,
feed_dict)` each step; the reference is the forward pass, backward pass and in-place update
written by hand. Both start from the same weights and see the same batches; their first-step
losses must agree. Rounds alternate between the two and the best round of each counts, so
the ratio engine/numpy is the engine's overhead over doing the arithmetic directly.

    python bench/engine.py [--rounds 7]
"""

import argparse
import time

import numpy as np

import psflow as tf

MODELS = {"mlp": (64, 256, 256, 10), "wide": (64, 2048, 2048, 10)}
STEPS_PER_ROUND = {"mlp": 400, "wide": 20}
BATCH = 64
LEARNING_RATE = 0.05
TARGET_RATIO = 1.3


def initial_weights(sizes, seed=0):
    """[(w, b)] per layer: Glorot-uniform weights and zero biases, float32."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        layers.append((w, np.zeros(fan_out, dtype=np.float32)))
    return layers


def make_batches(features, count=32, seed=0):
    """`count` batches of (features, int64 labels), the same for both implementations."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 10, size=len(features))
    batches = []
    for _ in range(count):
        rows = rng.integers(0, len(features), size=BATCH)
        batches.append((np.ascontiguousarray(features[rows]), targets[rows].astype(np.int64)))
    return batches


def load_features():
    """Digit images scaled to [0, 1] when scikit-learn is there, else uniform noise."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return np.random.default_rng(0).random((1797, 64), dtype=np.float32)
    return (load_digits().data / 16.0).astype(np.float32)


class EngineStep:
    """The model as a psflow graph; `step` runs the train op once."""

    def __init__(self, layers):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = tf.placeholder(tf.float32, shape=(None, layers[0][0].shape[0]), name="x")
            self.labels = tf.placeholder(tf.int64, shape=(None,), name="labels")
            h = self.x
            for i, (w, b) in enumerate(layers):
                h = h @ tf.Variable(w, name=f"w{i}") + tf.Variable(b, name=f"b{i}")
                if i < len(layers) - 1:
                    h = tf.nn.relu(h)
            self.loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=self.labels, logits=h))
            self.train_op = tf.train.GradientDescentOptimizer(LEARNING_RATE).minimize(
                self.loss)
            self.session = tf.Session()
            self.session.run(tf.global_variables_initializer())

    def first_step(self, features, labels):
        """One training step; returns the loss before the update."""
        _, loss = self.session.run([self.train_op, self.loss],
                                   {self.x: features, self.labels: labels})
        return float(loss)

    def step(self, features, labels):
        self.session.run(self.train_op, {self.x: features, self.labels: labels})


class NumpyStep:
    """The same model and SGD step written directly in numpy."""

    def __init__(self, layers):
        self.weights = [w.copy() for w, _ in layers]
        self.biases = [b.copy() for _, b in layers]

    def step(self, features, labels):
        """One training step; returns the loss before the update."""
        weights, biases = self.weights, self.biases
        activations = [features]
        h = features
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = h @ w
            h += b
            if i < len(weights) - 1:
                np.maximum(h, 0, out=h)
            activations.append(h)
        logits = activations.pop()

        n = len(labels)
        rows = np.arange(n)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(probs[rows, labels]))

        grad = probs
        grad[rows, labels] -= 1.0
        grad /= n
        for i in reversed(range(len(weights))):
            grad_w = activations[i].T @ grad
            grad_b = grad.sum(axis=0)
            if i > 0:
                next_grad = grad @ weights[i].T
                next_grad *= activations[i] > 0
            weights[i] -= LEARNING_RATE * grad_w
            biases[i] -= LEARNING_RATE * grad_b
            if i > 0:
                grad = next_grad
        return float(loss)


def timed(step, batches, steps):
    """Seconds for `steps` calls of `step`, cycling through `batches`."""
    count = len(batches)
    start = time.perf_counter()
    for i in range(steps):
        features, labels = batches[i % count]
        step(features, labels)
    return time.perf_counter() - start


def bench(model, features, rounds):
    """(engine steps/s, numpy steps/s, first-step losses) for one model."""
    layers = initial_weights(MODELS[model])
    batches = make_batches(features)
    engine, reference = EngineStep(layers), NumpyStep(layers)

    features0, labels0 = batches[0]
    losses = (engine.first_step(features0, labels0), reference.step(features0, labels0))
    if not np.isclose(losses[0], losses[1], rtol=1e-4):
        raise SystemExit(f"{model}: the engine's first-step loss {losses[0]:.6f} differs from "
                         f"numpy's {losses[1]:.6f}")

    steps = STEPS_PER_ROUND[model]
    timed(engine.step, batches, steps // 4)  # warm-up: plan cache, allocator, BLAS threads
    timed(reference.step, batches, steps // 4)
    best_engine = best_numpy = float("inf")
    for _ in range(rounds):
        best_engine = min(best_engine, timed(engine.step, batches, steps))
        best_numpy = min(best_numpy, timed(reference.step, batches, steps))
    return steps / best_engine, steps / best_numpy, losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7,
                        help="timed rounds per implementation; the best counts")
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    args = parser.parse_args(argv)

    features = load_features()
    print(f"batch {BATCH}, float32, SGD; best of {args.rounds} rounds "
          f"({', '.join(f'{m}: {STEPS_PER_ROUND[m]} steps' for m in args.models)})")
    print(f"{'model':<6} {'sizes':<18} {'first loss':>10} {'psflow steps/s':>15} "
          f"{'numpy steps/s':>14} {'psflow/numpy time':>18}")
    worst = 0.0
    for model in args.models:
        engine_rate, numpy_rate, losses = bench(model, features, args.rounds)
        ratio = numpy_rate / engine_rate
        worst = max(worst, ratio)
        sizes = "-".join(str(s) for s in MODELS[model])
        print(f"{model:<6} {sizes:<18} {losses[0]:>10.5f} {engine_rate:>15.1f} "
              f"{numpy_rate:>14.1f} {ratio:>18.2f}", flush=True)
    verdict = "within" if worst <= TARGET_RATIO else "above"
    print(f"worst ratio {worst:.2f}: {verdict} the target of {TARGET_RATIO}")


if __name__ == "__main__":
    main()
