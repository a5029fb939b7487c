"""Data page: import a data set, see its versions and class counts, restore, export."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from labelloop.app.components.data_cache import version_rows
from labelloop.app.components.gallery import plain
from labelloop.app.components.jobs import Job, follow_job, running, start_job
from labelloop.app.components.session import (
    IMPORTED,
    choose_dataset,
    current_dataset,
    owner,
)
from labelloop.app.components.sidebar import (
    current_table,
    pick_version,
    show_head_moved,
    workspace,
)
from labelloop.data.demo import DEMO_NAME, build_demo, demo_score
from labelloop.data.discover import LAYOUTS
from labelloop.data.exchange import default_export_path, export_version, table_bytes
from labelloop.data.import_report import ImportReport, load_import_report
from labelloop.data.ingest import add_images, import_dataset
from labelloop.data.schema import UNDEFINED
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import DatasetPaths
from labelloop.errors import UserError


@st.cache_data(max_entries=256, show_spinner=False)
def cached_class_counts(table_path: str, version: int, committed_at: float) -> pd.DataFrame:
    # A version never changes, so (table, version, commit time) is a safe key.
    return LabelTable(table_path).class_counts(version)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_class_matrix(table_path: str, versions: tuple[int, ...], committed_at: tuple[float, ...]) -> pd.DataFrame:
    return LabelTable(table_path).class_counts_by_version(versions)


@st.cache_data(max_entries=8, show_spinner=False)
def cached_export(table_path: str, version: int, committed_at: float, fmt: str) -> bytes:
    # Serialising 100k rows takes a moment: do it once per version, not on every rerun.
    return table_bytes(LabelTable(table_path).read(version), fmt)


def show_import_report(report: ImportReport, *, summary: bool = True) -> None:
    if summary:  # the import form already said it in its success line
        st.write(report.describe())
    for warning in report.warnings:
        st.warning(warning)
    if report.skipped:
        with st.expander(f"{len(report.skipped)} skipped file(s)", expanded=len(report.skipped) <= 20):
            st.dataframe(pd.DataFrame([vars(s) for s in report.skipped]), hide_index=True, width="stretch")
    if report.duplicate_groups:
        with st.expander(f"{len(report.duplicate_groups)} group(s) of exact duplicate files"):
            st.dataframe(pd.DataFrame({"identical files": [" = ".join(g) for g in report.duplicate_groups]}), hide_index=True, width="stretch")


def import_form(existing: str | None) -> None:
    """Import a folder or manifest as a new data set, or add images to the current one (in the background)."""
    if running(import_job()):
        return  # its progress is at the top of the page
    with st.form("import"):
        source = st.text_input("Folder or manifest", placeholder="/data/flowers  or  /data/labels.csv", help="A folder of class sub-folders, a flat folder (all undefined), or a CSV/Parquet manifest with path,label[,split].")
        add = existing is not None and st.checkbox(f"Add the new images to '{existing}' (as a new version)")
        name = st.text_input("New data set name", placeholder="flowers", help="Letters, digits, '.', '_' and '-'.")
        layout = st.selectbox("Folder layout", LAYOUTS, help="auto: sub-folders are classes (train/val/test folders are splits); flat: every image is undefined.")
        submitted = st.form_submit_button("Import", type="primary")
    if not submitted:
        return
    if add:
        parent = current_table().head_version()

        def work(job: Job) -> Imported:
            version, report = add_images(source, existing, workspace(), parent=parent, layout=layout, progress=progress_of(job))
            return Imported(existing, version, f"Version {version} of '{existing}': {report.describe()}", report)
    else:
        new_name = name.strip()

        def work(job: Job) -> Imported:
            _, report = import_dataset(source, new_name, workspace(), layout=layout, progress=progress_of(job))
            return Imported(new_name, 1, f"Created '{new_name}': {report.describe()}", report)

    start_job(import_job(), "importing", work)
    st.rerun()


@dataclass
class Imported:
    name: str
    version: int
    message: str
    report: ImportReport | None


def import_job() -> str:
    """Imports belong to the session that started them: only it moves to the new data set."""
    return f"import:{owner()}"


def progress_of(job: Job):
    return lambda done, total: job.progress(f"checking images, {done:,} of {total:,}", done / max(total, 1))


def follow_import() -> None:
    """The running import's progress, or its outcome once (after moving this session to the new data)."""
    finished = follow_job(import_job())
    if finished is not None:
        imported: Imported = finished.result
        choose_dataset(imported.name)
        show_head_moved(imported.version)
        st.session_state[IMPORTED] = imported
        st.rerun()  # the sidebar picks the new data set up
    imported = st.session_state.pop(IMPORTED, None)
    if imported is not None:
        st.success(imported.message)
        if imported.report is not None:
            show_import_report(imported.report, summary=False)


def empty_workspace() -> None:
    st.title("LabelLoop")
    st.write(f"No data sets in `{workspace()}` yet. Build the demo, or import your own images.")
    if not running(import_job()) and st.button(f"Build the demo data set ({DEMO_NAME}: 6,000 Fashion-MNIST images with known label problems)", type="primary"):
        def work(job: Job) -> Imported:
            table, report = build_demo(workspace(), progress=progress_of(job))
            return Imported(DEMO_NAME, table.head_version(), f"Built the demo data set '{DEMO_NAME}': {report.describe()}", None)

        start_job(import_job(), "building the demo data set", work)
        st.rerun()
    st.subheader("Import images")
    import_form(existing=None)


