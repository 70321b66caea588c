"""TF1's `tf.data`, the part click-through-rate jobs use: `Dataset.from_tensor_slices`,
`TextLineDataset`, `FollowedFilesDataset` (`experimental.follow_files`: a directory's new
files as they appear, for online training), `map`, `batch`, `shuffle`, `repeat`, `shard`,
`prefetch`, one-shot and initializable iterators whose `get_next()` tensors give the next
element in each run, and `errors.OutOfRangeError` at the end. See docs/input-pipeline.md and
docs/online-training.md."""

from types import SimpleNamespace as _Namespace

from ..unimplemented import refuse as _refuse
from .dataset_ops import Dataset
from .followed_files import FollowedFilesDataset, follow_files
from .iterator_ops import Iterator, make_initializable_iterator, make_one_shot_iterator
from .readahead import AUTOTUNE
from .text_lines import TextLineDataset

experimental = _Namespace(AUTOTUNE=AUTOTUNE, follow_files=follow_files)


def __getattr__(name):
    raise _refuse("tf.data", name)
