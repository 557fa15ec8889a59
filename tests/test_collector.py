"""The garbage collector held off during start-up: real interpreters in subprocesses (freezing
the test process's own heap would outlive the test)."""

import subprocess
import sys
import textwrap


def run(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.split()


CYCLE = """
import weakref
class Node: pass
def cycle_collected() -> bool:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = []
    weakref.finalize(a, gone.append, True)
    del a, b
    kept = [[] for _ in range(10_000)]  # enough new objects for automatic collections
    return bool(gone)
"""


def test_a_paused_collector_leaves_cycles_and_resume_freezes_start_up_and_collects_again():
    out = run(
        CYCLE
        + textwrap.dedent(
            """
        import gc
        from stembeam.transforms import collector
        collector.pause()
        print(gc.isenabled(), cycle_collected())
        start_up = [Node() for _ in range(50_000)]  # long-lived objects of start-up
        collector.resume()
        print(gc.isenabled(), gc.get_freeze_count() >= 50_000, cycle_collected())
        """
        )
    )
    assert out == ["False", "False", "True", "True", "True"]


def test_resume_keeps_a_collector_that_someone_else_turned_off():
    out = run(
        """
        import gc
        from stembeam.transforms import collector
        gc.disable()
        collector.pause()
        collector.resume()
        print(gc.isenabled(), gc.get_freeze_count() > 0)
        """
    )
    assert out == ["False", "True"]


def test_the_first_batch_into_the_model_resumes_the_collector():
    out = run(
        """
        import gc, threading
        from stembeam.transforms import collector
        from stembeam.transforms.inference import BackgroundModel
        collector.pause()
        model = BackgroundModel(lambda waiting: (lambda x: x), "host")
        print(gc.isenabled())
        predict = model.get()
        print(gc.isenabled(), predict(7))
        """
    )
    assert out == ["False", "True", "7"]


def test_a_pause_ends_by_itself_after_its_limit_when_no_batch_comes():
    out = run(
        """
        import gc, time
        from stembeam.transforms import collector
        collector.pause(limit_s=0.2)
        print(gc.isenabled())
        deadline = time.monotonic() + 30
        while not gc.isenabled() and time.monotonic() < deadline:
            time.sleep(0.05)
        print(gc.isenabled(), gc.get_freeze_count() > 0)
        """
    )
    assert out == ["False", "True", "True"]


def test_a_pause_ended_by_a_batch_is_not_ended_again_by_its_limit():
    out = run(
        """
        import gc, time
        from stembeam.transforms import collector
        collector.pause(limit_s=0.2)
        collector.resume()
        frozen = gc.get_freeze_count()
        later = [[] for _ in range(10_000)]  # tracked objects alive when the limit passes
        time.sleep(0.6)
        print(gc.isenabled(), gc.get_freeze_count() - frozen < len(later) // 2)  # not frozen
        """
    )
    assert out == ["True", "True"]
