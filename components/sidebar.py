"""The sidebar every page shares: which data set and which version the user is looking at."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from core.tables import LabelTable
from core.workspace import list_datasets, open_table, resolve_workspace


def workspace() -> Path:
    return resolve_workspace(None)


def pick_dataset() -> str | None:
    """Sidebar data set picker; the choice survives page changes and reloads (it is in the URL)."""
    names = list_datasets(workspace())
    if not names:
        st.sidebar.info("No data sets yet: build the demo or import images.")
        return None
    wanted = st.session_state.get("dataset") or st.query_params.get("dataset")
    index = names.index(wanted) if wanted in names else 0
    name = st.sidebar.selectbox("Data set", names, index=index, help=f"Data sets in {workspace()}")
    st.session_state["dataset"] = name
    st.query_params["dataset"] = name
    return name


def current_table() -> LabelTable | None:
    name = st.session_state.get("dataset")
    return open_table(workspace(), name) if name else None


def pick_version(table: LabelTable) -> int:
    """Sidebar version picker, newest first; follows the head after a commit unless the user picked an old version."""
    history = table.history()
    head = history[-1].version
    versions = [info.version for info in reversed(history)]
    labels = {info.version: f"v{info.version} · {info.message[:48]}" for info in history}
    chosen = st.session_state.get("version")
    if chosen not in versions or st.session_state.get("version_follows_head", True):
        chosen = head
    version = st.sidebar.selectbox("Version", versions, index=versions.index(chosen), format_func=labels.get, help="Every edit is a new version; pick one to inspect, compare, restore or export.")
    st.session_state["version"] = version
    st.session_state["version_follows_head"] = version == head
    if version != head:
        st.sidebar.caption(f"Viewing an old version; the latest is v{head}.")
    return version


def show_head_moved(new_version: int) -> None:
    """After a commit: look at the new head, and start refreshing its scores in the background."""
    st.session_state["version"] = new_version
    st.session_state["version_follows_head"] = True
    name = st.session_state.get("dataset")
    if name:
        refresh_scores(name, new_version)


def refresh_scores(name: str, version: int) -> None:
    """Retrain the quick heads (k-NN, logistic regression) on ``version`` so issue scores, the review
    table, the confusion matrix and the map's colours follow the edit without anyone asking."""
    from components.jobs import start_job

    def work(job):
        time.sleep(1.0)  # let the page redraw the commit first; the retrain competes for the same 2 cores
        from core.train.pipeline import quick_heads_config, train  # imports torch: never on the page's own time

        config = quick_heads_config(workspace(), name)
        if config is None:
            return None  # nothing embedded yet: there is nothing quick to retrain
        return train(workspace(), name, config, version=version, progress=job.progress, should_stop=job.should_stop)

    start_job(f"quick:{name}", f"updating scores for v{version}", work, background=True)


def refresh_status() -> None:
    """A small "updating..." line while the quick heads retrain (polled only while they run)."""
    from components.jobs import current_job

    name = st.session_state.get("dataset")
    job = current_job(f"quick:{name}") if name else None
    if job is None:
        return
    if job.running:
        _poll_refresh(job.key)
    elif job.error and not job.cancelled:
        st.caption(f":material/error: scores not updated: {job.error.splitlines()[0][:160]}")


@st.fragment(run_every=1.0)
def _poll_refresh(key: str) -> None:
    from components.jobs import current_job

    job = current_job(key)
    if job.running:
        st.caption(f":material/sync: {job.description}: {job.stage}")
    else:
        st.rerun(scope="app")  # fresh scores: every page redraws with them


def open_current_version() -> tuple[LabelTable, str, int]:
    """(table, data set name, version) the sidebar points at; stops the page with a hint if there is no data set."""
    table = current_table()
    if table is None:
        st.info("No data set yet: open the Data page to build the demo or import images.")
        st.stop()
    return table, st.session_state["dataset"], pick_version(table)
