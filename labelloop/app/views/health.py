"""Health page: outliers, near duplicates, poor images and label issues (cleanlab Datalab + cleanvision),
each type with its count and examples; its samples to exclude or relabel in one commit; near-duplicate
groups side by side with "keep one". Computing is a button: opening the page only reads caches."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from labelloop.app.components.commit import commit_edit, refused_commit
from labelloop.app.components.data_cache import (
    cached_health,
    servable_thumbnails,
    version_rows,
)
from labelloop.app.components.gallery import plain, thumbnail_grid
from labelloop.app.components.jobs import follow_job, running, start_job
from labelloop.app.components.scatter3d import thumbnail_url
from labelloop.app.components.session import hand_to_map
from labelloop.app.components.sidebar import (
    open_current_version,
    workspace,
)
from labelloop.data.changes import ChangeSet
from labelloop.data.schema import UNDEFINED
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import DatasetPaths
from labelloop.embed.cache import list_embeddings, preferred_embedding
from labelloop.embed.similar import more_like_this
from labelloop.scores.checks import CHECKS, HealthReport
from labelloop.scores.health import NOT_COMPUTED, compute_health

# Flagged samples per page: every one of them is on screen as a thumbnail, and in the table below, so a
# pick never reaches a sample the user did not see (a page of 100 showed 24 thumbnails with all 100 ticked).
PAGE_SIZE = 24
GROUPS_PER_PAGE = 10


@dataclass
class HealthPage:
    """What one run of the page shows: the version checked and its health report."""

    table: LabelTable
    name: str
    version: int
    classes: list[str]
    paths: DatasetPaths
    report: HealthReport
    samples: pd.DataFrame  # the report's samples with their file paths
    summary: pd.DataFrame  # one row per check: its status, counts and note


def job_key_of(name: str) -> str:
    return f"health-{name}"


def start_checking(name: str, version: int, embedding: str | None) -> None:
    """Compute the checks of ``version`` not cached yet (a background job), then rerun to follow it."""
    def check(job) -> None:  # keeps nothing as the job's result: the report is read back from the caches
        compute_health(workspace(), name, version=version, embedding=embedding, progress=job.progress, should_stop=job.should_stop)

    start_job(job_key_of(name), f"checking v{version}", check)
    st.rerun()


def pick_embedding(name: str) -> str | None:
    """The embedding whose vectors the checks compare (None: there is none yet, and the page says what that leaves)."""
    embeddings = [meta["key"] for meta in list_embeddings(workspace(), name)]
    default = preferred_embedding(workspace(), name)
    embedding = st.selectbox("Embedding", embeddings, index=embeddings.index(default) if default in embeddings else 0,
                             help="The vectors the outlier, near-duplicate and label checks compare.") if embeddings else None
    if not embeddings:
        st.info("No embedding yet: only the image checks and exact duplicates can run. Embed the images on the Map page for the rest.")
    return embedding


def report_or_stop(name: str, version: int, embedding: str | None) -> HealthReport:
    """The cached report of ``version``; without one, the button that computes it (and the page stops there)."""
    job_key = job_key_of(name)
    report = None if running(job_key) else cached_health(workspace(), name, version, embedding)
    follow_job(job_key)
    if report is None:
        if not running(job_key):
            st.info(f"Data health of v{version} is not computed yet for this embedding (or this version's labels). "
                    f"The image checks read every image once (about 300 images/s on 2 cores); a relabel later reuses them.")
            if st.button("Compute data health", type="primary"):
                start_checking(name, version, embedding)
        st.stop()
    return report


def build_page() -> HealthPage:
    """The embedding to check with, the report (the page stops without one) and the checks still missing from it."""
    table, name, version = open_current_version()
    rows = version_rows(table, version)
    classes = table.classes(version)
    paths = DatasetPaths(workspace(), name)
    st.title("Health")
    st.caption("Problems other than one wrong label: images unlike the rest, near duplicates, poor images, and cleanlab Datalab's class-imbalance and "
               "underperforming-group checks; Label issue is the Review page's open label issues, the same samples. "
               "Scores are the libraries' own (low = more severe) at their default thresholds.")
    embedding = pick_embedding(name)
    report = report_or_stop(name, version, embedding)
    servable_thumbnails(table, paths.thumbs, version)
    samples = report.samples.merge(rows[["sample_id", "path"]], on="sample_id", how="left")
    summary = report.summary()
    st.caption(f"v{version} · {len(samples):,} samples · embedding {report.embedding or 'none'} · label checks from run {report.run_id or '(no run yet)'}")
    missing = [CHECKS[r.check].title for r in report.results.values() if r.note.startswith(NOT_COMPUTED)]
    if missing and not running(job_key_of(name)):
        st.info(f"Not computed yet for v{version}: {', '.join(missing)} (a new version or a new run since; the image checks are reused).")
        if st.button("Compute the missing checks", type="primary"):
            start_checking(name, version, embedding)
    return HealthPage(table, name, version, classes, paths, report, samples, summary)


# ---------------------------------------------------------------- overview
def overview(page: HealthPage) -> None:
    summary = page.summary
    others = summary[summary["status"] != "ran"]
    for row in summary[summary["status"] == "ran"].itertuples():
        check = CHECKS[row.check]
        with st.container(border=True):
            st.markdown(f"**{check.title}** · {row.flagged:,} of {row.scored:,} · {plain(check.meaning)}")
            if row.note:
                st.caption(plain(row.note))
            if row.flagged:
                examples = page.report.flagged(row.check).head(8)
                thumbnail_grid(page.paths.thumbs, examples.assign(caption=[f"#{i}" for i in examples["sample_id"]]), limit=8, caption_column="caption", width=64)
    if len(others):
        st.markdown("**Not shown as issues**")
        st.dataframe(others[["title", "status", "note"]], hide_index=True, width="stretch")


# ---------------------------------------------------------------- one issue type
def commit(table: LabelTable, version: int, changes: ChangeSet, message: str) -> None:
    if commit_edit(table, changes, parent=version, message=message, page="health") is not None:
        st.rerun()


def picked_rows(page: HealthPage, check: str) -> list[int] | None:
    """The flagged, not excluded samples of ``check`` on one page, and the ids of those picked (None: nothing left)."""
    report = page.report
    flagged = report.flagged(check)
    excluded = int((flagged["weight"] <= 0).sum())
    flagged = flagged[flagged["weight"] > 0]
    pages = max(1, -(-len(flagged) // PAGE_SIZE))
    left, right = st.columns([1, 3])
    page_number = left.number_input(f"Page (of {pages:,})", 1, pages, 1, key=f"health-page-{check}")
    right.caption(f"{len(flagged):,} flagged and not excluded, most severe first" + (f"; {excluded:,} flagged ones are excluded already" if excluded else "") + ".")
    part = flagged.iloc[(page_number - 1) * PAGE_SIZE : page_number * PAGE_SIZE].reset_index(drop=True)
    if part.empty:
        st.success("Nothing left to decide here.")
        return None
    thumbnail_grid(page.paths.thumbs, part.assign(caption=[f"#{i} {label}" for i, label in zip(part["sample_id"], part["label"])]), limit=PAGE_SIZE, caption_column="caption", width=80)
    shown_rows = hashlib.blake2b(pd.util.hash_pandas_object(part[["sample_id", "label"]], index=False).to_numpy().tobytes(), digest_size=8).hexdigest()
    # Nothing is picked until the user picks: by ticking rows, or all of this page, or none again. The buttons
    # start the table anew with every row ticked or none (a new key: a data editor's edits cannot be reset otherwise).
    presets_key = f"health-picks-{check}-{page.version}-{shown_rows}"
    preset = st.session_state.get(presets_key, {"all": False, "generation": 0})
    with st.container(horizontal=True):
        for text, pick_all, key in ((f"Pick all {len(part)} on this page", True, "all"), ("Pick none", False, "none")):
            if st.button(text, key=f"health-pick-{key}-{check}"):
                st.session_state[presets_key] = {"all": pick_all, "generation": preset["generation"] + 1}
                st.rerun()
    view = pd.DataFrame({
        "thumbnail": [thumbnail_url(h) for h in part["content_hash"]],
        "sample_id": part["sample_id"], "label": part["label"], "score": part[f"{check}_score"].round(3),
        "also": report.issue_types().reindex(part["sample_id"]).to_numpy(), "pick": preset["all"],
    })
    edited = st.data_editor(
        view, key=f"health-{check}-{page.version}-{shown_rows}-{preset['generation']}", hide_index=True, width="stretch", row_height=38, height=min(38 * (len(view) + 1), 500),
        disabled=["thumbnail", "sample_id", "label", "score", "also"],
        column_config={
            "thumbnail": st.column_config.ImageColumn("image", width="small"),
            "score": st.column_config.NumberColumn(f"{CHECKS[check].title.lower()} score", help="Low = more severe."),
            "also": st.column_config.TextColumn("every check that flags it"),
            "pick": st.column_config.CheckboxColumn("pick", help="The buttons below act on the picked rows of this page only."),
        },
    )
    return edited.loc[edited["pick"], "sample_id"].astype(int).tolist()


def issue_list(page: HealthPage, check: str, refused: bool) -> None:
    """One check's flagged samples, and what to do with those picked: exclude, relabel, see them (or more like them) on the map."""
    picked = picked_rows(page, check)
    if picked is None:
        return
    name, version, embedding = page.name, page.version, page.report.embedding
    title = CHECKS[check].title.lower()
    with st.container(horizontal=True, vertical_alignment="bottom"):
        if st.button(f"Exclude {len(picked)} picked", type="primary", disabled=refused or not picked, key=f"health-exclude-{check}"):
            commit(page.table, version, ChangeSet.set_weight(picked, 0.0), f"health: excluded {len(picked)} flagged as {title}")
        target = st.selectbox("Relabel as", page.classes + [UNDEFINED], index=None, placeholder="Choose a class", key=f"health-target-{check}",
                              help="Nothing is chosen for you: the relabel waits for your choice.")
        relabel = f"Relabel {len(picked)} picked as '{plain(target)}'" if target is not None else f"Relabel {len(picked)} picked"
        if st.button(relabel, disabled=refused or not picked or target is None, key=f"health-relabel-{check}"):
            commit(page.table, version, ChangeSet.relabel(picked, target), f"health: relabelled {len(picked)} flagged as {title} to {target}")
        if st.button(f"Show {len(picked)} picked on the map", disabled=not picked, key=f"health-map-{check}"):
            hand_to_map(name, picked, f"health-{check}")
    if embedding is not None:
        with st.container(horizontal=True, vertical_alignment="bottom"):
            k = st.number_input("Neighbours", 1, 5000, 50, key=f"health-more-k-{check}")
            if st.button(f"More like the {len(picked)} picked, on the map", disabled=not picked, key=f"health-more-{check}",
                         help=f"The picked samples and the {k} samples nearest to them (their mean, cosine in {embedding}) become the map's selection."):
                found = more_like_this(workspace(), name, embedding, picked, k=int(k), version=version)
                hand_to_map(name, found["sample_id"], f"health-more-{check}")


