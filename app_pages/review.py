"""Review page: the per-sample table of a run, sorted by suspicion; fix labels in place, accept
predictions in bulk, or walk the flagged samples one at a time in the review queue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from components.data_cache import servable_thumbnails, version_rows
from components.gallery import plain
from components.scatter3d import thumbnail_url
from components.sidebar import open_current_version, show_head_moved, workspace
from core.errors import ConflictError, UserError
from core.review import filter_review, queue_precision, review_changes, review_frame
from core.runs import list_runs, load_samples
from core.tables import UNDEFINED, ChangeSet
from core.workspace import DatasetPaths

PAGE_SIZE = 100

table, name, version = open_current_version()
rows = version_rows(table, version)
classes = table.classes(version)
paths = DatasetPaths(workspace(), name)
st.title("Review")

runs = [r for r in list_runs(workspace(), name) if (r.path / "samples.parquet").exists() and r.version <= version]
if not runs:
    st.info("No scores yet: train on this version (Train page) to get per-sample loss, confidence and label-issue scores.")
    st.stop()
on_version = [r for r in runs if r.version == version]
run_ids = [r.run_id for r in runs]
# A run finishing in the background must not pull the table from under a reviewer: keep the run
# they were looking at (and the queue decisions made on it) until they pick another one.
kept = st.session_state.get(f"review-run:{name}:{version}")
default = kept if kept in run_ids else (on_version[0].run_id if on_version else run_ids[0])
chosen = st.selectbox("Scores from run", run_ids, index=run_ids.index(default), help="The latest run on this version when you opened the page; newer runs appear here when they finish.")
st.session_state[f"review-run:{name}:{version}"] = chosen
if on_version and chosen != on_version[0].run_id and kept == chosen:
    st.caption(f"A newer run on v{version} has finished ({on_version[0].run_id}); pick it above to review its scores.")
run = next(r for r in runs if r.run_id == chosen)
if run.version != version:
    st.warning(f"These scores come from a run on v{run.version}; labels shown are those of v{version}. Train on v{version} for fresh scores.")


@st.cache_data(max_entries=8, show_spinner=False)
def scores_of(run_path: str) -> pd.DataFrame:
    return load_samples(next(r for r in runs if str(r.path) == run_path))


frame = review_frame(scores_of(str(run.path)), rows)
servable_thumbnails(table, paths.thumbs, version)


def commit(changes: ChangeSet, message: str) -> None:
    try:
        new_version = table.commit(changes, parent=version, message=message)
    except ConflictError:
        st.error(f"This data set changed since you loaded it (it is now at v{table.head_version()}). Reload the page to review the new version; nothing was written.")
        return
    except UserError as error:
        st.error(str(error))
        return
    show_head_moved(new_version)
    st.toast(f"Committed v{new_version}: {plain(message)}")
    st.rerun()


def table_mode() -> None:
    a, b, c, d = st.columns([2, 2, 1, 1])
    given = a.multiselect("Given label", [*classes, UNDEFINED])
    predicted = b.multiselect("Predicted label", classes)
    flagged_only = c.checkbox("Flagged only", help="Samples the fused label-issue ranking flags.")
    undefined_only = d.checkbox("Undefined only", help="Active labelling: the least confident predictions first.")
    shown = filter_review(frame, given=given, predicted=predicted, flagged_only=flagged_only, undefined_only=undefined_only)
    pages = max(1, -(-len(shown) // PAGE_SIZE))
    left, right = st.columns([1, 3])
    page = left.number_input(f"Page (of {pages:,})", 1, pages, 1)
    right.caption(f"{len(shown):,} samples match; {int(shown['flagged'].sum()):,} flagged. Sorted by label-issue score (undefined: least confident first).")
    part = shown.iloc[(page - 1) * PAGE_SIZE : page * PAGE_SIZE].reset_index(drop=True)
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
    editor_key = f"review-{run.run_id}-{version}-{page}-{len(shown)}-{given}-{predicted}-{flagged_only}-{undefined_only}"
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
        disabled=["thumbnail", "sample_id", "predicted_label", "confidence", "margin", "loss", "issue_score", "flagged"],
        column_config={
            "thumbnail": st.column_config.ImageColumn("image", width="small"),
            "label": st.column_config.SelectboxColumn("label (edit)", options=[*classes, UNDEFINED], required=True, help="The given label: pick another to fix it."),
            "accept": st.column_config.CheckboxColumn("accept prediction", help="Take the predicted label for this sample."),
            "issue_score": st.column_config.ProgressColumn("issue score", min_value=0.0, max_value=1.0, format="%.2f"),
        },
    )
    changed = int(((edited["label"] != view["label"]) | edited["accept"]).sum())
    if st.button(f"Commit {changed} change(s) as a new version", type="primary", disabled=not changed, key=f"commit-{editor_key}"):
        try:
            changes, message = review_changes(part.assign(label=view["label"]), edited["label"], edited["accept"], classes)
        except UserError as error:
            st.error(str(error))
        else:
            commit(changes, message)

    if len(part):
        closer = st.selectbox("Look closer at", part["sample_id"], format_func=lambda i: f"#{i}", help="The full image and its scores.")
        row = part[part["sample_id"] == closer].iloc[0]
        original = rows.loc[rows["sample_id"] == closer, "path"].iloc[0]
        image_column, facts = st.columns([1, 2])
        try:
            image_column.image(original, width=320)
        except Exception:  # the file moved or broke since import: the thumbnail still shows what it was
            image_column.image(str(paths.thumbs / row["content_hash"][:2] / f"{row['content_hash']}.jpg"), width=320)
            image_column.caption(f"{plain(original)} cannot be read now; showing the thumbnail.")
        facts.markdown(f"**#{closer}** · given **{plain(row['label'])}** · predicted **{plain(row['predicted_label'])}**")
        facts.caption(plain(original))
        facts.dataframe(pd.DataFrame([row[["confidence", "given_confidence", "margin", "loss", "issue_score", "flagged"]]]), hide_index=True)


def queue_mode() -> None:
    decisions: dict[int, str] = st.session_state.setdefault(f"queue-{run.run_id}-{version}", {})
    queue = filter_review(frame, flagged_only=True)
    # Flags whose label already equals the prediction were fixed since the run (here or elsewhere): not in the queue.
    queue = queue[(queue["label"] != UNDEFINED) & (queue["label"] != queue["predicted_label"])]
    todo = queue[~queue["sample_id"].isin(list(decisions))]
    precision = queue_precision(decisions)
    st.progress(len(decisions) / max(len(queue), 1), text=f"{len(decisions):,} of {len(queue):,} flagged samples decided" + (f"; {precision:.0%} of flags were real label errors so far" if precision is not None else ""))
    if len(todo):
        row = todo.iloc[0]
        image_column, facts = st.columns([1, 2])
        image_column.image(str(paths.thumbs / row["content_hash"][:2] / f"{row['content_hash']}.jpg"), width=320)
        facts.markdown(f"**#{row['sample_id']}**  \ngiven label: **{plain(row['label'])}**  \npredicted: **{plain(row['predicted_label'])}** (confidence {row['confidence']:.2f})")
        facts.caption(f"issue score {row['issue_score']:.3f} · loss {row['loss']:.3f} · margin {row['margin']:.3f}")
        a, b, c = facts.columns(3)
        if a.button(f"Accept '{plain(row['predicted_label'])}'", shortcut="a", type="primary", key="queue-accept"):
            decisions[int(row["sample_id"])] = "accept"
            st.rerun()
        if b.button("Keep the label", shortcut="k", key="queue-keep"):
            decisions[int(row["sample_id"])] = "keep"
            st.rerun()
        if c.button("Exclude", shortcut="x", key="queue-exclude"):
            decisions[int(row["sample_id"])] = "exclude"
            st.rerun()
        facts.caption("Keyboard: A accept · K keep · X exclude")
    else:
        st.success("Every flagged sample is decided.")
    changes = {i: d for i, d in decisions.items() if d != "keep"}
    if changes and st.button(f"Commit {len(changes)} decision(s) as a new version", key="queue-commit"):
        accepted = [i for i, d in changes.items() if d == "accept"]
        excluded = [i for i, d in changes.items() if d == "exclude"]
        predicted = frame.set_index("sample_id")["predicted_label"]
        updates = pd.DataFrame({
            "sample_id": np.array(accepted + excluded, dtype=np.int64),
            "label": [predicted[i] for i in accepted] + [None] * len(excluded),
            "weight": [np.nan] * len(accepted) + [0.0] * len(excluded),
        })
        decisions.clear()
        commit(ChangeSet(updates=updates), f"review queue: {len(accepted)} accepted, {len(excluded)} excluded")


mode = st.segmented_control("Mode", ["Table", "Review queue"], default="Table", help="The queue shows one flagged sample at a time.")
if mode == "Review queue":
    queue_mode()
else:
    table_mode()