def history_frame(table: LabelTable) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "version": info.version,
                "time (UTC)": info.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
                "samples": info.n_samples,
                "classes": len(info.classes),
                "message": info.message,
                "what changed": info.describe(),
            }
            for info in reversed(table.history())
        ]
    )


def versions_tab(table: LabelTable, version: int) -> None:
    st.dataframe(
        history_frame(table),
        hide_index=True,
        width="stretch",
        column_config={  # numbers first and narrow, long text last: nothing important is cut off on a laptop
            "version": st.column_config.NumberColumn(width="small"),
            "samples": st.column_config.NumberColumn(width="small"),
            "classes": st.column_config.NumberColumn(width="small"),
            "message": st.column_config.TextColumn(width="medium"),
        },
    )
    # A table cell cuts long text off: the version the sidebar shows is spelled out in full below it.
    shown = table.version_info(version)
    st.markdown(f"**v{version}** · {plain(shown.message)}  \n{plain(shown.describe())}")
    head = table.head_version()
    if version == head:
        if head > 1:
            st.caption("Pick an older version in the sidebar to restore it. Restoring adds a new version; history is never rewritten.")
        return
    with st.form("restore"):
        st.write(f"Restore version {version} as a new version {head + 1}.")
        message = st.text_input("Message", value=f"restore version {version}")
        if st.form_submit_button("Restore"):
            try:
                new_version = table.restore(version, parent=head, message=message)
                show_head_moved(new_version)
                st.toast(f"Version {new_version} restores version {version}.")
                st.rerun()
            except UserError as exc:
                st.error(str(exc))


def classes_tab(table: LabelTable, version: int) -> None:
    history = table.history()
    stamp = history[version - 1].timestamp.timestamp()
    counts = cached_class_counts(str(table.path), version, stamp)
    left, right = st.columns([2, 3])
    with left:
        st.markdown(f"**Version {version}**")
        st.dataframe(counts.reset_index(), hide_index=True, width="stretch")
    with right:
        st.bar_chart(counts[["trainable", "excluded"]].drop(index=UNDEFINED, errors="ignore"), horizontal=True, stack=True)
    recent = history[-10:]
    st.markdown("**Samples per class across versions** (last 10)")
    matrix = cached_class_matrix(str(table.path), tuple(i.version for i in recent), tuple(i.timestamp.timestamp() for i in recent))
    st.dataframe(matrix, width="stretch")


def export_tab(table: LabelTable, name: str, version: int) -> None:
    stamp = table.version_info(version).timestamp.timestamp()
    rows = version_rows(table, version)
    st.write(f"Labels of version {version}: {len(rows):,} rows.")
    left, right = st.columns(2)
    left.download_button("Download CSV", cached_export(str(table.path), version, stamp, "csv"), file_name=f"{name}-v{version}.csv", mime="text/csv")
    right.download_button("Download Parquet", cached_export(str(table.path), version, stamp, "parquet"), file_name=f"{name}-v{version}.parquet")
    with st.form("export-imagefolder"):
        default = default_export_path(DatasetPaths(workspace(), name), version, "imagefolder")
        out = st.text_input("ImageFolder export: folder to create on this machine", value=str(default))
        if st.form_submit_button("Export ImageFolder tree"):
            try:
                path, description = export_version(table, version, "imagefolder", out)
                st.success(f"{description} -> {plain(path)}")
            except UserError as exc:
                st.error(str(exc))


def demo_panel(name: str, version: int) -> None:
    score = demo_score(workspace(), name, version)
    if score is None:
        return
    st.info(
        f"**Demo score (version {version}).** {score.describe()}  \n"
        "The demo has 30% undefined samples to label and 8% deliberately flipped labels to find; "
        "its true labels are kept outside the label table to score your fixes. Its manifest also lists "
        "3 deliberately broken files, so the import report (Import tab) has something to show."
    )


def main() -> None:
    follow_import()
    table = current_table()
    if table is None:
        empty_workspace()
        return
    name = current_dataset()
    version = pick_version(table)
    info = table.version_info(version)
    rows = version_rows(table, version)

    st.title(name)
    st.caption(f"Version {version} of {table.head_version()} · {plain(info.message)}")
    cols = st.columns(5)
    cols[0].metric("Samples", f"{len(rows):,}")
    cols[1].metric("Classes", len(info.classes))
    cols[2].metric("Undefined", f"{int((rows['label'] == UNDEFINED).sum()):,}")
    cols[3].metric("Excluded", f"{int((rows['weight'] == 0).sum()):,}")
    cols[4].metric("Versions", table.head_version())
    demo_panel(name, version)

    versions, classes, importing, exporting = st.tabs(["Versions", "Classes", "Import", "Export"])
    with versions:
        versions_tab(table, version)
    with classes:
        classes_tab(table, version)
    with importing:
        report = load_import_report(workspace(), name, 1)
        if report:
            st.markdown("**How this data set was imported**")
            show_import_report(report)
        st.markdown("**Import more**")
        import_form(existing=name)
    with exporting:
        export_tab(table, name, version)


main()
