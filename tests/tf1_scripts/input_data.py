"""The MNIST tutorials' `input_data` reader, serving scikit-learn's handwritten digits in
MNIST's shape, so TF1's MNIST scripts run here with only their data import changed.

Each 8x8 digit (16 grey levels) is scaled 3x to 24x24 and padded to 28x28: 784 floats in
[0, 1] per image (or [28, 28, 1] with reshape=False); labels are class ids, or one-hot rows
with one_hot=True. The 1797 digits split into 1337 for training, 100 for validation and 360
for testing, the same split in every process. Batches are drawn in a shuffled order that
differs from process to process, as each worker of a TF1 job draws its own.
"""

import collections

import numpy as np
from sklearn.datasets import load_digits

TEST_SIZE = 360

Datasets = collections.namedtuple("Datasets", ["train", "validation", "test"])


class DataSet:
    def __init__(self, images, labels):
        self._images, self._labels = images, labels
        self._num_examples = len(images)
        self._epochs_completed = 0
        self._rng = np.random.RandomState()
        self._order = self._rng.permutation(self._num_examples)
        self._index = 0

    @property
    def images(self):
        return self._images

    @property
    def labels(self):
        return self._labels

    @property
    def num_examples(self):
        return self._num_examples

    @property
    def epochs_completed(self):
        return self._epochs_completed

    def next_batch(self, batch_size, fake_data=False, shuffle=True):
        """The next `batch_size` examples; a new shuffled pass starts when one ends."""
        picked = []
        while len(picked) < batch_size:
            if self._index == self._num_examples:
                self._epochs_completed += 1
                self._order = self._rng.permutation(self._num_examples) if shuffle \
                    else np.arange(self._num_examples)
                self._index = 0
            take = min(batch_size - len(picked), self._num_examples - self._index)
            picked.extend(self._order[self._index:self._index + take])
            self._index += take
        picked = np.asarray(picked)
        return self._images[picked], self._labels[picked]


def read_data_sets(train_dir=None, fake_data=False, one_hot=False, dtype=np.float32,
                   reshape=True, validation_size=100, seed=None, source_url=None):
    digits = load_digits()
    small = digits.images.astype(np.float32) / 16.0
    big = np.kron(small, np.ones((3, 3), dtype=np.float32))  # 24x24
    images = np.pad(big, ((0, 0), (2, 2), (2, 2)))[..., None].astype(dtype)  # 28x28x1
    if reshape:
        images = images.reshape(len(images), 784)
    labels = digits.target.astype(np.int64)
    if one_hot:
        labels = np.eye(10, dtype=np.float32)[labels]
    order = np.random.RandomState(0).permutation(len(images))
    images, labels = images[order], labels[order]
    test = slice(len(images) - TEST_SIZE, None)
    validation = slice(len(images) - TEST_SIZE - validation_size, len(images) - TEST_SIZE)
    train = slice(0, len(images) - TEST_SIZE - validation_size)
    return Datasets(train=DataSet(images[train], labels[train]),
                    validation=DataSet(images[validation], labels[validation]),
                    test=DataSet(images[test], labels[test]))
