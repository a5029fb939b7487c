"""LabelLoop: versioned image label tables, a 3D map to fix labels on, training, and did-the-fix-help.

The package by layer, each importing only those below it (tests/test_codebase.py checks):
``errors``; ``data`` (tables, storage, workspace, import, runs); ``compute`` (device,
Ray connection, neighbours); ``embed``; ``maps`` and ``train``; ``scores``; ``cli``;
``app`` (the Streamlit app, the only place that imports streamlit).
"""
