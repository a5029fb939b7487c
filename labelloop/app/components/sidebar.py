"""The sidebar every page shares: which data set and which version the user is looking at."""

from __future__ import annotations

import threading
import time

import streamlit as st

from labelloop.app.components.compute_setting import compute_setting
from labelloop.app.components.session import (
    TRAIN_ANNOUNCED,
    choose_dataset,
    current_dataset,
    keys,
)
from labelloop.data.storage import Location
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import (
    DatasetPaths,
    list_datasets,
    open_table,
    resolve_workspace,
)


def workspace() -> Location:
    return resolve_workspace(None)


def pick_dataset() -> str | None:
    """Sidebar data set picker; the choice survives page changes and reloads (it is in the URL)."""
    names = list_datasets(workspace())
    if not names:
        st.sidebar.info("No data sets yet: build the demo or import images.")
        return None
    wanted = current_dataset() or st.query_params.get("dataset")
    index = names.index(wanted) if wanted in names else 0
    name = st.sidebar.selectbox("Data set", names, index=index, help=f"Data sets in {workspace()}")
    choose_dataset(name)
    st.query_params["dataset"] = name
    return name


def current_table() -> LabelTable | None:
    name = current_dataset()
    return open_table(workspace(), name) if name else None


def pick_version(table: LabelTable) -> int:
    """Sidebar version picker, newest first.

    A session keeps showing the version it showed last: a commit from another
    tab or user never changes what this page shows (its edits would land on
    samples the user never saw); the sidebar says a newer version exists and
    offers it. The session's own commits move it to the new head.
    """
    history = table.history()
    head = history[-1].version
    versions = [info.version for info in reversed(history)]
    labels = {info.version: f"v{info.version} · {info.message[:48]}" for info in history}
    name = current_dataset()
    chosen = st.session_state.get(keys(name).version)
    if chosen not in versions:
        chosen = head  # first look at this data set: the latest version
    version = st.sidebar.selectbox("Version", versions, index=versions.index(chosen), format_func=labels.get, help="Every edit is a new version; pick one to inspect, compare, restore or export.")
    if version != chosen:  # the user picked another version on purpose
        st.session_state[keys(name).picked_old] = version != head
    st.session_state[keys(name).version] = version
    if version != head and st.session_state.get(keys(name).picked_old):
        st.sidebar.caption(f"Viewing an old version; the latest is v{head}. Edits need the latest version.")
    else:
        with st.sidebar:
            _committed_elsewhere(table, name)
    return version


# How often every open page looks for a commit made elsewhere: one listing of the table's log.
HEAD_POLL_SECONDS = 3.0


@st.fragment(run_every=HEAD_POLL_SECONDS)
def _committed_elsewhere(table: LabelTable, name: str) -> None:
    """Say so as soon as another tab or user commits, on every page, whether or not the user touches it (a Map
    tab used to learn of it only at its next click). Only this fragment reruns: nothing the user is pointing at
    is redrawn under the pointer."""
    version = st.session_state.get(keys(name).version)
    head = table.head_version()
    if version is None or version >= head or st.session_state.get(keys(name).picked_old):
        return
    st.warning(f"v{head} was committed elsewhere (another tab or user) while you were on v{version}. This page still shows v{version}.")
    if st.button(f"Show v{head}", key="show-head"):
        show_version(head)
        st.rerun(scope="app")


def show_version(version: int) -> None:
    """Make ``version`` the one this session shows (it stays put until the user or this session moves it)."""
    name = current_dataset()
    st.session_state[keys(name).version] = version
    st.session_state[keys(name).picked_old] = False


def stale_edit_message(table: LabelTable, shown: int) -> str:
    """Why an edit made on version ``shown`` was refused, and what to do: the same words on every page."""
    head = table.head_version()
    if st.session_state.get(keys(current_dataset()).picked_old):
        return f"You are viewing v{shown}, an old version (the latest is v{head}); nothing was written. Edits go on the latest version: pick v{head} in the sidebar (or restore v{shown} on the Data page first)."
    return f"This data set changed since this page showed it: v{head} was committed elsewhere while you were on v{shown}. Nothing was written. Reload to see v{head}; what you selected or decided stays, to commit again on v{head}."


def show_head_moved(new_version: int) -> None:
    """After this session's own commit: look at the new head, and start refreshing its scores in the background."""
    show_version(new_version)
    name = current_dataset()
    if name:
        refresh_scores(name, new_version)


@st.cache_resource
def _refresh_queue() -> dict:
    """Versions waiting for their quick heads, per data set (one server-wide queue)."""
    return {"lock": threading.Lock(), "pending": {}}