# ---------------------------------------------------------------- near-duplicate groups
def duplicate_groups(page: HealthPage, refused: bool) -> None:
    version, samples = page.version, page.samples
    weight = samples.set_index("sample_id")["weight"]
    groups = [g for g in page.report.duplicate_groups if (weight.reindex(g) > 0).sum() > 1]
    if not groups:
        st.success("No near-duplicate group has more than one sample left in training.")
        return
    pages = max(1, -(-len(groups) // GROUPS_PER_PAGE))
    left, right = st.columns([1, 3])
    page_number = left.number_input(f"Page (of {pages:,})", 1, pages, 1, key="health-groups-page")
    right.caption(f"{len(groups):,} groups with two or more samples still in training, largest first. Pick the one to keep in each; the others are excluded.")
    by_id = samples.set_index("sample_id")
    keep: dict[int, list[int]] = {}
    for number, group in enumerate(groups[(page_number - 1) * GROUPS_PER_PAGE : page_number * GROUPS_PER_PAGE], start=(page_number - 1) * GROUPS_PER_PAGE + 1):
        members = [int(i) for i in group if weight.get(i, 0) > 0]
        with st.container(border=True):
            columns = st.columns(8)  # side by side at one size, however many the group has
            for column, sample_id in zip(columns, members[:8]):
                column.image(str(page.paths.thumbnail(by_id.at[sample_id, "content_hash"])), width=80)
                column.caption(f"#{sample_id} · {plain(by_id.at[sample_id, 'label'])}")
            if len(members) > 8:
                st.caption(f"and {len(members) - 8} more")
            kept = st.radio(f"Group {number}: keep", members, horizontal=True, format_func=lambda i: f"#{i}", key=f"health-keep-{version}-{members[0]}")
            keep[kept] = [i for i in members if i != kept]
    excluded = [i for others in keep.values() for i in others]
    if st.button(f"Keep one of each of these {len(keep)} groups, exclude the other {len(excluded)}", type="primary", disabled=refused, key="health-keep-one"):
        commit(page.table, version, ChangeSet.set_weight(excluded, 0.0), f"health: kept one of {len(keep)} near-duplicate groups, excluded {len(excluded)}")


def main() -> None:
    page = build_page()
    refused = refused_commit(page.table, "health")  # a refused exclude or relabel: why, and a Reload (the picks stay)
    choices = ["Overview", "Near-duplicate groups"] + [f"{CHECKS[r.check].title} ({r.flagged:,})" for r in page.summary.itertuples() if r.status == "ran" and r.flagged]
    # required: a second press on the shown view (Space on the focused pill, after choosing it) keeps it, instead
    # of deselecting it and dropping the user back on the Overview.
    view = st.segmented_control("Show", choices, default="Overview", required=True, key="health-view")
    if view == "Near-duplicate groups":
        duplicate_groups(page, refused)
    elif view and view != "Overview":
        issue_list(page, next(c.name for c in CHECKS.values() if view.startswith(c.title + " (")), refused)
    else:
        overview(page)


main()
