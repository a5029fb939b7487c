"""Review page: the per-sample table of a run, sorted by suspicion; fix labels in place, accept
predictions in bulk, or walk the label issues one at a time in the review queue."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from labelloop.app.components.commit import commit_edit, refused_commit
from labelloop.app.components.data_cache import (
    cached_health,
    servable_thumbnails,
    version_rows,
)
from labelloop.app.components.gallery import plain
from labelloop.app.components.scatter3d import thumbnail_url
from labelloop.app.components.session import hand_to_map, keys
from labelloop.app.components.sidebar import (
    open_current_version,
    workspace,
)
from labelloop.data.changes import ChangeSet
from labelloop.data.runs import RunInfo, list_runs
from labelloop.data.schema import UNDEFINED
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import DatasetPaths
from labelloop.embed.cache import preferred_embedding
from labelloop.embed.similar import more_like_this
from labelloop.embed.text import PROMPT, text_embeddings, zero_shot
from labelloop.errors import UserError
from labelloop.scores.checks import CHECKS, HealthReport
from labelloop.scores.review import (
    Decision,
    filter_review,
    load_kept,
    queue_changes,
    queue_precision,
    record_kept,
    review_changes,
    review_frame,
    still_valid,
)

PAGE_SIZE = 100


@dataclass
class ReviewPage:
    """What one run of the page reviews: the version shown, the run its scores come from, and the table of both."""

    table: LabelTable
    name: str
    version: int
    rows: pd.DataFrame  # the version's rows
    classes: list[str]
    paths: DatasetPaths
    run: RunInfo
    frame: pd.DataFrame  # the run's scores beside the version's labels, most suspicious first
    health: HealthReport | None  # the Health page's checks of this version, if computed
    clip_keys: list[str]  # the CLIP embeddings of this data set (zero-shot suggestions need one)


@st.cache_data(max_entries=8, show_spinner=False)
def scores_of(run_path: str) -> pd.DataFrame:
    return pd.read_parquet(Path(run_path) / "samples.parquet")


@st.cache_data(max_entries=4, show_spinner="Matching the undefined images with the class names (CLIP zero-shot)...")
def zero_shot_of(workspace_text: str, dataset: str, key: str, shown_version: int, class_names: tuple[str, ...], _undefined: tuple[int, ...]) -> pd.DataFrame:
    # A version never changes, so (version, classes) fixes which samples are undefined: they need no hashing.
    return zero_shot(workspace_text, dataset, key, list(class_names), version=shown_version, sample_ids=list(_undefined)).set_index("sample_id")


def runs_or_stop(name: str, version: int) -> list[RunInfo]:
    """The runs with per-sample scores on this version or an earlier one; without one, why (and the page stops there)."""
    runs = [r for r in list_runs(workspace(), name) if (r.path / "samples.parquet").exists() and r.version <= version]
    if not runs:
        st.info("No scores yet: train on this version (Train page) to get per-sample loss, confidence and label-issue scores.")
        st.stop()
    return runs


def pick_run(name: str, version: int, runs: list[RunInfo]) -> RunInfo:
    """The run whose scores the page shows: the newest on this version, or the one the user pinned."""
    on_version = [r for r in runs if r.version == version]
    newest = (on_version or runs)[0]
    run_ids = [r.run_id for r in runs]
    by_id = {r.run_id: r for r in runs}
    # The page follows the newest run on this version (a background run after a commit included) unless
    # the user picked one: then it stays on that run until they pick the newest again.
    pinned = st.session_state.get(keys(name).review_pin)
    default = pinned if pinned in run_ids else newest.run_id
    chosen = st.selectbox(
        "Scores from run", run_ids, index=run_ids.index(default),
        format_func=lambda i: f"{i} · v{by_id[i].version} · {by_id[i].summary.best_model}" + (" · automatic, after a commit" if by_id[i].automatic else "") + (" (newest)" if i == newest.run_id else ""),
        help="Follows the newest run on this version unless you pick another one.",
    )
    st.session_state[keys(name).review_pin] = None if chosen == newest.run_id else chosen
    if chosen != newest.run_id:
        st.caption(f"Pinned to this run; the newest on v{version} is {newest.run_id}.")
    return by_id[chosen]


def build_page() -> ReviewPage:
    """The run to review (the page stops if there is none) and the scores, labels and checks the modes read."""
    table, name, version = open_current_version()
    rows = version_rows(table, version)
    classes = table.classes(version)
    paths = DatasetPaths(workspace(), name)
    st.title("Review")
    run = pick_run(name, version, runs_or_stop(name, version))
    frame = review_frame(scores_of(str(run.path)), rows, load_kept(paths.kept_labels))
    health = cached_health(workspace(), name, version)  # the Health page computes it
    clip_keys = text_embeddings(workspace(), name)
    servable_thumbnails(table, paths.thumbs, version)
    return ReviewPage(table, name, version, rows, classes, paths, run, frame, health, clip_keys)


def warn_if_scores_are_older(run: RunInfo, version: int) -> None:
    if run.version != version:
        st.warning(f"These scores come from a run on v{run.version}; labels shown are those of v{version}. Train on v{version} for fresh scores (they also follow each commit by themselves).")


def zero_shot_column(page: ReviewPage, part: pd.DataFrame) -> pd.Series | None:
    """'label 0.83' from the CLIP model for the undefined samples of ``part`` (None without a CLIP embedding)."""
    if not page.clip_keys or not page.classes:
        return None
    rows = page.rows
    undefined = tuple(int(i) for i in rows.loc[rows["label"] == UNDEFINED, "sample_id"])
    try:
        found = zero_shot_of(str(workspace()), page.name, page.clip_keys[0], page.version, tuple(page.classes), undefined)
    except UserError as error:
        st.warning(f"No zero-shot suggestions: {error}")
        return None
    picked = found.reindex(part["sample_id"])
    text = picked["zero_shot_label"].astype(object) + " " + picked["zero_shot_confidence"].map(lambda c: f"{c:.2f}")
    return text.where(picked["zero_shot_label"].notna(), "").reset_index(drop=True)


def commit(table: LabelTable, version: int, changes: ChangeSet, message: str) -> bool:
    """Commit on the version this page shows; False (and why) if it was not written."""
    return commit_edit(table, changes, parent=version, message=message, page="review") is not None


def show_conflict(table: LabelTable) -> bool:
    """The refused-commit message with a Reload that keeps the user's work; True while it is shown."""
    return refused_commit(table, "review")


