"""The one exception type for errors a user can cause and fix.

The UI shows the message with ``st.error``; the CLI prints it on one line and
exits with status 2. Every message says what went wrong *and* what to do.
"""


class UserError(Exception):
    """A problem with the user's input or state that they can fix."""


class ConflictError(UserError):
    """A commit named a parent version that is no longer the head."""

    def __init__(self, message: str, *, parent: int, head: int):
        super().__init__(message)
        self.parent = parent
        self.head = head


class Cancelled(UserError):
    """The user stopped a long job; what was finished is kept."""


class StorageError(UserError):
    """Writing to disk failed (disk full, read-only folder, I/O error); nothing was committed."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason
