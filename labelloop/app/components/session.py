"""Everything the app keeps in a browser session (``st.session_state``), named in one place.

State that belongs to a data set has one key per data set (:func:`keys`), so a
session that switches data sets finds each one as it left it. Widget keys that
only one page reads and that nothing else refers to stay in that page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import streamlit as st

from labelloop.app import VIEWS

DATASET = "dataset"  # the data set the sidebar shows
TRAIN_ANNOUNCED = "announced"  # the run id of the last finished training job the Train page showed
MAP_MESSAGE = "map-message"  # the commit message box on the Map page (a widget key)
MAP_MESSAGE_DEFAULT = "map-message-default"  # the message the Map page last suggested
MAP_SELECTED_COUNT = "map-selected-count"
FINISHED_JOBS_SEEN = "finished-jobs-seen"  # (job key, start time) of background jobs whose result this session was shown
FOLLOWED_JOBS = "followed-jobs"  # (job key, start time) of jobs this session started or saw running: only their end is its to see
IMPORTED = "imported"  # the import that just finished, shown once at the top of the Data page
COMPUTE = "compute"  # the compute setting (labelloop.compute.device.Compute) this session's jobs run with
COMPUTE_CHANGED = "compute-changed"  # the compute setting was just changed: its expander opens once to show the outcome
MAP_SETTINGS = "map-settings"  # the map settings (labelloop.maps.config.ProjectionConfig) this session projects with, but its dims
COMPUTE_SEEN = "compute-seen"  # what the last "Check" of the Ray address found (a line of text)
OWNER = "owner"  # a random token naming this session: jobs only it should see the end of (an import) carry it  # how many samples the map's selection holds (read by tests and benchmarks)


@dataclass(frozen=True)
class DatasetKeys:
    """The session-state keys of one data set, named by what they hold."""

    name: str

    @property
    def version(self) -> str:
        """The version this session shows; only the user or this session's own commits move it."""
        return f"version:{self.name}"

    @property
    def picked_old(self) -> str:
        """True when the user chose an older version on purpose (not left behind by another tab's commit)."""
        return f"picked-old:{self.name}"

    @property
    def selection(self) -> str:
        """The Map page's selection: {"token", "sample_ids"}; other pages hand theirs over with :func:`hand_to_map`."""
        return f"selection:{self.name}"

    @property
    def selection_push(self) -> str:
        """Set when the selection must be drawn on the map anew (a hand-over, a commit, a reload)."""
        return f"selection:{self.name}:push"

    @property
    def selection_js(self) -> str:
        """The token of the last selection the map component sent, so it is taken once."""
        return f"selection:{self.name}:js"

    @property
    def map_left_out(self) -> str:
        return f"map-left-out:{self.name}"

    @property
    def map_committed(self) -> str:
        return f"map-committed:{self.name}"

    @property
    def map_confirming(self) -> str:
        """The edit (its signature) whose commit the user clicked and must confirm: it changes many samples."""
        return f"map-confirming:{self.name}"

    @property
    def review_pin(self) -> str:
        """The run the Review page stays on (None: follow the newest)."""
        return f"review-pin:{self.name}"

    @property
    def queue_decisions(self) -> str:
        """The review queue's decisions waiting to be committed: sample id -> labelloop.scores.review.Decision."""
        return f"queue-decisions:{self.name}"

    @property
    def queue_tally(self) -> str:
        return f"queue-tally:{self.name}"

    @property
    def queue_current(self) -> str:
        """The sample the review queue shows: it stays until the reviewer decides it."""
        return f"queue-current:{self.name}"

    @property
    def train_show(self) -> str:
        """The run the Train page shows."""
        return f"train-show:{self.name}"

    @property
    def train_started(self) -> str:
        return f"train-started:{self.name}"

    @property
    def train_job(self) -> str:
        """The data set's training job (jobs live in the server: a reload finds it again)."""
        return f"train:{self.name}"


def keys(name: str) -> DatasetKeys:
    return DatasetKeys(name)


def owner() -> str:
    """This browser session's token (made on first use)."""
    import uuid

    return st.session_state.setdefault(OWNER, uuid.uuid4().hex[:12])


def current_dataset() -> str | None:
    return st.session_state.get(DATASET)


def choose_dataset(name: str) -> None:
    st.session_state[DATASET] = name


def select_on_map(name: str, sample_ids, origin: str) -> str:
    """Make these samples the Map page's selection (drawn selected, listed beside the map); returns its token."""
    token = f"{origin}-{time.time()}"
    st.session_state[keys(name).selection] = {"token": token, "sample_ids": [int(i) for i in sample_ids]}
    st.session_state[keys(name).selection_push] = token
    return token


def hand_to_map(name: str, sample_ids, origin: str) -> None:
    """Make these samples the Map page's selection and open it (the confusion matrix, a label-flow cell)."""
    select_on_map(name, sample_ids, origin)
    st.switch_page(VIEWS / "map.py")
