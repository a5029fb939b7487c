"""Map page: the 3D PaCMAP cloud; lasso a cluster, look at it, relabel or exclude it, commit."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from labelloop.app.components.compute_setting import current_compute
from labelloop.app.components.data_cache import (
    cached_health,
    cached_projection,
    forget_projection,
    servable_thumbnails,
    version_rows,
)
from labelloop.app.components.gallery import plain
from labelloop.app.components.jobs import follow_job, running, start_job
from labelloop.app.components.model_picker import model_picker
from labelloop.app.components.scatter3d import PublishedMap, publish_map, scatter3d
from labelloop.app.components.selection_editor import MapEdit, selection_editor
from labelloop.app.components.session import (
    MAP_SETTINGS,
    keys,
    select_on_map,
)
from labelloop.app.components.setting_widgets import setting_widget, settings_of
from labelloop.app.components.sidebar import (
    open_current_version,
    refresh_scores,
    workspace,
)
from labelloop.compute.measured import last_rate
from labelloop.data.lookup import positions_in
from labelloop.data.runs import find_run, load_samples
from labelloop.data.schema import UNDEFINED
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import DatasetPaths
from labelloop.embed import (
    embed_dataset,
    list_embeddings,
    preferred_embedding,
)
from labelloop.embed.models import config_of
from labelloop.embed.similar import more_like_this, parse_sample_ids
from labelloop.embed.text import closest_to_text, text_config
from labelloop.errors import UserError
from labelloop.maps.cache import Projection
from labelloop.maps.config import ProjectionConfig
from labelloop.maps.project import has_map, project_dataset
from labelloop.maps.view import (
    COLOUR_BY,
    NO_VALUE_COLOUR,
    Colouring,
    categorical_colours,
    continuous_colours,
)
from labelloop.scores.checks import CHECKS

METHOD_NAMES = {"pacmap": "PaCMAP", "tsne": "t-SNE", "pca": "PCA"}

# Sized so that on a 1440x900 window the header, the whole map and the first rows of the selection's
# thumbnails (in the column beside the map) are in view together: judging a lasso means seeing both.
MAP_HEIGHT = 560


@dataclass
class MapView:
    """One drawn map: its published points, their colour and label codes, and its component's keys."""

    published: PublishedMap
    colour_codes: np.ndarray
    label_codes: np.ndarray
    key: str
    seen_key: str  # session key: the token of the last selection this map's component sent


@dataclass
class MapPage:
    """What one run of the page draws: the version shown, the chosen map and its colours, the maps to draw."""

    table: LabelTable
    name: str
    version: int
    paths: DatasetPaths
    classes: list[str]
    chosen_key: str
    config: ProjectionConfig  # the map's settings: the session's (Map settings) in the dimensions picked
    text_model: object | None  # the CLIP text tower's config when a CLIP model made the chosen embedding
    projection: Projection
    frame: pd.DataFrame  # the version's rows on the map, indexed by sample_id
    scores: pd.DataFrame | None
    colouring: Colouring
    hidden: list[int]
    label_names: list[str]
    maps: list[MapView]
    scores_note: str
    beside_note: str
    n_images: int  # of the version, on the map or not


def embed_with_a_model(name: str, version: int, n_images: int, *, first: bool) -> None:
    """Pick a model and embed this version's images with it (a background job; the cache keeps what is done)."""
    embed_key = f"embed:{name}"
    if running(embed_key):
        return
    picker, button = st.columns([4, 1], vertical_alignment="bottom")
    model = model_picker(picker, workspace(), key="map-embed-model")
    rate = last_rate(workspace(), f"embed {model}")
    if rate:
        st.caption(f"{model}: {rate.estimate(n_images)}.")
    if button.button("Embed the images", type="primary" if first else "secondary", key="map-embed", disabled=not model):
        try:
            config = config_of(model, device=current_compute().device)
            config.validate()
        except UserError as error:
            st.error(str(error))
            return
        compute = current_compute()
        published = config.published()
        download = "" if published is None or published.cached else " (its weights download first, once: the server's log shows that progress)"
        start_job(embed_key, f"embedding with {model}{download}", lambda job: embed_dataset(
            workspace(), name, config, version=version, should_stop=job.should_stop, ray=compute.ray,
            progress=lambda done, total: job.progress(f"{done:,} of {total:,} images", done / max(total, 1)),
        ))
        st.rerun()


