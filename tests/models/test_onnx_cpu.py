"""Core slots: task processes of one machine share its cores through lock files."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np

from tilescope.models.onnx_cpu import CoreSlots, SlicePool


def test_slots_are_held_once_and_freed_when_given_back(tmp_path):
    """Two holders (as two task processes would be) never hold the same core."""
    first, second = CoreSlots(tmp_path, cores=2), CoreSlots(tmp_path, cores=2)
    assert first.take(1) == [0]
    assert second.take(2) == [1]  # core 0 is taken
    assert first.take(1) == [] and second.take(1) == []
    second.give_back([1])
    assert first.take(2) == [1]
    first.close()
    assert sorted(second.take(2)) == [0, 1]


def test_a_killed_holder_frees_its_core(tmp_path):
    """A task killed with SIGKILL cannot leak its core: the lock goes with the process."""
    code = ("import sys, time; from tilescope.models.onnx_cpu import CoreSlots; "
            f"s = CoreSlots({str(tmp_path)!r}, cores=1); print(s.take(1), flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "[0]"
        assert CoreSlots(tmp_path, cores=1).take(1) == []
    finally:
        child.kill()
        child.wait()
    assert CoreSlots(tmp_path, cores=1).take(1) == [0]


class _Concurrency:
    """A per-slice function that records how many calls ran at once."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> int:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.02)
        with self._lock:
            self.now -= 1
        return int(image[0, 0])


def test_a_pool_runs_on_the_cores_it_holds_and_borrows_the_free_ones(tmp_path):
    """Beside another task holding one of two cores, a pool runs one thread; once that task
    is gone it borrows the freed core for the next call, and gives it back after. Seen red
    with the slots ignored (two threads while the other task ran)."""
    images = [np.full((2, 2), i, np.uint8) for i in range(12)]
    other = CoreSlots(tmp_path, cores=2)
    assert other.take(1) == [0]
    pool = SlicePool(2, "test", CoreSlots(tmp_path, cores=2))
    probe = _Concurrency()
    assert pool.map(probe, images) == list(range(12))  # in order
    assert probe.most == 1 and pool.holds_core
    other.close()  # the other task ended
    probe = _Concurrency()
    assert pool.map(probe, images) == list(range(12))
    assert probe.most == 2
    looker = CoreSlots(tmp_path, cores=2)
    assert looker.take(2) == [0]  # the borrowed core is back, the pool's own core kept
    looker.close()
    pool.close()
    assert sorted(CoreSlots(tmp_path, cores=2).take(2)) == [0, 1]  # both free on close


def test_a_pool_without_a_core_of_its_own_runs_one_thread(tmp_path):
    """More tasks than cores: a pool that found every core taken runs one thread."""
    everyone = CoreSlots(tmp_path, cores=2)
    assert everyone.take(2) == [0, 1]
    pool = SlicePool(4, "test", CoreSlots(tmp_path, cores=2))
    probe = _Concurrency()
    pool.map(probe, [np.zeros((1, 1), np.uint8)] * 6)
    assert probe.most == 1 and not pool.holds_core
    pool.close()


def test_nobody_borrows_while_another_task_waits_for_a_core(tmp_path):
    """A task that started while the only free core was borrowed waits for it (one thread)
    and says so; the borrower then stops borrowing, and the waiting task gets the core at
    its next call. Seen red without the ``someone_wants`` check: the borrower kept borrowing
    and the newcomer never got a core of its own."""
    images = [np.full((2, 2), i, np.uint8) for i in range(8)]
    first = SlicePool(2, "first", CoreSlots(tmp_path, cores=2))
    assert first.holds_core
    blocker = CoreSlots(tmp_path, cores=2)
    assert blocker.take(1) == [1]  # the free core, borrowed for the moment
    second = SlicePool(2, "second", CoreSlots(tmp_path, cores=2))
    assert not second.holds_core  # started while the core was out: waits, one thread
    blocker.close()  # the borrow ends
    probe = _Concurrency()
    first.map(probe, images)
    assert probe.most == 1  # someone waits: the first pool does not borrow the free core
    second.map(_Concurrency(), images)
    assert second.holds_core  # ... and the second takes it at its next call
    probe = _Concurrency()
    first.map(probe, images)
    assert probe.most == 1  # both cores held now
    second.close()
    probe = _Concurrency()
    first.map(probe, images)
    assert probe.most == 2  # alone again: borrows
    first.close()
