"""Compare page: two versions side by side — what changed (a clickable label flow), class counts,
the runs trained on each, and accuracy across the whole history."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import pandas as pd
import streamlit as st

from labelloop.app.components.charts import confusion_chart
from labelloop.app.components.commit import commit_edit, refused_commit
from labelloop.app.components.data_cache import version_rows
from labelloop.app.components.gallery import plain, thumbnail_grid
from labelloop.app.components.sidebar import (
    open_current_version,
    workspace,
)
from labelloop.data.changes import revert_changes
from labelloop.data.runs import list_runs, load_json
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import DatasetPaths
from labelloop.scores.fair_accuracy import FairAccuracy, accuracy_per_version


@dataclass
class ComparePage:
    """What one run of the page compares: the two versions picked, and the version the user is on."""

    table: LabelTable
    name: str
    current: int  # the version the user is on: a revert commits on it
    versions: list[int]  # every version, oldest first
    head: int
    paths: DatasetPaths
    old: int
    new: int


@st.cache_data(max_entries=16, show_spinner=False)
def cached_diff(table_path: str, a: int, b: int):
    # Two versions never change, so (table, a, b) is the whole input.
    return LabelTable(table_path).diff(a, b)


@st.cache_data(max_entries=16, show_spinner=False)
def fair_line(workspace_path: str, dataset: str, runs_on_disk: tuple[str, ...], reference: int, test_split: bool, recipe: str | None, head: int):
    """Keyed by everything it reads: the runs on disk, the reference, the recipe and the head."""
    from labelloop.data.demo import load_demo_truth

    return accuracy_per_version(workspace_path, dataset, reference_version=reference, test_split_only=test_split, main_recipe=recipe, truth=load_demo_truth(workspace_path, dataset))


def build_page() -> ComparePage:
    """The two versions to compare (the page stops with fewer than two, or the same one picked twice)."""
    table, name, current = open_current_version()
    history = table.history()
    paths = DatasetPaths(workspace(), name)
    st.title("Compare versions")
    if len(history) < 2:
        st.info("Only one version so far: relabel something on the Map or Review page, then compare.")
        st.stop()
    versions = [info.version for info in history]
    labels = {info.version: f"v{info.version} · {info.message[:50]}" for info in history}
    left, right = st.columns(2)
    new = right.selectbox("New version", versions, index=versions.index(current), format_func=labels.get)
    old = left.selectbox("Old version", versions, index=versions.index(max(1, new - 1)) if new > 1 else 0, format_func=labels.get)
    if old == new:
        st.warning("Pick two different versions.")
        st.stop()
    return ComparePage(table, name, current, versions, history[-1].version, paths, old, new)


def change_counts(diff) -> None:
    """One line: how many samples each kind of change touched."""
    kinds = diff.samples[[c for c in ("relabelled", "excluded", "included", "reweighted", "split_changed", "added", "removed") if c in diff.samples]].sum()
    st.write(" · ".join(f"**{int(n):,}** {kind.replace('_', ' ')}" for kind, n in kinds.items() if n) or "No sample differs between these versions.")


def label_flow(diff, old: int, new: int) -> dict | None:
    """The old-label × new-label chart; the cell the user clicked ({"old": ..., "new": ...}), or None."""
    st.markdown(f"**Label flow v{old} → v{new}** — click a cell to see those samples")
    flow = diff.label_flow()
    if flow.empty:
        st.caption("No label changed.")
        return None
    cells = flow.stack().rename("count").reset_index()
    cells.columns = ["old", "new", "count"]
    cells = cells[cells["count"] > 0]
    pick = alt.selection_point(name="cell", fields=["old", "new"], on="click", clear="dblclick")
    chart_base = alt.Chart(cells).encode(x=alt.X("new:N", title=f"label in v{new}"), y=alt.Y("old:N", title=f"label in v{old}"))
    chart = (chart_base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="oranges", type="symlog"), legend=None), opacity=alt.condition(pick, alt.value(1.0), alt.value(0.55)), tooltip=["old:N", "new:N", "count:Q"]).add_params(pick)
             + chart_base.mark_text(fontSize=11).encode(text="count:Q"))
    event = st.altair_chart(chart.properties(height=max(32 * cells["old"].nunique(), 120) + 110), on_select="rerun", key=f"flow-{old}-{new}", width="stretch")
    return (event.selection.get("cell") or [None])[0] if event and event.selection else None


def class_counts(table: LabelTable, old: int, new: int) -> None:
    st.markdown("**Samples per class**")
    counts = table.class_counts_by_version([old, new])
    counts["change"] = counts[f"v{new}"] - counts[f"v{old}"]
    st.dataframe(counts, width="stretch", height=36 * (len(counts) + 1))


def moved_samples(page: ComparePage, diff, picked: dict) -> None:
    """The samples of the clicked cell, and the button that reverts them to their old label on the current version."""
    table, old, new, current = page.table, page.old, page.new, page.current
    moved = diff.samples[diff.samples["relabelled"] & (diff.samples["old_label"] == picked["old"]) & (diff.samples["new_label"] == picked["new"])]
    moved = moved.merge(version_rows(table, new)[["sample_id", "content_hash"]], on="sample_id", how="left")
    st.markdown(f"**{len(moved):,} samples: {plain(picked['old'])} → {plain(picked['new'])}**")
    thumbnail_grid(page.paths.thumbs, moved.dropna(subset=["content_hash"]), caption_column="sample_id")
    revert, left_alone = revert_changes(moved, version_rows(table, current))
    if left_alone:
        st.caption(f"{left_alone:,} of them no longer carry '{plain(picked['new'])}' in v{current} (changed again since): a revert leaves them alone.")
    if not refused_commit(table, "compare") and len(revert.updates) and st.button(
        f"Revert these {len(revert.updates):,} to '{plain(picked['old'])}' as a new version on v{current}", key=f"revert-{old}-{new}-{picked['old']}-{picked['new']}"
    ):
        message = f"revert {len(revert.updates)} samples {picked['new']} -> {picked['old']} (as in v{old})"
        if commit_edit(table, revert, parent=current, message=message, page="compare") is not None:
            st.rerun()


def runs_of(name: str, version: int) -> None:
    """The runs trained on ``version``, and the confusion matrix of the newest one that has one."""
    runs = list_runs(workspace(), name, version)
    st.markdown(f"v{version}")
    if not runs:
        st.caption("No runs on this version.")
        return
    st.dataframe(pd.DataFrame([{"run": r.run_id, "started by": "automatic" if r.automatic else "you", "kind": r.summary.kind, "best": r.summary.best_model, "accuracy": r.summary.held_out_accuracy} for r in runs]), hide_index=True, width="stretch",
                 column_config={"run": st.column_config.TextColumn(width="medium"), "accuracy": st.column_config.NumberColumn("accuracy*", format="%.4f", help="Held out, against this version's own labels: not comparable across versions (see 'Did the fixes help?' below).")})
    best = next((r for r in runs if (r.path / "confusion.json").exists()), None)
    if best:
        confusion = load_json(best, "confusion.json")
        st.caption(f"Confusion matrix of {best.run_id}")
        st.altair_chart(confusion_chart(confusion), width="stretch", key=f"compare-confusion-{version}")


def fair_chart(fair: FairAccuracy, main_line: pd.DataFrame) -> None:
    """The quick heads' accuracy per version with its intervals, the first-to-last verdict, and the same as a table."""
    points = main_line.assign(label=lambda f: f["reference"])
    x = alt.X("version:O", scale=alt.Scale(domain=fair.versions), title="version", axis=alt.Axis(labelAngle=0, labelExpr="'v' + datum.label"))
    y = alt.Y("accuracy:Q", scale=alt.Scale(zero=False), title="held-out accuracy")
    colour = alt.Color("label:N", title="scored against")
    tooltip = ["version", "reference", alt.Tooltip("accuracy:Q", format=".4f"), alt.Tooltip("low:Q", format=".4f"), alt.Tooltip("high:Q", format=".4f"), "n", "run"]
    lines = alt.Chart(points).mark_line(point=True).encode(x=x, y=y, color=colour, tooltip=tooltip)
    bars = alt.Chart(points).mark_rule().encode(x=x, y="low:Q", y2="high:Q", color=colour)
    st.altair_chart((bars + lines).properties(height=260), width="stretch")
    st.caption(
        "The quick heads (k-NN and logistic regression, the same settings and seed on every version; the better by cross-validation) "
        f"trained on each version; their out-of-fold predictions scored against **{fair.reference}**"
        + (" and against the demo's **true labels**" if "true labels" in set(main_line["reference"]) else "")
        + f", on the same {int(main_line['n'].iloc[0]):,} samples in every point (those every version's quick heads predicted "
        "held out and the reference labels: a sample labelled only later would lift its version's point by itself). Bars: 95% Wilson intervals."
        + (f" No point yet for {', '.join(f'v{v}' for v in fair.missing)}: {'its' if len(fair.missing) == 1 else 'their'} quick heads have not run." if fair.missing else "")
    )
    if fair.first_to_last:
        d = fair.first_to_last
        verdict = "the fixes helped" if d["low"] > 0 else "the fixes made it worse" if d["high"] < 0 else "no change this test can tell apart from chance yet"
        st.markdown(f"v{d['from']} → v{d['to']}: **{100 * d['difference']:+.2f} points** against {fair.reference} (95% bootstrap interval {100 * d['low']:+.2f} to {100 * d['high']:+.2f}) on the same {d['n']:,} samples: {verdict}.")
    shown = pd.DataFrame({"version": [f"v{v}" for v in fair.versions]})
    for against, points_against in main_line.groupby("reference", sort=False):
        by_version = points_against.set_index("version")
        shown[f"vs {against}"] = [f"{by_version.at[v, 'accuracy']:.4f} ({by_version.at[v, 'low']:.4f}–{by_version.at[v, 'high']:.4f})" if v in by_version.index else "no point yet" for v in fair.versions]
        shown[f"n ({against})"] = [f"{int(by_version.at[v, 'n']):,}" if v in by_version.index else "" for v in fair.versions]
    st.dataframe(shown, hide_index=True, width="stretch")