def health_flagged(health: HealthReport | None, titles: list[str]) -> list[int] | None:
    """Ids of the samples any of the health checks ``titles`` flags (None: no filter)."""
    if not titles or health is None:
        return None
    chosen = [c.name for c in CHECKS.values() if c.title in titles]
    return health.samples.loc[health.samples[[f"is_{c}" for c in chosen]].any(axis=1), "sample_id"].tolist()


def filtered_part(page: ReviewPage) -> pd.DataFrame:
    """The filters above the table and the page of matching samples they leave (PAGE_SIZE at most)."""
    health = page.health
    given_column, predicted_column, issue_column, flagged_column, undefined_column = st.columns([2, 2, 2, 1, 1])
    # Kept for the session: a look at another page and back finds the same filters.
    name = page.name
    given = given_column.multiselect("Given label", [*page.classes, UNDEFINED], key=f"review-given:{name}", persist_state="session")
    predicted = predicted_column.multiselect("Predicted label", page.classes, key=f"review-predicted:{name}", persist_state="session")
    flagged_titles = [CHECKS[r.check].title for r in health.results.values() if r.status == "ran" and r.count] if health is not None else []
    issue_types = issue_column.multiselect("Health issue", flagged_titles, disabled=health is None, key=f"review-health:{name}", persist_state="session",
                                           help="Samples the Health page's checks flag (any of those picked)." if health is not None else f"Compute data health of v{page.version} on the Health page first.")
    flagged_only = flagged_column.checkbox("Label issues only", key=f"review-issues-only:{name}", persist_state="session", help="The open label issues: the run's label-issue ranking flags them, the label still differs from its prediction, and no reviewer kept it. The review queue walks the same samples; the Health page counts them as Label issue.")
    undefined_only = undefined_column.checkbox("Undefined only", key=f"review-undefined-only:{name}", persist_state="session", help="Active labelling: the least confident predictions first.")
    shown = filter_review(page.frame, given=given, predicted=predicted, flagged_only=flagged_only, undefined_only=undefined_only, sample_ids=health_flagged(health, issue_types))
    pages = max(1, -(-len(shown) // PAGE_SIZE))
    left, right = st.columns([1, 3])
    page_number = left.number_input(f"Page (of {pages:,})", 1, pages, 1)
    right.caption(f"{len(shown):,} samples match; {int(shown['flagged'].sum()):,} of them are open label issues. Sorted by label-issue score (undefined: least confident first).")
    return shown.iloc[(page_number - 1) * PAGE_SIZE : page_number * PAGE_SIZE].reset_index(drop=True)


def table_mode(page: ReviewPage) -> None:
    part = filtered_part(page)
    view = pd.DataFrame({
        "thumbnail": [thumbnail_url(h) for h in part["content_hash"]],
        "sample_id": part["sample_id"],
        "label": part["label"],
        "predicted_label": part["predicted_label"],
        "accept": False,
        "confidence": part["confidence"].round(3),
        "margin": part["margin"].round(3),
        "loss": part["loss"].round(3),
        "issue_score": part["issue_score"].round(3),
        "flagged": part["flagged"],
    })
    suggestions = zero_shot_column(page, part)
    if suggestions is not None:  # beside the trained model's suggestion
        view.insert(view.columns.get_loc("predicted_label") + 1, "zero_shot", suggestions)
    # The editor's state belongs to exactly these rows with these labels on this version: if any of that
    # changes (another run, a filter, a keep in another tab), its edits can never move onto other samples.
    shown_rows = hashlib.blake2b(pd.util.hash_pandas_object(part[["sample_id", "label", "predicted_label"]], index=False).to_numpy().tobytes(), digest_size=8).hexdigest()
    editor_key = f"review-{page.version}-{shown_rows}"
    if st.button("Tick 'accept' on every row of this page", key=f"all-{editor_key}"):
        st.session_state[f"accept-all-{editor_key}"] = True
    if st.session_state.get(f"accept-all-{editor_key}"):
        view["accept"] = True
    edited = st.data_editor(
        view,
        key=editor_key,
        hide_index=True,
        width="stretch",
        height=min(38 * (len(view) + 1), 700),
        row_height=38,
        disabled=["thumbnail", "sample_id", "predicted_label", "zero_shot", "confidence", "margin", "loss", "issue_score", "flagged"],
        column_config={
            "thumbnail": st.column_config.ImageColumn("image", width="small"),
            "label": st.column_config.SelectboxColumn("label (edit)", options=[*page.classes, UNDEFINED], required=True, help="The given label: pick another to fix it."),
            "accept": st.column_config.CheckboxColumn("accept prediction", help="Take the predicted label for this sample."),
            "zero_shot": st.column_config.TextColumn("zero-shot (CLIP)", help=f"Undefined samples only: the class whose name ('{PROMPT.format('{class}')}') "
                                                     f"the CLIP embedding {page.clip_keys[0] if page.clip_keys else ''} matches best, with its probability. From the class names alone, not from your labels."),
            "issue_score": st.column_config.ProgressColumn("issue score", min_value=0.0, max_value=1.0, format="%.2f"),
            "flagged": st.column_config.CheckboxColumn("label issue", help="An open label issue: the run's ranking flags it, its label still differs from the prediction, no reviewer kept it."),
        },
    )
    changed = int(((edited["label"] != view["label"]) | edited["accept"]).sum())
    if not show_conflict(page.table) and st.button(f"Commit {changed} change(s) as a new version", type="primary", disabled=not changed, key=f"commit-{editor_key}"):
        try:
            changes, message = review_changes(part.assign(label=view["label"]), edited["label"], edited["accept"], page.classes)
        except UserError as error:
            st.error(str(error))
        else:
            if commit(page.table, page.version, changes, message):
                st.rerun()

    if len(part):
        look_closer(page, part)


def look_closer(page: ReviewPage, part: pd.DataFrame) -> None:
    """One sample of the page in full: its image (or its thumbnail, if the file cannot be read now) and every score."""
    rows = page.rows
    closer = st.selectbox("Look closer at", part["sample_id"], format_func=lambda i: f"#{i}", help="The full image and its scores.")
    row = part[part["sample_id"] == closer].iloc[0]
    original = rows.loc[rows["sample_id"] == closer, "path"].iloc[0]
    image_column, facts = st.columns([1, 2])
    try:
        image_column.image(original, width=320)
    except Exception:  # the file moved or broke since import: the thumbnail still shows what it was
        image_column.image(str(page.paths.thumbnail(row["content_hash"])), width=320)
        image_column.caption(f"{plain(original)} cannot be read now; showing the thumbnail.")
    facts.markdown(f"**#{closer}** · given **{plain(row['label'])}** · predicted **{plain(row['predicted_label'])}**")
    facts.caption(plain(original))
    facts.dataframe(pd.DataFrame([row[["confidence", "given_confidence", "margin", "loss", "issue_score", "flagged"]]]), hide_index=True)
    if page.health is not None:
        facts.caption("Health: " + (plain(page.health.issue_types().get(closer, "")) or "no check flags it"))
    more_like_this_button(facts, page.name, page.version, int(closer))


def more_like_this_button(where, name: str, version: int, sample_id: int) -> None:
    """The sample and its nearest neighbours in the default embedding become the Map page's selection."""
    key = preferred_embedding(workspace(), name)
    if key is None:
        return
    with where.container(horizontal=True, vertical_alignment="bottom"):
        k = st.number_input("Neighbours", 1, 5000, 50, key="review-more-k")
        if st.button(f"More like #{sample_id} on the map", key="review-more", help=f"Its {k} nearest samples in the embedding {key} (cosine) become the map's selection, ready to relabel or exclude."):
            found = more_like_this(workspace(), name, key, [sample_id], k=int(k), version=version)
            hand_to_map(name, found["sample_id"], "review-more-like-this")


def decide(name: str, kept_labels: Path, pending: dict[int, Decision], tally: dict[str, int],
           sample_id: int, action: str, shown_version: int, shown_label: str, predicted: str) -> None:
    """A queue button's callback: runs before the rerun, with what was on screen when the key was pressed (never the next item)."""
    if action == "keep":
        record_kept(kept_labels, sample_id, shown_label, shown_version)
        tally["kept"] += 1
    else:
        pending[sample_id] = Decision(sample_id, action, shown_version, shown_label, predicted)
    st.session_state.pop(keys(name).queue_current, None)


def queue_item(page: ReviewPage, row: pd.Series, pending: dict[int, Decision], tally: dict[str, int]) -> None:
    """The label issue on screen: the accept, keep and exclude buttons, its thumbnail and its scores."""
    sample_id = int(row["sample_id"])
    st.session_state[keys(page.name).queue_current] = sample_id
    shown = (page.name, page.paths.kept_labels, pending, tally, sample_id)
    seen = (page.version, str(row["label"]), str(row["predicted_label"]))
    # The buttons come first, right under the progress line, in a plain row: nothing above them
    # changes size while the page draws. Inside the image's columns they moved while the picture
    # and the columns laid out, and a click aimed at them could land on the image (the lost click).
    with st.container(horizontal=True, key="queue-actions"):
        st.button(f"Accept '{plain(row['predicted_label'])}'", shortcut="a", type="primary", key="queue-accept", on_click=decide, args=(*shown, "accept", *seen))
        st.button("Keep the label", shortcut="k", key="queue-keep", on_click=decide, args=(*shown, "keep", *seen))
        st.button("Exclude", shortcut="x", key="queue-exclude", on_click=decide, args=(*shown, "exclude", *seen))
    st.caption("Keyboard: A accept · K keep (recorded at once; it does not come back) · X exclude")
    image_column, facts = st.columns([1, 2])
    image_column.image(str(page.paths.thumbnail(row["content_hash"])), width=320)
    facts.markdown(f"**#{sample_id}**  \ngiven label: **{plain(row['label'])}**  \npredicted: **{plain(row['predicted_label'])}** (confidence {row['confidence']:.2f})")
    facts.caption(f"issue score {row['issue_score']:.3f} · loss {row['loss']:.3f} · margin {row['margin']:.3f}")


def drop_stale_decisions(page: ReviewPage, pending: dict[int, Decision]) -> None:
    """Drop, and say so, the waiting decisions made on a label the shown version no longer has (after a Reload to
    a version committed elsewhere): before anything counts them, so no counter or button offers what is gone."""
    # Only decisions made on an earlier version: looking at an old version must not drop today's work.
    _, stale = still_valid([d for d in pending.values() if d.version < page.version], page.rows)
    for decision in stale:
        del pending[decision.sample_id]
    if stale:
        st.warning(f"{len(stale)} waiting decision(s) were made on a label v{page.version} no longer has ({', '.join(f'#{d.sample_id}' for d in stale[:10])}); "
                   "they were dropped, the rest is kept.")


def commit_decisions(page: ReviewPage, pending: dict[int, Decision], tally: dict[str, int]) -> None:
    """The button that commits the queue's waiting decisions (all valid on the shown version: see drop_stale_decisions)."""
    accepted = sum(d.action == "accept" for d in pending.values())
    if st.button(f"Commit {len(pending)} decision(s) as a new version ({accepted} accepted, {len(pending) - accepted} excluded)", key="queue-commit"):
        changes, message = queue_changes(list(pending.values()))
        if commit(page.table, page.version, changes, message):
            tally["changed"] += len(pending)
            pending.clear()
        st.rerun()


def queue_mode(page: ReviewPage) -> None:
    name = page.name
    # Decisions belong to the data set, not to a run or a version: they survive a new run, a commit and a
    # reload; each one carries the version, label and prediction the reviewer saw.
    pending: dict[int, Decision] = st.session_state.setdefault(keys(name).queue_decisions, {})
    tally = st.session_state.setdefault(keys(name).queue_tally, {"changed": 0, "kept": 0})
    drop_stale_decisions(page, pending)
    queue = filter_review(page.frame, flagged_only=True)
    todo = queue[~queue["sample_id"].isin(list(pending))]
    # The item on screen stays on screen until the reviewer decides it, whatever reruns in between.
    current = st.session_state.get(keys(name).queue_current)
    if current in set(todo["sample_id"]):
        todo = pd.concat([todo[todo["sample_id"] == current], todo[todo["sample_id"] != current]])
    decided = len(pending) + tally["kept"]
    precision = queue_precision(tally["changed"] + len(pending), tally["kept"])
    st.progress(
        decided / max(decided + len(todo), 1),
        # The open label issues are the Health page's count too: a decision waiting to be committed is still open.
        text=f"{len(queue):,} label issues open: {len(todo):,} to review · {len(pending):,} decision(s) waiting to be committed · {tally['kept']:,} kept so far"
        + (f" · {precision:.0%} of the flags decided so far were real label errors" if precision is not None else ""),
    )
    if len(todo):
        queue_item(page, todo.iloc[0], pending, tally)
    else:
        st.success("Every label issue is decided.")
    if not pending or show_conflict(page.table):
        return
    commit_decisions(page, pending, tally)


def main() -> None:
    page = build_page()
    mode = st.segmented_control("Mode", ["Table", "Review queue"], default="Table", required=True, help="The queue shows one label issue at a time.")
    if mode == "Review queue":
        queue_mode(page)
        # Under the item, not above it: the warning comes and goes as background runs finish after each
        # commit, and above the item it would move the A/K/X buttons while the reviewer aims at them.
        warn_if_scores_are_older(page.run, page.version)
    else:
        warn_if_scores_are_older(page.run, page.version)
        table_mode(page)


main()
