"""LabelLoop: see your image data, fix its labels, retrain, and know whether the fix helped.

The Streamlit entry script: `labelloop app` runs it (`./run.sh` sets everything up first).
Its settings are in .streamlit/config.toml beside it; the workspace is $LABELLOOP_WORKSPACE
(see labelloop.data.workspace for the default). Pages are pages/*.py, one module each.
"""

import streamlit as st

from labelloop.app.components.errors import user_errors_shown
from labelloop.app.components.jobs import page_being_drawn
from labelloop.app.components.sidebar import pick_dataset, refresh_status

st.set_page_config(page_title="LabelLoop", page_icon=":material/label:", layout="wide")

navigation = st.navigation(
    [
        st.Page("pages/data.py", title="Data", icon=":material/table_view:", default=True),
        st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
        st.Page("pages/review.py", title="Review", icon=":material/fact_check:"),
        st.Page("pages/health.py", title="Health", icon=":material/health_and_safety:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    ],
)
st.sidebar.title("LabelLoop")
with user_errors_shown(), page_being_drawn():
    pick_dataset()
    with st.sidebar:
        refresh_status()
    navigation.run()
