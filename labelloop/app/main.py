"""LabelLoop: see your image data, fix its labels, retrain, and know whether the fix helped.

The app's entry: `labelloop app` runs the workspace's entry script (labelloop.cli.data.write_launcher), which
calls :func:`main`; `./run.sh` sets everything up first. Its settings are the package's .streamlit/config.toml,
copied beside that script; the workspace is $LABELLOOP_WORKSPACE (see labelloop.data.workspace for the default).
Pages are views/*.py, one module each (not pages/: Streamlit would list that folder as pages of its own), named
by their absolute paths: the entry script is not beside them.
"""

import functools

import streamlit as st
from PIL import Image, ImageDraw

from labelloop.app import VIEWS
from labelloop.app.components.errors import user_errors_shown
from labelloop.app.components.jobs import page_being_drawn
from labelloop.app.components.sidebar import (
    pick_dataset,
    refresh_status,
    training_status,
)


@functools.cache
def favicon() -> Image.Image:
    """A label tag, drawn here: a Material icon as the page icon made every page load fetch it from
    fonts.gstatic.com, which an offline machine blocks (a console error) and an online one tells Google about."""
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.polygon([(6, 14), (40, 14), (60, 32), (40, 50), (6, 50)], fill=(230, 159, 0, 255))  # the map's first class colour
    draw.ellipse((14, 27, 24, 37), fill=(14, 17, 23, 255))  # the tag's hole, in the map's background
    return image


def main() -> None:
    st.set_page_config(page_title="LabelLoop", page_icon=favicon(), layout="wide")
    navigation = st.navigation(
        [  # URLs by file name, as before: / (Data), /map, /review, /health, /train, /compare
            st.Page(VIEWS / "data.py", title="Data", icon=":material/table_view:", default=True),
            st.Page(VIEWS / "map.py", title="Map", icon=":material/scatter_plot:"),
            st.Page(VIEWS / "review.py", title="Review", icon=":material/fact_check:"),
            st.Page(VIEWS / "health.py", title="Health", icon=":material/health_and_safety:"),
            st.Page(VIEWS / "train.py", title="Train", icon=":material/model_training:"),
            st.Page(VIEWS / "compare.py", title="Compare", icon=":material/compare_arrows:"),
        ],
    )
    st.sidebar.title("LabelLoop")
    with user_errors_shown(), page_being_drawn():
        pick_dataset()
        try:
            navigation.run()
        finally:
            # Last in the sidebar, under everything the user clicks there: the refresh's line turning into its
            # notice (or going) changes its height, and nothing may move under the pointer (issue 27 item 9).
            with st.sidebar:
                training_status(on_train_page=navigation.title == "Train")
                refresh_status()


if __name__ == "__main__":  # `streamlit run labelloop/app/main.py` (or AppTest) straight on the package's script
    main()