def current_map_settings() -> ProjectionConfig:
    """The map settings this session projects with (the defaults, until changed under Map settings)."""
    return st.session_state.get(MAP_SETTINGS) or ProjectionConfig()


def map_settings(config: ProjectionConfig) -> None:
    """The Map settings expander: every setting of a map but its dimensions (the View picks those), from their declaration.

    Each set of settings is a map of its own (cached apart, so going back to one costs nothing); the page then shows
    the map with these settings, or offers to make it.
    """
    changed = config.changed_from(ProjectionConfig(dims=config.dims))
    with st.expander("Map settings" + (f": {', '.join(changed)}" if changed else f": {METHOD_NAMES[config.method]}, the defaults")):
        with st.form("map-settings-form", border=False):
            columns = st.columns(4)
            shown = [info for info in ProjectionConfig.settings() if info.name != "dims"]
            values = {info.name: setting_widget(columns[i % 4], info, getattr(config, info.name), key=f"map-setting-{info.name}") for i, info in enumerate(shown)}
            use, reset = st.columns([1, 5])
            used = use.form_submit_button("Use these settings")
            defaults_asked = reset.form_submit_button("Back to the defaults")
        if used or defaults_asked:
            try:
                chosen = ProjectionConfig() if defaults_asked else settings_of(ProjectionConfig, values)
            except UserError as error:
                st.error(str(error))
                return
            st.session_state[MAP_SETTINGS] = chosen
            st.rerun()


def other_model(name: str, version: int, n_images: int) -> None:
    with st.expander("Embed with another model"):
        st.caption("Each model's vectors are cached apart (keyed by model and weights), and each gets its own map: pick it under Embedding once it is done.")
        embed_with_a_model(name, version, n_images, first=False)


def project_job(name: str, key: str, config: ProjectionConfig) -> str:
    return f"project:{name}:{key}:{config.key()}"


def start_projecting(name: str, version: int, key: str, config: ProjectionConfig, *, refit: bool) -> None:
    """Fit the map (the first time, or when asked to refit), or place the images added since on it."""
    start_job(project_job(name, key, config), f"{'refitting' if refit else 'projecting'} to {config.dims}D with {METHOD_NAMES[config.method]}", lambda job: project_dataset(
        workspace(), name, key, config, version=version, refit=refit,
        progress=lambda done, total: job.progress("optimising the layout", done / max(total, 1)),
    ))
    st.rerun()


def embeddings_or_stop(name: str, version: int, n_images: int) -> list[dict]:
    """The cached embeddings; without one, the way to make one (and the page stops there)."""
    embeddings = list_embeddings(workspace(), name)
    embed_key = f"embed:{name}"
    if not embeddings:
        failed = follow_job(embed_key)
        if failed is not None:  # it ended without caching a vector: every image failed
            st.warning(failed.result.describe())
        if not running(embed_key):
            st.info("These images have no embeddings yet. Pick the model to embed them with: the bundled EfficientNet-Lite0 works "
                    "offline; the others download their weights once into their library's cache.")
            embed_with_a_model(name, version, n_images, first=True)
        st.stop()
    embedded = follow_job(embed_key)  # the embedding job's end, seen once: its report, and the first scores
    if embedded is not None:
        st.success(embedded.result.describe())
        refresh_scores(name, version)  # first scores (and the first point of the accuracy line) without asking
    return embeddings


def projection_or_stop(table: LabelTable, name: str, version: int, key: str, config: ProjectionConfig, n_images: int):
    """The map of ``key`` with ``config``; without one, the button that makes it (and the page stops there)."""
    dims, method = config.dims, METHOD_NAMES[config.method]
    projection = cached_projection(workspace(), table, name, key, config, version)
    project_key = project_job(name, key, config)
    if follow_job(project_key) is not None:
        forget_projection()
        projection = cached_projection(workspace(), table, name, key, config, version)
    if projection is not None:
        return projection
    if not running(project_key):
        if has_map(workspace(), name, key, config):
            st.info(f"Some images of v{version} are not on the {dims}D map yet: they were added since it was fitted. Placing puts each "
                    "where its nearest fitted images are; the map itself does not move. Refit it later to fit them too.")
            if st.button("Place them on the map", type="primary"):
                start_projecting(name, version, key, config, refit=False)
        else:
            rate = last_rate(workspace(), f"project {config.method} {dims}d")
            st.info(f"No {dims}D map of this embedding with these settings yet" + (f". {method}: {rate.estimate(n_images)}." if rate else "."))
            if st.button(f"Project to {dims}D with {method}", type="primary"):
                start_projecting(name, version, key, config, refit=False)
    map_settings(config)
    other_model(name, version, n_images)
    st.stop()


