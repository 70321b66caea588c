"""Synthetic click logs in the Criteo display-advertising TSV format, with a planted truth.

Each line is `label <TAB> I1..I13 <TAB> C1..C26`: a 0/1 click, 13 non-negative integer counts
and 26 categorical values as 8-digit hex strings; any feature may be empty, as in the real
logs. Clicks follow a logistic truth: a bias, a weight per value of each categorical field
(values drawn from a Zipf law, as real ids are), a weight per pair of values for a few pairs
of fields, and a weight per integer feature on log1p of its count. The planted truth's AUC,
printed at the end, is the ceiling any model can reach on these rows.

    python examples/make_ctr_data.py OUT.tsv --rows 1000000 [--seed 0]
"""

import argparse
import sys

import numpy as np

INTEGERS, CATEGORICALS = 13, 26
CHUNK = 100_000
# (field, field) pairs whose values interact, and the size of the table of pair weights
PAIRS = ((0, 1), (2, 5), (3, 7), (10, 14))
PAIR_TABLE = 1 << 16


def exact_auc(labels, scores):
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count half)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both clicks and non-clicks")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    average = (starts + ends + 1) / 2.0
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) /
                 (positives * negatives))


class Truth:
    """The planted model: vocabularies, weights and how often each feature is missing."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        # Criteo-like vocabularies: a few tiny fields, many mid-sized, some huge.
        self.vocab = rng.choice([4, 30, 300, 3_000, 30_000, 300_000], size=CATEGORICALS,
                                p=[0.1, 0.15, 0.2, 0.2, 0.2, 0.15])
        self.zipf = rng.uniform(1.15, 1.6, size=CATEGORICALS)
        self.spread = rng.uniform(0.1, 0.4, size=CATEGORICALS)
        self.weights = [rng.normal(0.0, s, size=v)
                        for s, v in zip(self.spread, self.vocab, strict=True)]
        self.missing_weight = rng.normal(0.0, 0.3, size=CATEGORICALS)
        self.missing_cat = rng.choice([0.0, 0.0, 0.05, 0.3], size=CATEGORICALS)
        # the hex string of value v of field f: an odd multiplier and an offset, a bijection
        self.mult = (rng.integers(1, 1 << 31, size=CATEGORICALS) * 2 + 1).astype(np.uint64)
        self.offset = rng.integers(0, 1 << 32, size=CATEGORICALS).astype(np.uint64)
        self.pair_weights = rng.normal(0.0, 0.4, size=(len(PAIRS), PAIR_TABLE))
        self.int_scale = rng.uniform(0.5, 4.0, size=INTEGERS)
        self.int_weights = rng.normal(0.0, 0.25, size=INTEGERS)
        self.missing_int = rng.choice([0.0, 0.02, 0.2, 0.4], size=INTEGERS)
        self.bias = -1.75  # about a quarter of the rows are clicks, as in the real logs

    def rows(self, rng, n):
        """`n` rows: (labels, integer counts or -1, categorical values or -1, truth's
        probabilities)."""
        logit = np.full(n, self.bias)
        counts = np.floor(rng.lognormal(0.0, 1.0, size=(n, INTEGERS)) *
                          self.int_scale).astype(np.int64)
        counts[rng.random((n, INTEGERS)) < self.missing_int] = -1
        logit += (np.log1p(np.maximum(counts, 0)) - 1.0) @ self.int_weights
        values = np.empty((n, CATEGORICALS), dtype=np.int64)
        for f in range(CATEGORICALS):
            ids = (rng.zipf(self.zipf[f], size=n) - 1) % self.vocab[f]
            missing = rng.random(n) < self.missing_cat[f]
            logit += np.where(missing, self.missing_weight[f], self.weights[f][ids])
            values[:, f] = np.where(missing, -1, ids)
        for k, (a, b) in enumerate(PAIRS):
            va, vb = np.maximum(values[:, a], 0), np.maximum(values[:, b], 0)
            logit += self.pair_weights[k][(va * 1_000_003 + vb * 7919) % PAIR_TABLE]
        probabilities = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(n) < probabilities).astype(np.int64)
        return labels, counts, values, probabilities

    def hex_values(self, values):
        """The categorical columns as hex strings ('' where missing)."""
        keys = (values.astype(np.uint64) * self.mult + self.offset) & np.uint64(0xFFFFFFFF)
        text = np.char.mod("%08x", keys)
        return np.where(values < 0, "", text)


def write_rows(truth, rng, n, out):
    labels, counts, values, probabilities = truth.rows(rng, n)
    ints = np.where(counts < 0, "", counts.astype(str))
    columns = np.concatenate([labels.astype(str)[:, None], ints, truth.hex_values(values)],
                             axis=1)
    out.write("".join("\t".join(row) + "\n" for row in columns.tolist()))
    return labels, probabilities


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the TSV file to write")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the planted truth and of the rows")
    args = parser.parse_args(argv)
    if args.rows < 2:
        parser.error(f"--rows must be at least 2, got {args.rows}")
    truth = Truth(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    labels, probabilities = [], []
    with open(args.out, "w", encoding="ascii") as out:
        for start in range(0, args.rows, CHUNK):
            y, p = write_rows(truth, rng, min(CHUNK, args.rows - start), out)
            labels.append(y.astype(np.int8))
            probabilities.append(p.astype(np.float32))
    labels, probabilities = np.concatenate(labels), np.concatenate(probabilities)
    clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    logloss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    print(f"wrote {args.rows} rows to {args.out} ({labels.mean():.1%} clicks)")
    print(f"truth auc: {exact_auc(labels, probabilities):.4f}  logloss: {logloss:.4f}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
