"""`recon.utils.jobs.ThreadJob`: a call on its own thread, its result or its error taken by the owner."""

from __future__ import annotations

import threading

from recon.utils.jobs import ThreadJob


def test_a_job_returns_its_result_from_its_own_thread() -> None:
    release = threading.Event()

    def work(a: int, *, b: int) -> tuple[int, str]:
        assert release.wait(30)
        return a + b, threading.current_thread().name

    job = ThreadJob("test-job", work, 2, b=3).start()
    assert not job.done and not job.wait(0.05)  # still held: the caller was not blocked
    release.set()
    assert job.wait(30) and job.done
    assert job.result == (5, "test-job") and job.error is None


def test_a_failing_job_reports_its_error_instead_of_raising() -> None:
    def fail() -> None:
        raise ValueError("bad candidate")

    job = ThreadJob("test-job", fail).start()
    assert job.wait(30)
    assert job.result is None and job.error == "ValueError: bad candidate"
