"""One way every page commits an edit, and one way it shows a refused one.

A commit names the version the page showed (``parent``). When another tab or
user committed in between, the table refuses it (:class:`ConflictError`) and
nothing is written. Then :func:`commit_edit` remembers the refusal in the
session (per page and data set) and reruns, so the refusal is drawn by
:func:`refused_commit` on every later run of the page, not only in the run
where the commit failed: its Reload button is there when the user clicks it.
The user's edit (selection, ticks, typed labels) lives in the page's own
widgets and stays; after Reload it can be committed again on the new head.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from labelloop.app.components.gallery import plain
from labelloop.app.components.session import current_dataset
from labelloop.app.components.sidebar import (
    show_head_moved,
    show_version,
    stale_edit_message,
)
from labelloop.data.changes import ChangeSet
from labelloop.data.tables import LabelTable
from labelloop.errors import ConflictError, UserError


def _refusal_key(page: str) -> str:
    return f"commit-refused:{page}:{current_dataset()}"


def commit_edit(table: LabelTable, changes: ChangeSet, *, parent: int, message: str, page: str, rerun_scope: str = "app") -> int | None:
    """Commit ``changes`` made on version ``parent``; the new version, or None when it was not written.

    Refused because the head moved: the refusal is remembered and the page (or, with
    ``rerun_scope="fragment"``, its fragment) reruns to show it. A mistake in the edit itself
    (a UserError): its message is shown here and None returned. After a commit the session
    looks at the new version and its scores refresh in the background; the caller reruns.
    """
    try:
        new_version = table.commit(changes, parent=parent, message=message)
    except ConflictError:
        st.session_state[_refusal_key(page)] = parent
        st.rerun(scope=rerun_scope)
    except UserError as error:
        st.error(str(error))
        return None
    st.session_state.pop(_refusal_key(page), None)
    show_head_moved(new_version)
    st.toast(f"Committed v{new_version}: {plain(message)}")
    return new_version


def refused_commit(table: LabelTable, page: str, *, on_reload: Callable[[], None] | None = None) -> bool:
    """If this page's last commit was refused: say why and what to do, with a Reload to the latest version.
    True while it is shown (the page then offers no commit button: the edit would be refused again).

    ``on_reload``: what else the page resets when the user reloads (the map re-sends its selection).
    """
    shown = st.session_state.get(_refusal_key(page))
    if shown is None:
        return False
    st.error(stale_edit_message(table, shown))
    if st.button(f"Reload v{table.head_version()}", key=f"{page}-reload"):
        del st.session_state[_refusal_key(page)]
        if on_reload is not None:
            on_reload()
        show_version(table.head_version())
        st.rerun(scope="app")
    return True