def score_the_missing(name: str, missing_versions: list[int]) -> None:
    """The button that trains the quick heads on the versions without a point yet, and that job's progress."""
    from labelloop.app.components.jobs import current_job
    from labelloop.app.components.sidebar import refresh_scores

    busy = (job := current_job(f"quick:{name}")) is not None and job.running
    missing = ", ".join(f"v{v}" for v in missing_versions)
    if st.button(f"Train the quick heads on {missing} (in the background)", disabled=busy, key="score-missing", help="So every version has a point measured the same way."):
        for v in missing_versions:
            refresh_scores(name, v)
        st.rerun()
    if busy:
        st.caption(f":material/sync: {job.description}: {job.stage}")


def other_recipes(fair: FairAccuracy, recipe: str) -> None:
    """Every other training run's accuracy, one line per recipe, against the same reference."""
    others = fair.line[(fair.line["recipe"] != recipe) & (fair.line["reference"] == fair.reference)]
    if len(others):
        st.markdown(f"Other training runs, one line per recipe (same reference: {fair.reference})")
        named = others.assign(line=lambda f: f["recipe_name"] + " · " + f["recipe"])
        chart = alt.Chart(named).mark_line(point=True).encode(
            x=alt.X("version:O", scale=alt.Scale(domain=fair.versions)), y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False)), color=alt.Color("line:N", title="recipe"),
            tooltip=["version", "recipe_name", alt.Tooltip("accuracy:Q", format=".4f"), "n", "run"],
        )
        st.altair_chart(chart.properties(height=220), width="stretch")


