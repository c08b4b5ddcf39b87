"""parallel.GlobalBatches: the batches of `to_global`, in order, made ahead in a thread that
never outlives the loop (tests/test_distributed.py covers the multi-process start-up)."""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest

from siamjax import parallel


def _local(n: int, rows: int = 8):
    for i in range(n):
        yield {
            "index_a": np.arange(rows, dtype=np.int32) + 100 * i,
            "label": np.full(rows, i % 2, np.int32),
        }


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "GlobalBatches"]


def test_the_batches_are_those_of_to_global_in_order_and_sharded():
    mesh = parallel.make_mesh()
    with parallel.GlobalBatches(_local(5), mesh, size=2) as batches:
        got = list(batches)
    want = [parallel.to_global(b, mesh) for b in _local(5)]
    assert len(got) == 5
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            np.testing.assert_array_equal(np.asarray(g[k]), np.asarray(w[k]))
            assert g[k].sharding == parallel.data_sharding(mesh)
            assert g[k].dtype == np.int32
    assert len(jax.devices()) == 8 and g["label"].addressable_shards[0].data.shape == (1,)
    assert not _threads()


def test_close_stops_the_thread_and_the_source_midway():
    closed = threading.Event()

    def endless():
        try:
            yield from _local(10**9)
        finally:
            closed.set()

    batches = parallel.GlobalBatches(endless(), parallel.make_mesh(), size=3)
    first = next(batches)
    assert int(first["index_a"][0]) == 0 and int(next(batches)["index_a"][0]) == 100
    batches.close()
    assert not _threads() and closed.is_set()  # The generator's cleanup ran.
    with pytest.raises(StopIteration):
        next(batches)


def test_an_error_in_the_source_is_raised_by_next_after_the_good_batches():
    def failing():
        yield from _local(2)
        raise OSError("disk gone")

    batches = parallel.GlobalBatches(failing(), parallel.make_mesh())
    assert [int(b["index_a"][0]) for b in (next(batches), next(batches))] == [0, 100]
    with pytest.raises(OSError, match="disk gone"):
        next(batches)
    assert not _threads()


def test_at_least_one_batch_ahead():
    with pytest.raises(ValueError, match="size=0"):
        parallel.GlobalBatches(_local(1), parallel.make_mesh(), size=0)