def colouring_of(colour_by: str, name: str, version: int, chosen_key: str, projection, frame: pd.DataFrame, classes: list[str]):
    """(the colouring, the newest run's per-sample scores or None, a line saying where the colours come from)."""
    try:
        run = find_run(workspace(), name, version=version, with_samples=True)
        scores = load_samples(run).set_index("sample_id").reindex(projection.sample_ids)
    except UserError:
        run, scores = None, None
    needs_scores = colour_by in ("predicted label", "label-issue score", "confidence")
    health = cached_health(workspace(), name, version, chosen_key) if colour_by in ("health issue", "outlier score") else None
    if colour_by == "outlier score" and health is not None and health.results["outlier"].status != "ran":
        health = None  # computed without this embedding's checks: nothing to colour by
    if health is not None:
        health_of = health.samples.set_index("sample_id").reindex(projection.sample_ids)
    excluded = (frame["weight"] <= 0).to_numpy()
    if colour_by == "given label" or (needs_scores and scores is None) or (colour_by in ("health issue", "outlier score") and health is None):
        colouring = categorical_colours(frame["label"], classes, excluded)
    elif colour_by == "predicted label":
        colouring = categorical_colours(scores["predicted_label"].fillna(UNDEFINED).to_numpy(), classes, grey_colour=NO_VALUE_COLOUR)
    elif colour_by == "split":
        colouring = categorical_colours(frame["split"].fillna("none").astype(str).to_numpy(), ["train", "val", "test"], grey="none", grey_colour=NO_VALUE_COLOUR)
    elif colour_by == "health issue":  # the first check that flags a sample, in the Health page's order; unflagged in grey
        first_issue = health.issue_types().reindex(projection.sample_ids).fillna("").str.split(",").str[0].replace("", "no issue").to_numpy()
        colouring = categorical_colours(first_issue, [c.title for c in CHECKS.values() if c.title in set(first_issue)], grey="no issue", grey_colour=NO_VALUE_COLOUR)
    elif colour_by == "outlier score":
        colouring = continuous_colours(health_of["outlier_score"].to_numpy())
    elif colour_by == "label-issue score":
        colouring = continuous_colours(scores["issue_score"].to_numpy())
    else:
        colouring = continuous_colours(scores["confidence"].to_numpy())
    # The same elements above the map on every run: a changed count would make Streamlit remount the
    # map (re-fetching and rebuilding 100k points) instead of updating its colours. Whatever varies
    # (where the scores come from, the selection) goes under the map or beside it.
    if colour_by in ("health issue", "outlier score"):
        scores_note = ("Health checks of this version and embedding (Health page)." if health is not None else
                       f"No health checks of v{version} with this embedding yet: coloured by given label. Compute them on the Health page.")
    elif run is not None:
        scores_note = f"Scores from run {run.run_id} ({run.summary.best_model})."
    else:
        scores_note = f"No scores for v{version} yet{': coloured by given label' if needs_scores else ''}. They follow each commit once the images are embedded, or train on the Train page."
    return colouring, scores, scores_note


