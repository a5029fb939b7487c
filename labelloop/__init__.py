"""LabelLoop: versioned image label tables, a 3D map to fix labels on, training, and did-the-fix-help.

From Python (see :mod:`labelloop.api`)::

    import labelloop
    ds = labelloop.open("flowers")          # or labelloop.import_folder("~/photos/flowers", "flowers")
    ds.read(); ds.embed(); ds.train("heads"); ds.issues()

The package by layer, each importing only those below it (tests/test_codebase.py checks):
``errors``; ``data`` (tables, storage, workspace, import, runs); ``compute`` (device,
Ray connection, neighbours); ``embed``; ``maps`` and ``train``; ``scores``; ``api`` and
``cli``; ``app`` (the Streamlit app, the only place that imports streamlit).
"""

from labelloop.errors import ConflictError, UserError

__version__ = "0.1.0"
_API = ("Dataset", "datasets", "import_folder", "open")


def __getattr__(name: str):
    # The API imports every layer (torch among them); `import labelloop.data` alone must stay light.
    if name in _API:
        from labelloop import api

        return getattr(api, name)
    raise AttributeError(f"module 'labelloop' has no attribute '{name}'")


__all__ = ["ConflictError", "UserError", *_API]
