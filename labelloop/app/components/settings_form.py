"""A family's settings as a form: one widget per setting the family reads, built from its settings class."""

from __future__ import annotations

import streamlit as st

from labelloop.app.components.model_picker import model_picker
from labelloop.app.components.sidebar import workspace
from labelloop.errors import UserError
from labelloop.train.settings import FamilySettings, SettingInfo

COLUMNS = 4


def settings_form(settings_class: type[FamilySettings], key: str, embeddings: list[str], default_embedding: str | None, submit: str) -> FamilySettings | None:
    """The settings the user submitted (validated), or None until they press ``submit`` (or if they are invalid: then an error shows)."""
    infos = settings_class.settings()
    texts: dict[str, str] = {}
    values: dict = {}
    with st.form(key):
        # A multiple choice gets a row of its own: in a quarter of the form its chips were cut off.
        for info in [i for i in infos if i.is_tuple and i.choices]:
            values[info.name] = tuple(st.multiselect(info.label, info.choices, default=list(info.default), help=info.help))
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
            elif info.is_tuple:
                texts[info.name] = where.text_input(info.label, ",".join(map(str, info.default)), help=info.help + " Comma-separated.")
            else:
                values[info.name] = _widget(where, info)
        submitted = st.form_submit_button(submit, type="primary")
    if not submitted:
        return None
    try:
        for name, text in texts.items():
            values[name] = next(i for i in infos if i.name == name).parse(text)
        settings = settings_class(**values)
        settings.validate()
        return settings
    except UserError as error:
        st.error(str(error))
    return None


def _widget(where, info: SettingInfo):
    """One setting's widget; for an optional number 0 (and for text, empty) means None."""
    if info.choices:
        return where.selectbox(info.label, info.choices, index=info.choices.index(info.default), help=info.help)
    if info.kind is str:
        text = where.text_input(info.label, info.default or "", placeholder=info.none or None, help=info.help)
        return text.strip() or None
    if info.optional:
        number = where.number_input(f"{info.label} (0: {info.none})", 0, int(info.maximum), 0, help=info.help)
        return int(number) or None
    if info.kind is int:
        return int(where.number_input(info.label, int(info.minimum), int(info.maximum), int(info.default), help=info.help or None))
    small = info.default and abs(info.default) < 0.01
    return float(where.number_input(info.label, float(info.minimum), float(info.maximum), float(info.default), format="%.2e" if small else "%.4g", help=info.help or None))