def beside_view(table: LabelTable, name: str, version: int, beside_key: str, config: ProjectionConfig, projection, colouring: Colouring, rows: pd.DataFrame, label_names: list[str]) -> tuple[MapView | None, str]:
    """The second embedding's map in the first one's colours (the same sample, the same colour, whichever space it sits in)."""
    beside = cached_projection(workspace(), table, name, beside_key, config, version)
    if beside is None:
        return None, f"No {config.dims}D map of {beside_key} for v{version} with these settings yet: pick it as Embedding and project it, then come back to see both."
    at = pd.Index(projection.sample_ids).get_indexer(beside.sample_ids)
    beside_frame = rows.set_index("sample_id").reindex(beside.sample_ids)
    colour_codes = np.where(at >= 0, colouring.codes[np.maximum(at, 0)], len(colouring.palette) - 1).astype(np.int16)
    view = MapView(
        publish_map(beside.sample_ids, beside.coords, beside_frame["content_hash"], f"{name}/{beside_key}/{config.key()}"), colour_codes,
        positions_in(beside_frame["label"], label_names).astype(np.int16), f"map-{name}-beside", keys(name).selection_js + ":beside",
    )
    return view, f"Right: {beside.describe()}."


def build_page() -> MapPage:
    """The controls above the map (embedding, a second one beside it, 2D/3D, colours, hidden labels) and what they choose."""
    table, name, version = open_current_version()
    rows = version_rows(table, version)
    st.title("Map")
    embeddings = embeddings_or_stop(name, version, len(rows))
    default_key = preferred_embedding(workspace(), name)
    embedding_keys = [m["key"] for m in embeddings]
    descriptions = {m["key"]: m.get("description", m["key"]) for m in embeddings}
    left, beside_column, middle, right, far = st.columns([3, 2, 1, 2, 2])  # one row: the map starts as high as a laptop screen allows
    chosen_key = left.selectbox(
        "Embedding", embedding_keys, index=embedding_keys.index(default_key) if default_key in embedding_keys else 0, format_func=lambda k: f"{descriptions[k]} ({k})",
        key=f"map-embedding:{name}", persist_state="session", help="What the map is made of: the pretrained backbone, a model trained here (trained-...), or a triplet encoder (triplet-...).",
    )
    # "" for one map, not None: a kept None would come back as no choice at all ("Choose an option").
    beside_key = beside_column.selectbox(
        "Side by side with", ["", *[k for k in embedding_keys if k != chosen_key]], format_func=lambda k: "(one map)" if not k else f"{descriptions[k]} ({k})",
        key=f"map-beside:{name}", persist_state="session", help="A second embedding's map beside this one (for example the pretrained one and a model trained here). "
        "A lasso in either selects the same samples in both: a cluster that looks mixed in one space may be clean in the other.",
    )
    text_model = text_config(workspace(), name, chosen_key)  # a CLIP model made it: text search works
    dims = middle.radio("View", (3, 2), format_func=lambda d: f"{d}D", horizontal=True, key="map-dims", persist_state="session", help="PaCMAP to 3D (rotate it) or 2D.")
    config = dataclasses.replace(current_map_settings(), dims=dims)
    projection = projection_or_stop(table, name, version, chosen_key, config, len(rows))
    frame = rows.set_index("sample_id").reindex(projection.sample_ids)  # every id is a row of this version: reindex is .loc without the checks (instant when all are on the map)
    classes = table.classes(version)
    colour_by = right.selectbox("Colour by", COLOUR_BY, key="colour-by", persist_state="session", help="Predicted label, label-issue score and confidence come from the latest training run on this version; "
                                "health issue (the first check that flags each sample, in the Health page's order) and outlier score from the Health page's checks of this version and embedding (low outlier score = more unusual).")
    colouring, scores, scores_note = colouring_of(colour_by, name, version, chosen_key, projection, frame, classes)
    legend_names = [entry["name"] for entry in colouring.palette]
    hidden_names = far.multiselect("Hide", legend_names if colouring.categorical else [], key=f"hide-{colour_by}:{name}", persist_state="session", disabled=not colouring.categorical, help="Hidden points are not drawn and cannot be lassoed (for colourings by a label).")
    hidden = [legend_names.index(n) for n in hidden_names]
    label_names = list(dict.fromkeys([*classes, UNDEFINED, *frame["label"].unique()]))
    label_codes = positions_in(frame["label"], label_names).astype(np.int16)  # every label is among the names

    paths = DatasetPaths(workspace(), name)
    published = publish_map(projection.sample_ids, projection.coords, frame["content_hash"], f"{name}/{chosen_key}/{config.key()}")
    servable_thumbnails(table, paths.thumbs, version)
    maps = [MapView(published, colouring.codes, label_codes, f"map-{name}", keys(name).selection_js)]
    beside_note = ""
    if beside_key:
        second, beside_note = beside_view(table, name, version, beside_key, config, projection, colouring, rows, label_names)
        if second is not None:
            maps.append(second)
    return MapPage(table, name, version, paths, classes, chosen_key, config, text_model, projection, frame, scores, colouring, hidden, label_names, maps, scores_note, beside_note, len(rows))


