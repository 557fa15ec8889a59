"""Python's cyclic garbage collector, held off while a separating process starts.

Importing TensorFlow and Beam and building the model create half a million long-lived objects,
and each time the collector's oldest generation grows by a quarter it walks all of them: eight
full collections, about 1.2 s of the 5.5 s that ``stembeam separate`` took on a 5 s file
(BENCHMARKS.md). The ``stembeam`` program pauses the collector before those imports
(``pause``); the first batch into the model (``BackgroundModel.get``) calls ``resume``, which
freezes what start-up built (``gc.freeze``: never scanned again, though still freed by reference
counting) and turns the collector back on. Processes that never paused it (an SDK harness on a
worker) still freeze the model's objects there. A run that never reaches a batch (every track
done already, or failing) gets its collector back after ``START_UP_LIMIT_S`` all the same, so a
long listing cannot pile up cyclic garbage.
"""

from __future__ import annotations

import gc
import threading

START_UP_LIMIT_S = 120.0  # start-up takes 4-15 s; no pause outlasts this
_lock = threading.Lock()
_paused = False  # whether pause() turned the collector off


def pause(limit_s: float = START_UP_LIMIT_S) -> None:
    """Turns the collector off until ``resume``, or for ``limit_s`` seconds at most (no-op
    when it is off already)."""
    global _paused
    with _lock:
        if gc.isenabled():
            gc.disable()
            _paused = True
            timer = threading.Timer(limit_s, _expire)
            timer.daemon = True  # never holds the process open
            timer.start()


def _expire() -> None:
    """``pause``'s limit: resumes only a pause still running (a batch may have ended it)."""
    with _lock:
        paused = _paused
    if paused:
        resume()


def resume() -> None:
    """Freezes every object alive now and turns the collector back on if ``pause`` turned it
    off."""
    global _paused
    with _lock:
        gc.freeze()
        if _paused:
            _paused = False
            gc.enable()
