"""When an embedding table's key gets a row, and when a row goes: DeepRec's counter filter
(admission after `filter_freq` sightings) and global-step eviction (rows not updated within
`steps_to_live` global steps). The table keeps the counters (per entry its sightings, per row
the step of its last update) beside the rows; these functions decide from them, over whole
arrays, never per key."""

import numpy as np

_COUNT_MAX = np.iinfo(np.int32).max


def counts_sightings(filter_freq):
    """Whether sightings need counting: only a filter above one sighting looks at them."""
    return filter_freq > 1


def count_sightings(freq, entries, counts):
    """Adds to `freq` (per entry, int32, in place) one sighting per entry in `entries`, or
    `counts` of them; counts matter only until admission, so they saturate."""
    seen = freq[entries].astype(np.int64) + (1 if counts is None else
                                             np.asarray(counts, dtype=np.int64))
    freq[entries] = np.minimum(seen, _COUNT_MAX)


def saturated(counts):
    """Checkpointed sighting counts as the int32 counters hold them."""
    return np.minimum(np.asarray(counts, dtype=np.int64), _COUNT_MAX)


def admitted(sightings, filter_freq):
    """Which keys, seen `sightings` times each, get a row (0 or 1: at once, whatever their
    count, which is not kept then)."""
    if not counts_sightings(filter_freq):
        return np.ones(np.shape(sightings), dtype=bool)
    return sightings >= filter_freq


def stale_rows(last_step, global_step, steps_to_live):
    """Which rows, last updated at `last_step`, are evicted at `global_step`."""
    return last_step < global_step - steps_to_live


def eviction_due(steps_to_live, global_step, last_pass):
    """Whether a parameter server runs an eviction pass at `global_step` as it applies
    gradients, the last pass having run at `last_pass`: once every `steps_to_live` steps (a
    checkpoint evicts too, whatever the step)."""
    return bool(steps_to_live) and global_step - last_pass >= steps_to_live


def rows_over_cap(rows, max_rows):
    """How many rows a table holding `rows` removes to respect `max_rows` (0 within it): the
    excess and 1/64 of the cap besides, so that a table at its cap under ever-new keys pays
    for a pass over its rows once every max_rows/64 new rows, not on every lookup."""
    if max_rows is None or rows <= max_rows:
        return 0
    return rows - max_rows + max_rows // 64


def least_recent_rows(last_step, row_seq, count, protected=None):
    """The `count` rows (sorted indices) that go first when a table is over its cap: the least
    recently updated (lowest `last_step`), ties broken by the older last change (`row_seq`),
    then the lower row; never the rows in `protected` (fewer than `count` if too few
    others). One partition over the rows, a sort of the tied ones only."""
    candidates = np.ones(last_step.size, dtype=bool)
    if protected is not None:
        candidates[protected] = False
    rows = np.flatnonzero(candidates)
    count = min(int(count), rows.size)
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if count == rows.size:
        return rows
    steps = last_step[rows].astype(np.int64)
    kth = np.partition(steps, count - 1)[count - 1]
    sure = rows[steps < kth]
    tied = rows[steps == kth]
    order = np.lexsort((tied, row_seq[tied]))
    return np.sort(np.concatenate([sure, tied[order[:count - sure.size]]]))