@st.fragment
def map_and_selection(page: MapPage) -> None:
    """The map with its selection panel beside it reruns on its own: a lasso never reruns the whole page."""
    name, maps = page.name, page.maps
    if len(maps) == 1:
        map_column, panel = st.columns([9, 8], gap="medium")  # side by side: the lasso and what it caught in view together
        with map_column:
            map_slot, under_map = st.container(), st.container()
        slots = [map_slot]
    else:  # two spaces side by side, what the lasso caught under them
        slots = list(st.columns(2, gap="small"))
        map_slot = slots[0]
        under_map, panel = st.container(), st.container()
    with under_map:  # drawn under the map, run before it: a search's selection is drawn in this same run
        if page.text_model is not None:
            find_by_description(page)
        find_more_like_this(page)
    selection_key = keys(name).selection
    wanted = st.session_state.get(selection_key)  # sample ids the user had selected (survives reloads)
    states = []
    for view, slot in zip(maps, slots):
        pushed = None
        if wanted is not None and st.session_state.get(keys(name).selection_push):
            position = pd.Index(view.published.drawn_ids).get_indexer(np.asarray(wanted["sample_ids"]))
            pushed = {"token": st.session_state[keys(name).selection_push], "indices": [int(i) for i in position[position >= 0]]}
        with slot:
            states.append(scatter3d(
                view.published, dims=page.config.dims, colour_codes=view.colour_codes, palette=page.colouring.palette, label_codes=view.label_codes, label_names=page.label_names,
                hidden=page.hidden, selection=pushed, key=view.key, height=MAP_HEIGHT,
            ))
    with map_slot:
        st.caption(page.scores_note)
        if page.beside_note:
            st.caption(page.beside_note)
        about, refit = st.columns([5, 1], vertical_alignment="center")
        about.caption(f"{page.projection.describe()}.")
        if refit.button("Refit", help="Fit the map again on every image of this version (as at most 100,000 of them: the rest are placed). "
                        "Adding images never refits the map by itself: points stay where you learnt them.", disabled=running(project_job(name, page.chosen_key, page.config))):
            start_projecting(name, page.version, page.chosen_key, page.config, refit=True)
    for view, state in zip(maps, states):
        if not state or state.get("token") == st.session_state.get(view.seen_key):
            continue
        # A new lasso in the browser (the component keeps its last state across reruns: act on it once).
        st.session_state[view.seen_key] = state.get("token")
        indices = np.asarray(state.get("indices") or [], dtype=np.int64)
        chosen = view.published.drawn_ids[indices]
        if view.published.budgeted and state.get("lasso"):  # the browser drew a subset: select among every point
            chosen = lasso_over_all_points(view, state["lasso"], np.asarray((wanted or {}).get("sample_ids", []), dtype=np.int64), page.hidden)
        wanted = {"token": state["token"], "sample_ids": [int(i) for i in chosen]}
        st.session_state[selection_key] = wanted
        if len(maps) == 1:
            st.session_state.pop(keys(name).selection_push, None)
        else:
            # Draw it in the other space too: pushed under the lasso's own token, which the map that sent it ignores.
            st.session_state[keys(name).selection_push] = state["token"]
            try:
                st.rerun(scope="fragment")
            except StreamlitAPIException:  # a full-page run (not the fragment's own): rerun the page
                st.rerun()
    selected_ids = np.asarray((wanted or {}).get("sample_ids", []), dtype=np.int64)
    with panel:
        selection_editor(
            MapEdit(page.table, name, page.version, page.classes, page.frame, page.scores, page.paths.thumbs),
            selected_ids, (wanted or {}).get("token"),
            on_reload=lambda: st.session_state.__setitem__(keys(name).selection_push, f"reload-{time.time()}"),
        )


