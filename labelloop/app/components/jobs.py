"""Long work (training, embedding) runs in a background thread so the page stays live.

A job keeps its latest progress, every curve row and its result or error;
pages poll it from a fragment that reruns every second while it runs, and
the Cancel button sets the flag the core functions poll. Jobs live in the
server process (not in one browser session), so a reload finds them again.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import streamlit as st

from labelloop.app.components.session import FINISHED_JOBS_SEEN, FOLLOWED_JOBS
from labelloop.errors import Cancelled, UserError


@dataclass
class Job:
    key: str
    description: str
    started: float = field(default_factory=time.time)
    stage: str = "starting"
    fraction: float = 0.0
    curves: list[dict] = field(default_factory=list)
    result: object = None
    error: str | None = None
    cancelled: bool = False
    finished: float | None = None
    stop_requested: threading.Event = field(default_factory=threading.Event)

    @property
    def running(self) -> bool:
        return self.finished is None

    def progress(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, min(max(float(fraction), 0.0), 1.0)

    def add_curve(self, row: dict) -> None:
        self.curves.append(row)

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()


@st.cache_resource
def _registry() -> dict[str, Job]:
    return {}


_lock = threading.Lock()
_pages_drawn = threading.Condition()  # guards _drawing: script runs of any session in progress in this server
_drawing = 0


@contextmanager
def page_being_drawn() -> Iterator[None]:
    """Around a whole script run (app.py): background jobs can wait until no page is being drawn."""
    global _drawing
    with _pages_drawn:
        _drawing += 1
    try:
        yield
    finally:
        with _pages_drawn:
            _drawing -= 1
            _pages_drawn.notify_all()


def wait_until_pages_drawn(timeout: float) -> None:
    """Return once no script run is in progress, or after ``timeout`` seconds (a page that never settles)."""
    with _pages_drawn:
        _pages_drawn.wait_for(lambda: _drawing == 0, timeout)


def current_job(key: str) -> Job | None:
    return _registry().get(key)


def running(key: str) -> bool:
    job = current_job(key)
    return job is not None and job.running


def start_job(key: str, description: str, work: Callable[[Job], object], *, background: bool = False) -> Job:
    """Run ``work(job)`` in a thread unless a job with this key is already running.

    ``background`` lowers the thread's CPU priority: for work nobody is waiting on, like refreshing scores.
    """
    with _lock:
        existing = _registry().get(key)
        if existing is not None and existing.running:
            return existing
        job = Job(key, description)
        _registry()[key] = job
    _follow(job)  # its end is this session's to see, however fast it is

    def run() -> None:
        if background:
            try:  # Linux schedules threads as tasks: only this thread (and processes it starts) yields to the page
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            except (AttributeError, OSError):
                pass
        try:
            job.result = work(job)
        except Cancelled as stop:
            job.cancelled, job.error = True, str(stop)
        except UserError as error:
            job.error = str(error)
        except Exception as error:  # shown on the page; the server keeps running
            job.error = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=6)}"
        finally:
            job.finished = time.time()

    threading.Thread(target=run, name=f"job-{key}", daemon=True).start()
    return job


def follow_job(key: str) -> Job | None:
    """Show the job ``key`` where this is called, and return it once, the first time this session sees it finished
    (only a job this session started or saw running: one that ended before, in another tab, is old news here).

    While it runs: its progress and a Cancel button, redrawn every second, and the whole page reruns
    once when it ends. Its end is this session's to see once: a failed or cancelled job shows its
    message, a finished one is returned (to a single page run, which shows its result).
    """
    job = current_job(key)
    if job is None:
        return None
    if job.running:
        _follow(job)
        st.fragment(_job_progress, run_every=1.0)(key)
        return None
    seen = st.session_state.setdefault(FINISHED_JOBS_SEEN, set())
    if (key, job.started) in seen:
        return None
    seen.add((key, job.started))
    if (key, job.started) not in st.session_state.get(FOLLOWED_JOBS, set()):
        return None  # it ended before this session ever saw it (a new tab, a reload): its banner is not news here
    if job.error:
        (st.warning if job.cancelled else st.error)(job.error)
        return None
    return job


def _follow(job: Job) -> None:
    st.session_state.setdefault(FOLLOWED_JOBS, set()).add((job.key, job.started))


def _job_progress(key: str) -> None:
    job = current_job(key)
    if job is None or not job.running:
        st.rerun(scope="app")  # it ended: the page draws what it made
    st.progress(job.fraction, text=f"{job.description}: {job.stage}")
    if st.button("Cancel", key=f"cancel-{key}"):
        job.stop_requested.set()
