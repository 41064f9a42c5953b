"""The driver's loop collects garbage less often while it runs, and leaves the process's
collector settings as it found them, also when the sweep fails."""

from __future__ import annotations

import gc

import pytest

from sweep._loop import YOUNG_COLLECTION, fewer_collections


def test_the_young_generation_is_collected_less_often_inside_and_as_before_after() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        inside = gc.get_threshold()
    assert inside[0] == max(before[0], YOUNG_COLLECTION) and inside[1:] == before[1:]
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("the sweep failed")
    assert gc.get_threshold() == before


def test_a_higher_threshold_of_the_users_is_kept() -> None:
    before = gc.get_threshold()
    gc.set_threshold(5 * YOUNG_COLLECTION, *before[1:])
    try:
        with fewer_collections():
            assert gc.get_threshold()[0] == 5 * YOUNG_COLLECTION
    finally:
        gc.set_threshold(*before)
