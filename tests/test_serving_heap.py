"""The serving heap and the cycle collector: what is alive once a version is loaded is
frozen (full collections no longer walk it), and an unloaded version's cycles are still
collected, after which the heap is frozen again."""

import gc
import weakref

from psflow.serving import heap
from psflow.serving.manager import ModelManager
from psflow.serving.version_loader import Loader
import live_predictor


class Cycle:
    def __init__(self):
        self.me = self


def test_a_frozen_cycle_survives_until_the_heap_is_thawed_then_is_collected():
    cycle = Cycle()
    alive = weakref.ref(cycle)
    heap.loaded()
    assert gc.get_freeze_count() > 0
    del cycle
    gc.collect()
    assert alive() is not None  # frozen: the collector does not see it
    heap.unloaded()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None
    assert gc.get_freeze_count() > 0  # frozen again after that full collection


def test_an_unloaded_versions_objects_are_collected(tmp_path):
    manager = ModelManager("ctr", Loader(live_predictor.load), None, None)
    manager.aspire({1: live_predictor.write_version(tmp_path, 1, seed=1)})
    assert gc.get_freeze_count() > 0
    with manager.handle() as handle:
        old = weakref.ref(handle.servable)
    del handle
    manager.aspire({2: live_predictor.write_version(tmp_path, 2, seed=2)})
    with manager.handle() as handle:
        assert handle.version == 2
    gc.collect()
    assert old() is None and gc.get_freeze_count() > 0
    manager.unload_all()
