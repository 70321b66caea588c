"""A followed table as serving keeps it (serving.mirror_table): set, remove, revive, compact."""

import numpy as np

from psflow.serving.mirror_table import MirrorTable


def contents(table):
    keys, values = table.export()
    return {int(k): v.tolist() for k, v in zip(keys, values, strict=True)}


def test_rows_set_removed_revived_and_compacted():
    table = MirrorTable("t", 2, np.float32)
    table.set(np.arange(10), np.arange(20, dtype=np.float32).reshape(10, 2))
    table.remove(np.array([3, 4, 99]))
    assert len(table) == 8 and table.dead_rows == 2
    assert table.lookup(np.array([3, 5, 99])).tolist() == [[0, 0], [10, 11], [0, 0]]
    table.set(np.array([3]), np.array([[7, 7]], np.float32))  # revived
    assert table.dead_rows == 1 and table.lookup(np.array([3])).tolist() == [[7, 7]]
    table.remove(np.array([0, 1, 2]))  # 4 dead of 10: compacted
    assert table.dead_rows == 0 and len(table.table) == 6
    expected = {3: [7, 7], 5: [10, 11], 6: [12, 13], 7: [14, 15], 8: [16, 17], 9: [18, 19]}
    assert contents(table) == expected
    assert table.lookup(np.array([9, 0])).tolist() == [[18, 19], [0, 0]]
    table.remove(np.array([9, 9]))
    assert len(table) == 5 and 9 not in contents(table)
