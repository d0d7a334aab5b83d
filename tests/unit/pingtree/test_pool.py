"""The ping tree's thread pool: started once per process, again after a fork."""

from __future__ import annotations

import threading

from pingtree.services import _Pool


def test_the_pool_starts_its_threads_once_and_again_in_a_forked_child(monkeypatch):
    pool = _Pool(2)
    started: list[threading.Thread] = []
    try:
        assert pool.submit(lambda: 1).result(timeout=5) == 1
        started = list(pool.threads)
        assert len(started) == 2 and all(t.is_alive() for t in started)

        checks = []
        monkeypatch.setattr(pool, "_ensure", lambda: checks.append(1) or _Pool._ensure(pool))
        assert [pool.submit(lambda n=n: n).result(timeout=5) for n in range(20)] == list(range(20))
        assert checks == [], "a running pool does not look at its threads on every call"
        assert pool.threads == started

        # A forked child (prefork workers) has the parent's list but none of its threads.
        dead = threading.Thread(target=lambda: None)
        dead.start()
        dead.join()
        pool.threads = [dead, dead]
        pool.pid = -1
        assert pool.submit(lambda: "child").result(timeout=5) == "child"
        assert checks == [1]
        assert len(pool.threads) == 2 and all(t.is_alive() for t in pool.threads)
    finally:
        # The "parent's" threads are still alive in this test: stop them too.
        pool.threads = [t for t in pool.threads if t.is_alive()] + started
        pool.shutdown()
    assert not any(t.is_alive() for t in started)
