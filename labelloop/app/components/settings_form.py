"""A family's settings as a form: one widget per setting the family reads, built from its declaration
(:mod:`labelloop.app.components.setting_widgets`), with the family's own pickers for its model and embedding."""

from __future__ import annotations

import streamlit as st

from labelloop.app.components.model_picker import model_picker
from labelloop.app.components.setting_widgets import setting_widget, settings_of
from labelloop.app.components.sidebar import workspace
from labelloop.errors import UserError
from labelloop.train.settings import FamilySettings

COLUMNS = 4


def settings_form(settings_class: type[FamilySettings], key: str, embeddings: list[str], default_embedding: str | None, submit: str) -> FamilySettings | None:
    """The settings the user submitted (validated), or None until they press ``submit`` (or if they are invalid: then an error shows)."""
    infos = settings_class.settings()
    values: dict = {}
    with st.form(key):
        # A multiple choice gets a row of its own: in a quarter of the form its chips were cut off.
        for info in [i for i in infos if i.is_tuple and i.choices]:
            values[info.name] = setting_widget(st, info)
        if not embeddings and any(i.name == "embedding" for i in infos):  # above the grid: inside a cell it broke the rows
            st.warning("No embeddings yet: make them on the Map page (Embed the images), then train.")
        for info in [i for i in infos if i.name == "backbone"]:  # a row of its own: the list says size, speed and whether it is cached
            values[info.name] = model_picker(st, workspace(), key=f"{key}-backbone", label=info.label, default=info.default, in_form=True)
        columns = st.columns(COLUMNS)
        placed = 0
        for info in infos:
            if (info.is_tuple and info.choices) or info.name == "backbone":
                continue
            where = columns[placed % COLUMNS]
            placed += 1
            if info.name == "embedding":
                options = embeddings or [default_embedding or "none yet"]
                values[info.name] = where.selectbox(info.label, options, index=options.index(default_embedding) if default_embedding in options else 0, help=info.help)
            else:
                values[info.name] = setting_widget(where, info)
        submitted = st.form_submit_button(submit, type="primary")
    if not submitted:
        return None
    try:
        return settings_of(settings_class, values)
    except UserError as error:
        st.error(str(error))
    return None
