"""Map page: the 3D PaCMAP cloud; lasso a cluster, look at it, relabel or exclude it, commit."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st

from components.data_cache import (
    cached_projection,
    forget_projection,
    servable_thumbnails,
    version_rows,
)
from components.gallery import plain, thumbnail_grid
from components.scatter3d import publish_map, scatter3d
from components.sidebar import open_current_version, refresh_scores, show_head_moved, show_version, stale_edit_message, workspace
from core.embed import EmbedderConfig, embed_dataset, list_embeddings, preferred_embedding
from core.errors import ConflictError, UserError
from core.mapping import (
    COLOUR_BY,
    categorical_colours,
    continuous_colours,
    default_message,
    label_mix,
    resolve_label,
    selection_changes,
)
from core.project import ProjectionConfig, project_dataset
from core.runs import find_run, load_samples
from core.tables import UNDEFINED
from core.workspace import DatasetPaths

table, name, version = open_current_version()
rows = version_rows(table, version)
st.title("Map")

# ---------------------------------------------------------------- which embedding, which map
embeddings = list_embeddings(workspace(), name)
default_key = preferred_embedding(workspace(), name)
if not embeddings:
    st.info("These images have no embeddings yet. Embedding runs EfficientNet-Lite0 (ImageNet-pretrained) over every image: about 200 images per second here.")
    if st.button("Embed the images", type="primary"):
        bar = st.progress(0.0, text="embedding...")
        report = embed_dataset(workspace(), name, EmbedderConfig(), version=version, progress=lambda done, total: bar.progress(done / max(total, 1), text=f"embedding {done:,} of {total:,}"))
        st.success(report.describe())
        refresh_scores(name, version)  # first scores (and the first point of the accuracy line) without asking
        st.rerun()
    st.stop()

keys = [m["key"] for m in embeddings]
descriptions = {m["key"]: m.get("description", m["key"]) for m in embeddings}
left, middle, right = st.columns([3, 1, 2])
chosen_key = left.selectbox(
    "Embedding", keys, index=keys.index(default_key) if default_key in keys else 0, format_func=lambda k: f"{descriptions[k]} ({k})",
    help="What the map is made of: the pretrained backbone, a model trained here (trained-...), or a triplet encoder (triplet-...).",
)
dims = middle.radio("View", (3, 2), format_func=lambda d: f"{d}D", horizontal=True, help="PaCMAP to 3D (rotate it) or 2D.")
projection = cached_projection(workspace(), table, name, chosen_key, dims, version)
if projection is None:
    st.info(f"No {dims}D map of this embedding for these images yet. PaCMAP takes about 2 s per 10,000 images here.")
    if st.button(f"Project to {dims}D with PaCMAP", type="primary"):
        bar = st.progress(0.0, text="projecting...")
        started = time.perf_counter()
        project_dataset(workspace(), name, chosen_key, ProjectionConfig(dims=dims), version=version, progress=lambda done, total: bar.progress(done / total, text="projecting with PaCMAP..."))
        forget_projection()
        st.rerun()
    st.stop()

# ---------------------------------------------------------------- colours
frame = rows.set_index("sample_id").loc[projection.sample_ids]
classes = table.classes(version)
try:
    run = find_run(workspace(), name, version=version, with_samples=True)
    scores = load_samples(run).set_index("sample_id").reindex(projection.sample_ids)
except UserError:
    run, scores = None, None
colour_by = right.selectbox("Colour by", COLOUR_BY, key="colour-by", help="Predicted label, label-issue score and confidence come from the latest training run on this version.")
needs_scores = colour_by in ("predicted label", "label-issue score", "confidence")
excluded = (frame["weight"] <= 0).to_numpy()
if colour_by == "given label" or (needs_scores and scores is None):
    colouring = categorical_colours(frame["label"].to_numpy(), classes, excluded)
elif colour_by == "predicted label":
    colouring = categorical_colours(scores["predicted_label"].fillna(UNDEFINED).to_numpy(), classes)
elif colour_by == "split":
    colouring = categorical_colours(frame["split"].fillna("none").astype(str).to_numpy(), ["train", "val", "test"])
elif colour_by == "label-issue score":
    colouring = continuous_colours(scores["issue_score"].to_numpy())
else:
    colouring = continuous_colours(scores["confidence"].to_numpy())
# The same elements above the map on every run: a changed count would make Streamlit remount the
# map (re-fetching and rebuilding 100k points) instead of updating its colours.
if run is not None:
    st.caption(f"Scores from run {run.run_id} ({run.summary.get('best_model')}).")
else:
    st.caption(f"No scores for v{version} yet{': coloured by given label' if needs_scores else ''}. They follow each commit once the images are embedded, or train on the Train page.")

legend_names = [entry["name"] for entry in colouring.palette]
hidden_names = st.multiselect("Hide", legend_names if colouring.categorical else [], key=f"hide-{colour_by}", disabled=not colouring.categorical, help="Hidden points are not drawn and cannot be lassoed (for colourings by a label).")
hidden = [legend_names.index(n) for n in hidden_names]
label_names = list(dict.fromkeys([*classes, UNDEFINED, *frame["label"].unique()]))
label_code_of = {label: i for i, label in enumerate(label_names)}
label_codes = np.array([label_code_of[label] for label in frame["label"].to_numpy()], dtype=np.int16)

paths = DatasetPaths(workspace(), name)
published = publish_map(projection.sample_ids, projection.coords, frame["content_hash"].to_numpy(), f"{name}/{chosen_key}/{dims}")
servable_thumbnails(table, paths.thumbs, version)


@st.fragment
def map_and_selection() -> None:
    """The map with its selection panel reruns on its own: a lasso never reruns the whole page."""
    selection_key = f"selection:{name}"
    wanted = st.session_state.get(selection_key)  # sample ids the user had selected (survives reloads)
    pushed = None
    if wanted is not None and st.session_state.get(f"{selection_key}:push"):
        position = pd.Index(published.sample_ids).get_indexer(np.asarray(wanted["sample_ids"]))
        pushed = {"token": st.session_state[f"{selection_key}:push"], "indices": [int(i) for i in position[position >= 0]]}
    state = scatter3d(
        published, dims=dims, colour_codes=colouring.codes, palette=colouring.palette, label_codes=label_codes, label_names=label_names,
        hidden=hidden, selection=pushed, key=f"map-{name}",
    )
    if state and state.get("token") != st.session_state.get(f"{selection_key}:js"):
        # A new lasso in the browser (the component keeps its last state across reruns: act on it once).
        st.session_state[f"{selection_key}:js"] = state.get("token")
        indices = np.asarray(state.get("indices") or [], dtype=np.int64)
        wanted = {"token": state["token"], "sample_ids": published.sample_ids[indices].tolist()}
        st.session_state[selection_key] = wanted
        st.session_state.pop(f"{selection_key}:push", None)
    selected_ids = np.asarray((wanted or {}).get("sample_ids", []), dtype=np.int64)
    legend = pd.DataFrame(colouring.palette)[["name", "count"]]
    legend_column, panel = st.columns([1, 3])
    legend_column.dataframe(legend, hide_index=True, width="stretch", height=min(36 * (len(legend) + 1), 420))
    with panel:
        show_selection(selected_ids)


def show_selection(selected_ids: np.ndarray) -> None:
    st.markdown(f"**{len(selected_ids):,} selected**", help="Lasso: press L or the Lasso button, then draw. Shift adds to the selection, Alt or Ctrl subtracts.")
    st.session_state["map-selected-count"] = len(selected_ids)
    if not len(selected_ids):
        st.caption("Draw a lasso around a cluster to see its thumbnails and relabel it.")
        return
    chosen = frame.loc[selected_ids]
    mix = label_mix(chosen["label"].to_numpy())
    st.dataframe(mix, hide_index=True, width="stretch", height=min(36 * (len(mix) + 1), 250))
    thumbnail_grid(paths.thumbs, chosen)

    action = st.radio("Action", ("relabel", "exclude", "include"), horizontal=True, key="map-action", help="Exclude keeps the samples in the table with weight 0: never trained on, easy to include again.")
    label, new_class = None, False
    if action == "relabel":
        choice_column, new_column = st.columns(2)
        options = [*classes, UNDEFINED]
        majority = next((label for label in mix["label"] if label in classes), options[0])  # the usual fix: the cluster's own majority
        picked = choice_column.selectbox("Label", options, index=options.index(majority), key=f"map-label-{majority}", help="An existing class, exactly as listed.")
        typed = new_column.text_input("or a new class", key="map-new-label", help="Creates this class with the commit.")
        label, new_class = (typed.strip(), True) if typed.strip() else (picked, False)
    prefilled = default_message(len(chosen), action, label)
    if st.session_state.get("map-message-default") != prefilled:  # a new selection or action: a new suggestion
        st.session_state["map-message-default"] = st.session_state["map-message"] = prefilled
    message = st.text_input("Commit message", key="map-message")
    conflict = st.session_state.get(f"map-conflict:{name}")
    if conflict:
        st.error(f"This data set changed since you loaded it (it is now at v{conflict}; you were editing v{version}). Nothing was written. Reload to see the new version: your selection of {len(selected_ids):,} samples is kept.")
        if st.button("Reload", key="map-reload"):
            del st.session_state[f"map-conflict:{name}"]
            st.session_state[f"selection:{name}:push"] = f"reload-{time.time()}"
            st.session_state["version"] = conflict
            st.session_state["version_follows_head"] = True
            st.rerun(scope="app")
        return
    if st.button("Commit as a new version", type="primary", key="map-commit"):
        try:
            if action == "relabel":
                label, new_class = resolve_label(label, classes, create=new_class)
            changes = selection_changes(selected_ids, action, label, new_class=new_class)
            new_version = table.commit(changes, parent=version, message=message)
        except ConflictError:
            st.session_state[f"map-conflict:{name}"] = table.head_version()
            st.rerun(scope="fragment")
        except UserError as error:
            st.error(str(error))
            return
        show_head_moved(new_version)
        st.session_state[f"selection:{name}:push"] = f"commit-{new_version}"
        st.toast(f"Committed v{new_version}: {plain(message)}")
        st.rerun(scope="app")


map_and_selection()