def refresh_scores(name: str, version: int) -> None:
    """Retrain the quick heads (k-NN, logistic regression) on ``version`` so issue scores, the review
    table, the confusion matrix, the map's colours and the accuracy line follow the edit without anyone asking.

    Versions queue up: two quick commits both get scores (the newest first), one job at a time. The pages
    show the new scores at the user's next action, or at once from the sidebar's notice (see :func:`_poll_refresh`).
    """
    from labelloop.app.components.jobs import (
        current_job,
        start_job,
        wait_until_pages_drawn,
    )

    queue = _refresh_queue()
    key = f"quick:{name}"
    dataset = DatasetPaths(workspace(), name)  # resolved once: the refresh, and the run it trains, use this one

    def work(job):
        # Let the page redraw the commit first: the retrain competes for the same cores, and its imports (torch)
        # hold the GIL. The rerun the commit asked for starts within this second; then wait for it to end
        # (at a million rows it takes seconds, and sharing them with the import doubled the time to recolour).
        time.sleep(1.0)
        wait_until_pages_drawn(timeout=30)
        from threadpoolctl import threadpool_limits

        from labelloop.train.pipeline import (  # imports torch: never on the page's own time
            quick_heads_estimate,
            refresh_quick_heads,
        )

        # One BLAS thread: beside the page and the browser on a small machine, two spinning BLAS threads
        # made a 160-sample logistic regression 2.5x slower (21 s against 8.5 s, measured here under load).
        with threadpool_limits(limits=1, user_api="blas"):
            result = None
            while True:
                with queue["lock"]:
                    waiting = queue["pending"].get(name, set())
                    if not waiting:
                        job.finished = time.time()  # under the lock: a version queued from now on starts a new job
                        return result
                    next_version = max(waiting)
                    waiting.discard(next_version)
                estimate = quick_heads_estimate(dataset, next_version)
                job.description = f"updating scores for v{next_version}" + (f" ({estimate})" if estimate else "")
                run = refresh_quick_heads(dataset, next_version, progress=job.progress, should_stop=job.should_stop)
                if run is not None and (result is None or run.version > result.version):
                    result = run  # the newest version's: the one the sidebar's notice names

    with queue["lock"]:
        queue["pending"].setdefault(name, set()).add(version)
        job = current_job(key)
        if job is not None and job.running:
            return  # the running job takes it from the queue
        start_job(key, f"updating scores for v{version}", work, background=True)


def refresh_status() -> None:
    """A small "updating..." line while the quick heads retrain (polled only while they run)."""
    from labelloop.app.components.jobs import current_job

    name = current_dataset()
    job = current_job(f"quick:{name}") if name else None
    if job is None:
        return
    if job.running:
        _poll_refresh(job.key)
    elif job.error and not job.cancelled:
        st.caption(f":material/error: scores not updated: {job.error.splitlines()[0][:160]}")


@st.fragment(run_every=1.0)
def _poll_refresh(key: str) -> None:
    """The refresh's progress, then, once it has ended, a notice: new scores are ready, with a button to show them.

    Never a whole-app rerun from this timer. That rerun redrew the page under the user's pointer: on the Train
    page the run history gained a row and pushed the confusion matrix down by one, so a click aimed at a cell
    landed on the one above it or on nothing (issue 27 item 9); any page's chart, table or map could be
    redrawn mid-click the same way. Only this fragment, in the sidebar, redraws here. The scores are already on
    disk, and every page reads them afresh at its next full run, so the user's next action (any click that
    reruns the page) shows them, or this button does at once; until then the page the user is working on
    stays exactly as it is. The notice goes with that rerun (the job has ended: nothing polls any more).
    """
    from labelloop.app.components.jobs import current_job

    job = current_job(key)
    if job.running:
        st.caption(f":material/sync: {job.description}: {job.stage}")
    elif job.error and not job.cancelled:
        st.caption(f":material/error: scores not updated: {job.error.splitlines()[0][:160]}")
    elif job.result is not None:  # None: every queued version had its quick heads already, nothing changed
        if st.button(f"Show the new scores (v{job.result.version})", key="show-new-scores", icon=":material/refresh:", type="tertiary",
                     help="The quick heads finished in the background. The page keeps what it shows until you act (this button, or anything "
                          "that redraws the page), so nothing moves under your pointer."):
            st.rerun(scope="app")


def training_status(*, on_train_page: bool) -> None:
    """This session's own training run seen from any other page: its stage while it trains, then once it has ended a
    notice naming the run and where to see it (the Train page shows it in full and needs none)."""
    from labelloop.app.components.jobs import current_job

    name = current_dataset()
    if not name or on_train_page or not st.session_state.get(keys(name).train_started):
        return
    job = current_job(keys(name).train_job)
    if job is None or (job.result is not None and st.session_state.get(TRAIN_ANNOUNCED) == job.result.run_id):
        return  # none, or its end was shown on the Train page already
    _poll_training(job.key)


@st.fragment(run_every=2.0)
def _poll_training(key: str) -> None:
    """Like the refresh's poll: only this fragment redraws, nothing moves under the pointer (issue 27 item 9)."""
    from labelloop.app.components.jobs import current_job

    job = current_job(key)
    if job.running:
        st.caption(f":material/model_training: your run, {job.description}: {job.stage}")
    elif job.error:
        st.caption(f":material/error: your run ({job.description}) {'was cancelled' if job.cancelled else 'failed'}: see the Train page")
    elif job.result is not None:
        summary = job.result.summary
        st.success(f"Your run {job.result.run_id} ({job.description}) has finished: {summary.best_model}, accuracy {summary.held_out_accuracy:.4f} "
                   "(held out). The Train page shows it.", icon=":material/check_circle:")


def open_current_version() -> tuple[LabelTable, str, int]:
    """(table, data set name, version) the sidebar points at; stops the page with a hint if there is no data set."""
    table = current_table()
    if table is None:
        st.info("No data set yet: open the Data page to build the demo or import images.")
        st.stop()
    version = pick_version(table)
    compute_setting()  # under the version: where this page's jobs run
    return table, current_dataset(), version
