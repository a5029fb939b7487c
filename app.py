"""LabelLoop: see your image data, fix its labels, retrain, and know whether the fix helped.

Run with `./run.sh` (sets everything up) or `.venv/bin/streamlit run app.py`.
The workspace is tables/ unless LABELLOOP_WORKSPACE says otherwise.
"""

import streamlit as st

from components.errors import user_errors_shown
from components.jobs import page_being_drawn
from components.sidebar import pick_dataset, refresh_status

st.set_page_config(page_title="LabelLoop", page_icon=":material/label:", layout="wide")

navigation = st.navigation(
    [
        st.Page("app_pages/data.py", title="Data", icon=":material/table_view:", default=True),
        st.Page("app_pages/map.py", title="Map", icon=":material/scatter_plot:"),
        st.Page("app_pages/review.py", title="Review", icon=":material/fact_check:"),
        st.Page("app_pages/health.py", title="Health", icon=":material/health_and_safety:"),
        st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    ],
)
st.sidebar.title("LabelLoop")
with user_errors_shown(), page_being_drawn():
    pick_dataset()
    with st.sidebar:
        refresh_status()
    navigation.run()
