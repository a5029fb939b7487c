"""The Map's selection editor: what a lasso (or any selection sent to the map) holds, and one edit of it.

Everything it acts on comes in as arguments (:class:`MapEdit`); what it keeps between runs (what was left
out of the edit, whether this edit of this selection was committed) is in the session under the data set's keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from labelloop.app.components.commit import commit_edit, refused_commit
from labelloop.app.components.gallery import labelled_thumbnails, plain
from labelloop.app.components.session import (
    MAP_MESSAGE,
    MAP_MESSAGE_DEFAULT,
    MAP_SELECTED_COUNT,
    keys,
)
from labelloop.data.schema import UNDEFINED
from labelloop.data.tables import LabelTable
from labelloop.errors import UserError
from labelloop.maps.view import (
    CONFIRM_OVER,
    confidence_warning,
    confidently_right,
    default_message,
    edit_targets,
    label_mix,
    resolve_label,
    selection_changes,
)

THUMBNAILS = 30  # of a selection, a few per label (labelloop.maps.view.thumbnail_sample)


@dataclass(frozen=True)
class MapEdit:
    """What an edit on the map acts on: the version the page shows and its rows."""

    table: LabelTable
    name: str
    version: int
    classes: list[str]
    rows: pd.DataFrame  # the version's rows on the map, indexed by sample_id
    scores: pd.DataFrame | None  # the newest run's per-sample scores on this version, indexed by sample_id
    thumbs: Path


def _left_out_of_edit(name: str, token: str | None) -> dict:
    """What the user left out of the edit of this selection: labels, and samples by id. A new selection starts empty."""
    kept = st.session_state.get(keys(name).map_left_out)
    if kept is None or kept["token"] != token:
        kept = st.session_state[keys(name).map_left_out] = {"token": token, "labels": set(), "ids": set(), "picked": set()}
    return kept


def selection_editor(edit: MapEdit, selected_ids: np.ndarray, token: str | None, *, on_reload: Callable[[], None] | None = None) -> None:
    """What a selection holds and one edit of it: its count, its label mix as pills (a label clicked off is left
    out), thumbnails, relabel / exclude / include, a warning about samples the model is confidently right about,
    the commit message and the commit. ``token`` names the selection: what the user left out of the edit, and
    whether this edit was committed already, are kept per selection. ``on_reload``: what the page resets when
    the user reloads after a refused commit."""
    name, classes, frame, scores, thumbs = edit.name, edit.classes, edit.rows, edit.scores, edit.thumbs
    st.markdown(f"**{len(selected_ids):,} selected**", help="Lasso: press L or the Lasso button, then draw; Escape leaves lasso mode. Shift adds to the selection, Alt or Ctrl subtracts.")
    st.session_state[MAP_SELECTED_COUNT] = len(selected_ids)
    if not len(selected_ids):
        st.caption("Press L (or the Lasso button), then draw around a cluster to see its thumbnails and relabel it.")
        return
    chosen = frame.loc[selected_ids]
    labels = chosen["label"].to_numpy()
    mix = label_mix(labels)
    left_out = _left_out_of_edit(name, token)
    options = mix["label"].tolist()
    count_of = dict(zip(mix["label"], mix["count"]))
    # Keyed by the labels present: after a commit the mix changes and the pills start again from what
    # the user left out, which is kept per selection (a label left out stays out).
    options_digest = hashlib.blake2b("\0".join(options).encode(), digest_size=6).hexdigest()
    included = st.pills(
        "Labels in the edit (click one to leave it out)", options, selection_mode="multi", default=[o for o in options if o not in left_out["labels"]],
        format_func=lambda option: plain(f"{option} · {count_of[option]:,}"), key=f"map-include:{token}:{options_digest}",
        help="The label mix of the selection, most common first. The edit applies only to samples whose label is highlighted.", wrap=True,
    )
    left_out["labels"] = (left_out["labels"] - set(options)) | (set(options) - set(included))
    shown = labelled_thumbnails(thumbs, chosen, limit=THUMBNAILS, width=70, captions=pd.Series([f"#{i} {label}" for i, label in zip(chosen.index, labels)], index=chosen.index),
                                key="map-thumbnails")
    # Single samples out of the edit, by the number under their thumbnail: only samples the user has seen.
    dropped = st.multiselect("Leave these samples out", list(shown), default=sorted(left_out["picked"] & set(shown)), key=f"map-drop:{token}",
                             format_func=lambda i: f"#{i} {chosen.at[i, 'label']}", placeholder="Click the numbers under the thumbnails you want left as they are",
                             help="A sample left out keeps its label and weight whatever the edit does.")
    left_out["picked"] = set(dropped)

    action = st.radio("Action", ("relabel", "exclude", "include"), horizontal=True, key="map-action", help="Exclude keeps the samples in the table with weight 0: never trained on, easy to include again.")
    label, new_class = None, False
    if action == "relabel":
        choice_column, new_column = st.columns(2)
        label_options = [*classes, UNDEFINED]
        # Nothing is chosen for the user: a preselected class turned one stray click into hundreds of relabels.
        picked = choice_column.selectbox("Label", label_options, index=None, placeholder="Choose a class", key=f"map-label:{token}",
                                         help="An existing class, exactly as listed. Nothing is chosen for you: the commit waits for your choice.")
        typed = new_column.text_input("or a new class", key="map-new-label", help="Creates this class with the commit.")
        label, new_class = (typed.strip(), True) if typed.strip() else (picked, False)
    targets = edit_targets(selected_ids, labels, chosen["weight"].to_numpy(), action=action, label=label, include=included, leave_out=sorted(left_out["ids"] | left_out["picked"]))
    if action == "relabel" and label is None:
        st.caption("Choose the class to relabel to, or type a new one: nothing is committed until you do.")
    else:
        if action == "relabel":
            _warn_confidently_right(scores, thumbs, chosen, targets, label, left_out)
        _describe_edit(chosen, targets, action, label, set(included), left_out["ids"], left_out["picked"])
    if left_out["ids"] and st.button("Put the samples the model is sure of back in the edit", key="map-put-back"):
        left_out["ids"] = set()
        st.rerun(scope="fragment")

    _commit_the_edit(edit, targets, action, label, new_class, [token, action, label, sorted(left_out["labels"]), sorted(left_out["ids"]), sorted(left_out["picked"])], on_reload)


def _commit_the_edit(edit: MapEdit, targets: np.ndarray, action: str, label: str | None, new_class: bool, signature: list, on_reload: Callable[[], None] | None) -> None:
    """The commit message (suggested, editable) and the commit of ``targets`` on the version shown; an edit of more than
    CONFIRM_OVER samples names its count on the button and asks once."""
    table, name, version = edit.table, edit.name, edit.version
    # The same edit of the same selection is committed once: after a commit the button stays off (and
    # says so) until the selection, the action, the label or what is left out changes.
    committed = st.session_state.get(keys(name).map_committed)
    done = committed is not None and committed["signature"] == signature and committed["version"] == version
    chosen = action != "relabel" or label is not None
    prefilled = default_message(len(targets), action, label) if chosen else ""
    # A new edit (selection, action, label, what is left out): a new suggestion, replacing whatever the last one
    # said (a message typed for the last commit must not ride along on the next edit, even when the suggestion
    # reads the same). A Reload to a newer version keeps what the user typed.
    suggestion = [signature, prefilled]
    if not done and st.session_state.get(MAP_MESSAGE_DEFAULT) != suggestion:
        st.session_state[MAP_MESSAGE_DEFAULT] = suggestion
        st.session_state[MAP_MESSAGE] = prefilled
    message = st.text_input("Commit message", key=MAP_MESSAGE)  # after a commit: the message it was committed with
    if refused_commit(table, "map", on_reload=on_reload):
        return
    if done:
        st.success(f"Committed as v{version}: {plain(committed['message'])}", icon=":material/check:")
    big = len(targets) > CONFIRM_OVER
    confirming = big and not done and st.session_state.get(keys(name).map_confirming) == [signature, version]
    button = f"Commit {len(targets):,} changes as a new version" if big else "Commit as a new version"
    if not confirming:
        if st.button(button, type="primary", key="map-commit", disabled=done or not chosen or not len(targets)):
            if big:  # ask once, beside the button, naming what it does
                st.session_state[keys(name).map_confirming] = [signature, version]
                st.rerun(scope="fragment")
            _commit(edit, targets, action, label, new_class, message, signature)
        return
    what = f"relabel {len(targets):,} samples as {plain(label)}" if action == "relabel" else f"{action} {len(targets):,} samples"
    st.warning(f"This edit will {what}. Commit it?", icon=":material/help:")
    yes, no = st.columns(2)
    if yes.button(f"Yes, {what}", type="primary", key="map-commit-confirmed"):
        st.session_state.pop(keys(name).map_confirming, None)
        _commit(edit, targets, action, label, new_class, message, signature)
    if no.button("Not now", key="map-commit-cancelled"):
        st.session_state.pop(keys(name).map_confirming, None)
        st.rerun(scope="fragment")


def _commit(edit: MapEdit, targets: np.ndarray, action: str, label: str | None, new_class: bool, message: str, signature: list) -> None:
    """Commit the edit as a new version made against the version shown (a refusal is the commit component's to show)."""
    try:
        if action == "relabel":
            label, new_class = resolve_label(label, edit.classes, create=new_class)
        changes = selection_changes(targets, action, label, new_class=new_class)
    except UserError as error:
        st.error(str(error))
        return
    new_version = commit_edit(edit.table, changes, parent=edit.version, message=message, page="map", rerun_scope="fragment")
    if new_version is None:
        return
    st.session_state[keys(edit.name).map_committed] = {"signature": signature, "version": new_version, "message": message}
    st.session_state[keys(edit.name).selection_push] = f"commit-{new_version}"
    st.rerun(scope="app")


def _warn_confidently_right(scores: pd.DataFrame | None, thumbs: Path, chosen: pd.DataFrame, targets: np.ndarray, label: str, left_out: dict) -> None:
    """Before a relabel: which of the samples it changes the latest model confidently thinks are already right; one click leaves them out."""
    if scores is not None and len(targets) and {"predicted_label", "confidence"} <= set(scores.columns):
        predicted, confidence = scores.loc[targets, "predicted_label"], scores.loc[targets, "confidence"]
        sure = targets[confidently_right(chosen.loc[targets, "label"].to_numpy(), predicted.to_numpy(), confidence.to_numpy(), label)]
        if len(sure):
            st.warning(plain(confidence_warning(predicted.loc[sure].to_numpy())), icon=":material/warning:")
            captions = chosen.loc[sure, "label"].astype(str) + " " + confidence.loc[sure].map("{:.2f}".format)
            labelled_thumbnails(thumbs, chosen.loc[sure], limit=12, width=70, captions=captions, key="map-confident-thumbnails")
            if st.button(f"Leave these {len(sure):,} out of the edit", key="map-leave-out-confident"):
                left_out["ids"] |= {int(i) for i in sure}
                st.rerun(scope="fragment")


def _describe_edit(chosen: pd.DataFrame, targets: np.ndarray, action: str, label: str | None, included: set, left_out_ids: set, picked_out: set) -> None:
    """One line: how many of the selection the edit changes, and why the others are not (the reasons add up)."""
    reasons = []
    out = chosen.loc[~chosen["label"].isin(included), "label"].value_counts()
    if len(out):
        reasons.append("leaves out " + ", ".join(f"{plain(name)} ({count:,})" for name, count in out.items()))
    kept_in = chosen["label"].isin(included).to_numpy()
    if action == "relabel":
        already = kept_in & (chosen["label"] == label).to_numpy()
        what = f"already {plain(label)}"
    else:
        already = kept_in & ((chosen["weight"] <= 0) == (action == "exclude")).to_numpy()
        what = f"already {action}d"
    if already.any():
        reasons.append(f"{int(already.sum()):,} {what}")
    sure = kept_in & ~already & chosen.index.isin(list(left_out_ids))
    if sure.any():
        reasons.append(f"{int(sure.sum()):,} the model is sure of left out")
    by_hand = int((kept_in & ~already & ~sure & chosen.index.isin(list(picked_out))).sum())
    if by_hand:
        reasons.append(f"{by_hand:,} left out by you")
    st.caption(f"The edit changes **{len(targets):,}** of {len(chosen):,}" + (f": {'; '.join(reasons)}." if reasons else "."))