def find_by_description(page: MapPage) -> None:
    """CLIP embeddings only: select the images closest to a typed description (cosine with the text tower's vector)."""
    name, projection = page.name, page.projection
    with st.form("map-text-search", border=False):
        query, count, go = st.columns([5, 3, 2], vertical_alignment="bottom")
        text = query.text_input("Find images by description", placeholder="a blurry photo", key="map-text",
                                help=f"{page.text_model.model_name} compares your text with every image; the closest become the selection.")
        top = count.number_input("How many", 1, max(1, len(projection.sample_ids)), min(50, len(projection.sample_ids)), key="map-text-top")
        submitted = go.form_submit_button("Select")
    if submitted:
        try:
            found = closest_to_text(workspace(), name, page.chosen_key, text, version=page.version, top=int(top))
        except UserError as error:
            st.error(str(error))
            return
        token = select_on_map(name, found["sample_id"], "text")
        st.session_state["map-text-found"] = (token, f"Selected the {len(found):,} images closest to '{plain(text.strip())}' "
                                                     f"(cosine {found['similarity'].max():.2f} to {found['similarity'].min():.2f}).")
    token, said = st.session_state.get("map-text-found") or (None, "")
    if token is not None and token == (st.session_state.get(keys(name).selection) or {}).get("token"):  # until another selection
        st.caption(said)


def find_more_like_this(page: MapPage) -> None:
    """Select samples and their nearest neighbours in this embedding (cosine): given ids, or the current selection."""
    name, projection = page.name, page.projection
    with st.form("map-similar", border=False):
        ids_column, count, go = st.columns([5, 3, 2], vertical_alignment="bottom")
        typed = ids_column.text_input("More like sample", placeholder="#id (or several); empty: the selection", key="map-similar-ids",
                                      help="These samples and their nearest neighbours in this embedding become the selection.")
        k = count.number_input("How many more", 1, max(1, len(projection.sample_ids) - 1), min(50, max(1, len(projection.sample_ids) - 1)), key="map-similar-k")
        submitted = go.form_submit_button("Select", key="map-similar-go")
    if submitted:
        current = (st.session_state.get(keys(name).selection) or {}).get("sample_ids", [])
        try:
            wanted = parse_sample_ids(typed) if typed.strip() else list(current)
            found = more_like_this(workspace(), name, page.chosen_key, wanted, k=int(k), version=page.version)
        except UserError as error:
            st.error(str(error))
            return
        token = select_on_map(name, found["sample_id"], "similar")
        queries = ", ".join(f"#{i}" for i in found.loc[found["is_query"], "sample_id"][:5]) + (" ..." if found["is_query"].sum() > 5 else "")
        st.session_state["map-similar-found"] = (token, f"Selected {queries} and the {int((~found['is_query']).sum()):,} samples nearest to "
                                                        f"{'it' if found['is_query'].sum() == 1 else 'them'} (cosine down to {found['similarity'].min():.3f}).")
    token, said = st.session_state.get("map-similar-found") or (None, "")
    if token is not None and token == (st.session_state.get(keys(name).selection) or {}).get("token"):
        st.caption(said)


def lasso_over_all_points(view: MapView, lasso: dict, before: np.ndarray, hidden: list[int]) -> np.ndarray:
    """A lasso's selection among all points of a map the browser draws only part of (hidden legend entries
    are not selectable, as in the browser); ``before`` is the selection it adds to or subtracts from."""
    selectable = ~np.isin(view.colour_codes, hidden) if hidden else None
    caught = view.published.select(lasso, selectable)
    if lasso.get("operation") == "add":
        return np.union1d(before, caught)
    if lasso.get("operation") == "subtract":
        return np.setdiff1d(before, caught)
    return caught


def main() -> None:
    page = build_page()
    # A run of the whole page (not the map's fragment): the map may be a new one in the browser (the user comes
    # back from another page), which knows no selection. Send it the session's; a map that drew it already
    # ignores it (the same token).
    selection = st.session_state.get(keys(page.name).selection)
    if selection and not st.session_state.get(keys(page.name).selection_push):
        st.session_state[keys(page.name).selection_push] = selection["token"]
    map_and_selection(page)
    map_settings(page.config)
    other_model(page.name, page.version, page.n_images)


main()