def did_it_help(table: LabelTable, name: str, versions: list[int], head: int) -> None:
    """The accuracy line: one recipe, one reference labelling, held-out predictions, with n and intervals."""
    from labelloop.train.pipeline import quick_heads_recipe

    st.markdown("**Did the fixes help?** Held-out accuracy per version, like with like")
    recipe = quick_heads_recipe(DatasetPaths(workspace(), name))
    if recipe is None:
        st.caption("Embed the images (Map page) first: the line is measured with the quick heads on the embedding.")
        return
    left, right = st.columns([2, 1])
    reference = left.selectbox("Score every version against the labels of", versions[::-1], format_func=lambda v: f"v{v}" + (" (latest: your best labels)" if v == head else ""), key="fair-reference", help="One reference labelling for every version, so a fixed label counts the same everywhere. Default: the latest version.")
    has_test = bool((version_rows(table, reference)["split"].astype(str) == "test").any())
    test_split = right.checkbox("Only its test split", disabled=not has_test, help="Score only samples in the reference's test split (a locked test set)." if has_test else "This version has no samples in a 'test' split.")
    runs_on_disk = tuple(r.run_id for r in list_runs(workspace(), name))
    fair = fair_line(str(workspace()), name, runs_on_disk, reference, test_split, recipe, head)
    main_line = fair.line[fair.line["recipe"] == recipe]
    if main_line.empty:
        st.caption("No version has its quick heads yet.")
    else:
        fair_chart(fair, main_line)
    if fair.missing:
        score_the_missing(name, fair.missing)
    other_recipes(fair, recipe)


def main() -> None:
    page = build_page()
    diff = cached_diff(str(page.table.path), page.old, page.new)
    change_counts(diff)
    flow_column, counts_column = st.columns([3, 2])
    with flow_column:
        picked = label_flow(diff, page.old, page.new)
    with counts_column:
        class_counts(page.table, page.old, page.new)
    if picked:
        moved_samples(page, diff, picked)
    st.divider()
    st.markdown("**Runs trained on each version**")
    for column, version in zip(st.columns(2), (page.old, page.new)):
        with column:
            runs_of(page.name, version)
    st.divider()
    did_it_help(page.table, page.name, page.versions, page.head)


main()
