"""The error boundary every page runs inside."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from labelloop.errors import UserError


@contextmanager
def user_errors_shown() -> Iterator[None]:
    """A UserError that reaches here is shown as an error box with its message (which says what to do),
    never as a traceback; the rest of the page up to it stays on screen. Streamlit's own control flow
    (st.rerun, st.stop, st.switch_page) is not an error and passes through."""
    try:
        yield
    except UserError as error:
        st.error(str(error))
