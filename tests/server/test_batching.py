"""MicroBatcher: one bad item fails alone, deadlines are kept, a full queue sheds at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from blat_gateway.batching import MicroBatcher
from blat_gateway.errors import BackendDown, BadRequest, DeadlineExceeded, Overloaded


def doubling(calls: list[list[int]], seconds: float = 0.0):
    """A model that doubles numbers and chokes on negative ones, as a tokenizer chokes on a lone surrogate; each call
    takes `seconds` (requests queue behind a busy model, and then they batch)."""

    def run(items):
        calls.append(list(items))
        time.sleep(seconds)
        if any(x < 0 for x in items):
            raise TypeError("cannot encode a negative number")
        return [2 * x for x in items]

    return run


def test_a_poison_item_fails_alone_and_its_batch_mates_succeed():
    calls: list[list[int]] = []
    b = MicroBatcher("t", doubling(calls, 0.01), max_batch=16, max_wait_s=0.05, max_queue=256)
    items = [(-1 if i % 7 == 3 else i) for i in range(100)]
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(lambda x: _outcome(b, x), items))
    b.close()
    for x, (result, err) in zip(items, outcomes):
        if x < 0:
            assert isinstance(err, BadRequest) and "TypeError" in err.message
        else:
            assert err is None and result == 2 * x
    assert any(len(c) > 1 for c in calls), "the test must actually batch"


def _outcome(b: MicroBatcher, x: int):
    try:
        return b.submit(x, timeout_s=10), None
    except Exception as e:
        return None, e


def test_a_lone_request_runs_at_once_without_waiting_for_company():
    calls: list[list[int]] = []
    batches: list[int] = []
    # max_wait_s an hour: a batcher that waited for company would miss the 5 s deadline (DeadlineExceeded)
    b = MicroBatcher("t", doubling(calls), max_batch=16, max_wait_s=3600.0, on_batch=lambda _, n: batches.append(n))
    assert b.submit(21, timeout_s=5) == 42, "an idle model must not wait max_wait_s for company"
    b.close()
    assert calls == [[21]] and batches == [1]


def test_requests_that_arrive_while_a_batch_runs_form_the_next_batch():
    calls: list[list[int]] = []
    started = threading.Event()

    def slow(items):
        calls.append(list(items))
        started.set()
        time.sleep(0.3)
        return [2 * x for x in items]

    b = MicroBatcher("t", slow, max_batch=16, max_wait_s=0.0)
    first = b.submit_future(0, timeout_s=10)
    assert started.wait(5)
    rest = [b.submit_future(x, timeout_s=10) for x in range(1, 11)]  # queued while the model runs item 0
    assert first.result(5) == 0 and [f.result(5) for f in rest] == [2 * x for x in range(1, 11)]
    b.close()
    assert calls == [[0], list(range(1, 11))]


def test_an_item_that_fails_alone_with_no_good_neighbour_keeps_its_error():
    b = MicroBatcher("t", doubling([]), max_batch=4, max_wait_s=0.0)
    with pytest.raises(TypeError):
        b.submit(-5, timeout_s=5)
    b.close()


def test_whole_batch_errors_are_not_retried_item_by_item():
    calls: list[int] = []

    def down(items):
        calls.append(len(items))
        raise BackendDown("triton is down")

    b = MicroBatcher("t", down, max_batch=8, max_wait_s=0.1)
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda x: _outcome(b, x), range(8)))
    b.close()
    assert all(isinstance(err, BackendDown) for _, err in outcomes)
    assert sum(calls) == 8, f"each item ran once, not once more alone: {calls}"


def test_a_job_past_its_deadline_is_dropped_not_run():
    ran: list[int] = []
    gate = threading.Event()

    def slow(items):
        ran.extend(items)
        gate.wait(5)
        return list(items)

    b = MicroBatcher("t", slow, max_batch=1, max_wait_s=0.0)
    first = b.submit_future(1, timeout_s=10)
    time.sleep(0.05)  # the worker is now busy with item 1
    late = b.submit_future(2, timeout_s=0.05)
    time.sleep(0.2)
    gate.set()
    assert first.result(5) == 1
    with pytest.raises(DeadlineExceeded):
        late.result(5)
    b.close()
    assert ran == [1]


def test_a_full_queue_answers_overloaded_at_once():
    gate, busy = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def blocked(items):
        calls.append(list(items))
        busy.set()
        gate.wait(5)
        return list(items)

    b = MicroBatcher("t", blocked, max_batch=1, max_wait_s=0.0, max_queue=2)
    futures = [b.submit_future(0, 10)]
    assert busy.wait(5)  # the model holds item 0 until the gate opens
    futures += [b.submit_future(i, 10) for i in (1, 2)]
    with pytest.raises(Overloaded):
        b.submit_future(3, 10)
    # refused while the model still held item 0 and the queue was still full: it did not wait for room (room comes
    # only after the gate opens, below; a submit that waited would have got it and returned a future)
    assert calls == [[0]] and b.depth == 2 and not gate.is_set()
    gate.set()
    assert [f.result(5) for f in futures] == [0, 1, 2]
    b.close()
