"""Compare page: two versions side by side — what changed (a clickable label flow), class counts,
the runs trained on each, and accuracy across the whole history."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from components.data_cache import version_rows
from components.gallery import plain, thumbnail_grid
from components.sidebar import open_current_version, show_head_moved, workspace
from core.errors import ConflictError, UserError
from core.runs import accuracy_by_version, list_runs, load_json
from core.tables import revert_changes
from core.workspace import DatasetPaths

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
b = right.selectbox("New version", versions, index=versions.index(current), format_func=labels.get)
a = left.selectbox("Old version", versions, index=versions.index(max(1, b - 1)) if b > 1 else 0, format_func=labels.get)
if a == b:
    st.warning("Pick two different versions.")
    st.stop()


@st.cache_data(max_entries=16, show_spinner=False)
def cached_diff(table_path: str, a: int, b: int, head: int):
    return table.diff(a, b)


diff = cached_diff(str(table.path), a, b, table.head_version())
kinds = diff.samples[[c for c in ("relabelled", "excluded", "included", "reweighted", "split_changed", "added", "removed") if c in diff.samples]].sum()
st.write(" · ".join(f"**{int(n):,}** {kind.replace('_', ' ')}" for kind, n in kinds.items() if n) or "No sample differs between these versions.")

flow = diff.label_flow()
flow_column, counts_column = st.columns([3, 2])
with flow_column:
    st.markdown(f"**Label flow v{a} → v{b}** — click a cell to see those samples")
    if flow.empty:
        st.caption("No label changed.")
        picked = None
    else:
        cells = flow.stack().rename("count").reset_index()
        cells.columns = ["old", "new", "count"]
        cells = cells[cells["count"] > 0]
        pick = alt.selection_point(name="cell", fields=["old", "new"], on="click", clear="dblclick")
        chart_base = alt.Chart(cells).encode(x=alt.X("new:N", title=f"label in v{b}"), y=alt.Y("old:N", title=f"label in v{a}"))
        chart = (chart_base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="oranges", type="symlog"), legend=None), opacity=alt.condition(pick, alt.value(1.0), alt.value(0.55)), tooltip=["old:N", "new:N", "count:Q"]).add_params(pick)
                 + chart_base.mark_text(fontSize=11).encode(text="count:Q"))
        event = st.altair_chart(chart.properties(height=max(32 * cells["old"].nunique(), 120) + 110), on_select="rerun", key=f"flow-{a}-{b}", width="stretch")
        picked = (event.selection.get("cell") or [None])[0] if event and event.selection else None
with counts_column:
    st.markdown("**Samples per class**")
    counts = table.class_counts_by_version([a, b])
    counts["change"] = counts[f"v{b}"] - counts[f"v{a}"]
    st.dataframe(counts, width="stretch", height=36 * (len(counts) + 1))

if picked:
    moved = diff.samples[diff.samples["relabelled"] & (diff.samples["old_label"] == picked["old"]) & (diff.samples["new_label"] == picked["new"])]
    moved = moved.merge(version_rows(table, b)[["sample_id", "content_hash"]], on="sample_id", how="left")
    st.markdown(f"**{len(moved):,} samples: {plain(picked['old'])} → {plain(picked['new'])}**")
    thumbnail_grid(paths.thumbs, moved.dropna(subset=["content_hash"]), caption_column="sample_id")
    head = table.head_version()
    if st.button(f"Revert just these {len(moved):,} to '{plain(picked['old'])}' as a new version", key=f"revert-{a}-{b}-{picked['old']}-{picked['new']}"):
        try:
            new_version = table.commit(revert_changes(moved), parent=head, message=f"revert {len(moved)} samples {picked['new']} -> {picked['old']} (as in v{a})")
        except ConflictError:
            st.error(f"This data set changed since you loaded it (now v{table.head_version()}); reload and try again. Nothing was written.")
        except UserError as error:
            st.error(str(error))
        else:
            show_head_moved(new_version)
            st.toast(f"Committed v{new_version}")
            st.rerun()

st.divider()
st.markdown("**Runs trained on each version**")
columns = st.columns(2)
for column, version in zip(columns, (a, b)):
    with column:
        runs = list_runs(workspace(), name, version)
        st.markdown(f"v{version}")
        if not runs:
            st.caption("No runs on this version.")
            continue
        st.dataframe(pd.DataFrame([{"run": r.run_id, "kind": r.summary.get("kind"), "best": r.summary.get("best_model"), "accuracy": r.summary.get("cv_accuracy")} for r in runs]), hide_index=True, width="stretch")
        best = next((r for r in runs if (r.path / "confusion.json").exists()), None)
        if best:
            confusion = load_json(best, "confusion.json")
            matrix = pd.DataFrame(confusion["matrix"], index=confusion["labels"], columns=confusion["labels"])
            st.caption(f"Confusion matrix of {best.run_id} (rows: given label; columns: {confusion['columns']})")
            st.dataframe(matrix.style.background_gradient(cmap="Blues", axis=None), width="stretch")

accuracy = accuracy_by_version(workspace(), name)
if not accuracy.empty:
    st.markdown("**Accuracy per version** (best run of each kind; heads: cross-validated)")
    chart = alt.Chart(accuracy).mark_line(point=True).encode(x=alt.X("version:O"), y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False)), color="kind:N", tooltip=["version", "kind", "best_model", "accuracy", "run"])
    st.altair_chart(chart.properties(height=260), width="stretch")
