"""Train page: every training setting, live progress and curves, then the CV table, the report,
and a clickable confusion matrix; run history, model downloads, predicting a folder."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import streamlit as st

from labelloop.app.components.charts import confusion_chart, live_curve_chart
from labelloop.app.components.compute_setting import current_compute
from labelloop.app.components.data_cache import version_rows
from labelloop.app.components.gallery import plain, thumbnail_grid
from labelloop.app.components.jobs import current_job, follow_job, start_job
from labelloop.app.components.jobs import running as job_running
from labelloop.app.components.session import TRAIN_ANNOUNCED, hand_to_map, keys, owner
from labelloop.app.components.settings_form import settings_form
from labelloop.app.components.sidebar import open_current_version, workspace
from labelloop.data.runs import (
    ModelConfig,
    RunInfo,
    held_out,
    list_runs,
    load_json,
    load_samples,
)
from labelloop.data.schema import trainable_mask
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import DatasetPaths
from labelloop.embed import list_embeddings, preferred_embedding
from labelloop.train.pipeline import train
from labelloop.train.registry import FAMILIES, measured_speed
from labelloop.train.settings import FamilySettings


@dataclass
class TrainPage:
    """What one run of the page works on: the version shown, its rows, its data set's files, and its training job's key."""

    table: LabelTable
    name: str
    version: int
    rows: pd.DataFrame
    paths: DatasetPaths  # the data set, resolved once: what training, the run list and predictions are handed
    job_key: str


def build_page() -> TrainPage:
    table, name, version = open_current_version()
    rows = version_rows(table, version)
    st.title("Train")
    st.caption(f"Version {version} of '{name}': {int(trainable_mask(rows).sum()):,} labelled samples to train on.")
    return TrainPage(table, name, version, rows, DatasetPaths(workspace(), name), keys(name).train_job)


def new_run_form(page: TrainPage) -> FamilySettings | None:
    family = FAMILIES[st.selectbox("Model family", list(FAMILIES), format_func=lambda f: FAMILIES[f].title, help="What to train. Each family starts from its recipe's settings and shows only the settings it reads.")]
    speed = measured_speed(list_runs(page.paths), family.name)
    st.caption(family.help + (f" Last run of this family here: {speed}." if speed else " No run of this family here yet: once it starts, its progress says how long the rest may take at the pace it measures."))
    embedding_keys = [m["key"] for m in list_embeddings(page.paths)]
    if family.name == "heads":
        line = heads_estimate(page)
        if line:
            st.caption(line)
    return settings_form(family.settings_class, f"settings-{family.name}", embedding_keys, preferred_embedding(page.paths), "Start training")


def heads_estimate(page: TrainPage) -> str | None:
    """How long the recipe's heads should take here, before the first run: from the pace measured on any heads
    run in this workspace (the automatic ones after each commit included), else from the FLOPs at the speed this
    machine embeds at; None without an embedding."""
    from labelloop.train.heads import HeadsSettings, estimate_seconds

    embeddings = {m["key"]: m for m in list_embeddings(page.paths)}
    key = preferred_embedding(page.paths)
    if key not in embeddings or not embeddings[key].get("dim"):
        return None
    recipe = HeadsSettings()
    labels = page.rows.loc[trainable_mask(page.rows), "label"]
    n = len(labels)
    if n < 2:
        return None
    folds = recipe.folds or max(2, min(5, int(labels.value_counts().min())))  # as the run picks them
    seconds, measured, from_flops = estimate_seconds(page.paths.workspace, recipe, n, int(embeddings[key]["dim"]), labels.nunique(), folds)
    unknown = [h for h in recipe.heads if h not in measured and h not in from_flops]
    if not measured and not from_flops:
        return None
    how = "; ".join(part for part in (
        f"{', '.join(measured)} at the pace measured here" if measured else "",
        # A lower bound: training runs further from the hardware's peak than the optimised embedding runtime
        # (measured on the demo: 14 s from the FLOPs, 40 s for the MLP's cross-validation).
        f"{', '.join(from_flops)} from {'its' if len(from_flops) == 1 else 'their'} FLOPs at the speed this machine embeds: a lower bound" if from_flops else "",
        f"nothing known yet of {', '.join(unknown)}" if unknown else "",
    ) if part)
    span = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    return (f"The recipe's heads ({', '.join(recipe.heads)}, {folds}-fold) on {n:,} labelled samples: {'at least ' if from_flops else 'about '}{span} "
            f"of cross-validation here ({how}), then the best is retrained.")


def job_panel(page: TrainPage) -> None:
    """The training job's progress (and Cancel), its error, its live curves; its end shows its run."""
    job = current_job(page.job_key)
    if job is None:
        return
    if job.running:
        st.progress(job.fraction, text=f"{job.description}: {job.stage}")
        if st.button("Cancel", key="cancel-training"):
            job.stop_requested.set()
    elif job.error:
        (st.warning if job.cancelled else st.error)(job.error)
    if job.curves:
        curves = pd.DataFrame(job.curves)
        curves["series"] = curves["stage"].astype(str)
        left, right = st.columns(2)
        for column, where in (("val_accuracy", left), ("train_loss", right)):
            if column in curves:
                where.altair_chart(live_curve_chart(curves, column), width="stretch")
    if not job.running and job.result is not None and st.session_state.get(TRAIN_ANNOUNCED) != job.result.run_id:
        st.session_state[TRAIN_ANNOUNCED] = job.result.run_id
        st.session_state[keys(page.name).train_show] = job.result.run_id  # the user's own run, not a background one
        st.rerun(scope="app")


def start(page: TrainPage, settings: FamilySettings) -> None:
    compute = current_compute()
    if not FAMILIES[settings.family].trains_on_ray:  # heads and the triplet encoder train here in seconds; Ray is for the image models
        compute = replace(compute, ray=None, workers=1, gpus_per_worker=0.0)
    description = f"{settings.family} on v{page.version}" + (f" on Ray ({compute.ray})" if compute.ray else "")
    start_job(page.job_key, description, lambda job: train(
        page.paths, None, settings, version=page.version, progress=job.progress, should_stop=job.should_stop, on_curve=job.add_curve, compute=compute,
    ))
    st.session_state[keys(page.name).train_started] = True


@st.cache_data(max_entries=8, show_spinner=False)
def model_zip(run_path: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(Path(run_path, "model").iterdir()):
            archive.write(file, f"model/{file.name}")
    return buffer.getvalue()


def show_run(page: TrainPage, run: RunInfo) -> None:
    """A run's CV table, what it is, its confusion matrix (a cell shows its samples) and report, and its model files."""
    summary = run.summary
    cv = load_json(run, "cv.json") if (run.path / "cv.json").exists() else {"heads": {}}
    st.subheader(f"Run {run.run_id}")
    where = f" Trained on {summary.device}" + (f", {summary.launcher}" if summary.launcher != "local" else "") + "." if summary.device else ""
    st.caption((summary.note or f"{summary.folds}-fold cross-validation; per-sample scores are out of fold.") + where)
    if cv["heads"]:
        table_rows = [{"model": head, "mean accuracy": round(v["mean"], 4), "std": round(v["std"], 4), "folds": ", ".join(f"{a:.3f}" for a in v["fold_accuracy"]), "seconds": v.get("seconds"), "best": head == cv.get("best")} for head, v in cv["heads"].items()]
        st.dataframe(pd.DataFrame(table_rows), hide_index=True, width="stretch")
    if summary.kind in FAMILIES and summary.kind != "heads":
        st.write(FAMILIES[summary.kind].describe(run) + ".")
    if (run.path / "confusion.json").exists():
        confusion = load_json(run, "confusion.json")
        left, right = st.columns([3, 2])
        with left:
            st.markdown("**Confusion matrix** — click a cell to see its samples")
            event = st.altair_chart(confusion_chart(confusion), on_select="rerun", key=f"confusion-{run.run_id}", width="stretch")
        with right:
            report = pd.DataFrame(load_json(run, "report.json")).T.reset_index(names="class")
            st.markdown("**Classification report**")
            st.dataframe(report.round(3), hide_index=True, width="stretch", height=36 * (len(report) + 1))
        picked = (event.selection.get("cell") or [None])[0] if event and event.selection else None
        if picked:
            samples = load_samples(run)
            evaluated = held_out(samples)
            cell = samples[evaluated & (samples["label"] == picked["given"]) & (samples["predicted_label"] == picked["predicted"])]
            cell = cell.merge(page.rows[["sample_id", "content_hash"]], on="sample_id")
            st.markdown(f"**{len(cell):,} samples labelled {plain(picked['given'])}, predicted {plain(picked['predicted'])}**")
            thumbnail_grid(page.paths.thumbs, cell.sort_values("issue_score", ascending=False), caption_column="sample_id")
            if len(cell) and st.button("Send these to the map as a selection", key=f"to-map-{run.run_id}"):
                hand_to_map(page.name, cell["sample_id"], "confusion")
    model_config = run.path / "model" / ModelConfig.FILENAME
    if model_config.exists():
        a, b = st.columns(2)
        a.download_button("Download the model (zip)", model_zip(str(run.path)), file_name=f"{run.run_id}-model.zip", key=f"zip-{run.run_id}")
        b.download_button("Download model_config.json", model_config.read_bytes(), file_name="model_config.json", mime="application/json", key=f"config-{run.run_id}")


def predict_section(page: TrainPage, run: RunInfo) -> None:
    """Label a folder of new images with ``run``: a background job that writes a CSV this session can download."""
    from labelloop.train.predict import predict_folder

    key = f"predict:{owner()}"  # the CSV is this session's to download
    finished = follow_job(key)
    if finished is not None:
        csv, count, skipped = finished.result
        st.success(f"Wrote {count:,} predictions to {csv}" + (f"; skipped {len(skipped)} file(s)" if skipped else ""))
        st.download_button("Download the CSV", csv.read_bytes(), file_name=csv.name, mime="text/csv")
    if job_running(key):
        return
    with st.form(f"predict-{run.run_id}"):
        folder = st.text_input("Folder of new images", help="Every image under it is classified; the CSV has filename,label (and, if asked, one probability column per class).")
        out = st.text_input("Write the CSV to", str(page.paths.predictions(run.run_id)))
        with_probabilities = st.checkbox("Add one probability column per class")
        go = st.form_submit_button("Predict")
    if go:
        compute = current_compute()
        start_job(key, f"predicting with {run.run_id}", lambda job: predict_folder(
            run.run_id, folder, out, page.paths.workspace, probabilities=with_probabilities, compute=replace(compute, workers=1, gpus_per_worker=0.0),
            progress=lambda done, total: job.progress(f"{done:,} of {total:,} images", done / max(total, 1)),
        ))
        st.rerun()


def sweep_section(page: TrainPage) -> None:
    """A grid of settings of one family, trained as Ray Tune trials (labelloop.train.sweep); the trials, best first."""
    from labelloop.train.sweep import list_sweeps, parse_grid, run_sweep

    name, version = page.name, page.version
    key = f"sweep:{name}"
    follow_job(key)  # progress and Cancel while it runs; its error, if it fails
    if not job_running(key):
        compute = current_compute()
        family = st.selectbox("Model family", list(FAMILIES), format_func=lambda f: FAMILIES[f].title, key="sweep-family")
        with st.form(f"sweep-{family}"):
            names = ", ".join(info.name for info in FAMILIES[family].settings_class.settings() if info.name != "seed")
            grid_text = st.text_area(
                "Grid: one setting per line, its values separated by commas", "learning_rate=1e-3,5e-4\nbatch_size=16,32" if family != "heads" else "heads=mlp\nlearning_rate=1e-3,5e-4\nbatch_size=32,64",
                help=f"Settings of this family: {names}. A setting that is itself a list (hidden units) separates its values by ';'. Every other setting keeps the family's recipe.",
            )
            left, right = st.columns(2)
            samples = left.number_input("Seeds per combination", 1, 100, 1)
            asha = right.checkbox("ASHA early stopping", help="End the trials whose validation accuracy trails at each rung (their runs are not kept).")
            st.caption(f"Runs on {'a Ray started on this machine' if compute.ray is None else 'Ray at ' + compute.ray} (the Compute setting in the sidebar).")
            go = st.form_submit_button("Start the sweep")
        if go:
            lines = [line.strip() for line in grid_text.splitlines() if line.strip()]
            grid = parse_grid(family, lines)
            start_job(key, f"sweep of {family} on v{version}", lambda job: run_sweep(
                page.paths.workspace, name, family, grid, samples=int(samples), asha=asha, ray=compute.ray or "local", device=compute.device, version=version,
                progress=job.progress, should_stop=job.should_stop,
            ))
            st.rerun()
    sweeps = [record for record in list_sweeps(page.paths.workspace, name) if record.version == version]
    if sweeps:
        record = sweeps[0]
        st.markdown(f"**Latest sweep on version {version}**: {record.family}, {len(record.trials)} trials in {record.seconds:.0f} s"
                    + (f"; best: run {record.best_run}" if record.best_run else "; no trial finished"))
        frame = record.frame()
        st.dataframe(frame.drop(columns=["error"] if not frame["error"].astype(bool).any() else []), hide_index=True, width="stretch",
                     column_config={"accuracy": st.column_config.NumberColumn("accuracy (own labels, held out)", format="%.4f"), "best": st.column_config.CheckboxColumn("best")})


def new_run(page: TrainPage) -> bool:
    """The settings of a new run and its job's panel; whether a run is training now."""
    job = current_job(page.job_key)
    running = job is not None and job.running
    # The settings stay folded once the user has started a run: its progress and results belong in view.
    with st.expander("New training run", expanded=not running and not st.session_state.get(keys(page.name).train_started)):
        settings = new_run_form(page)
        if settings is not None:
            start(page, settings)
            st.rerun()
    if running:
        # Polls once a second only while the job runs: a timer left ticking after it (or after the user went
        # to another page) asks Streamlit to rerun a fragment that no longer exists.
        st.fragment(job_panel, run_every=1.0)(page)
    else:
        job_panel(page)
    return running


def chosen_run(page: TrainPage, running: bool) -> RunInfo | None:
    """The runs on this version as a table, and the one picked to show (the user's own when there is one), or None.

    The user's own last run stays in view even when it trained on another version (they committed, or moved to
    a newer version, while it trained): an automatic run of the new version never takes its place unannounced.
    """
    runs = list_runs(page.paths, version=page.version)
    wanted = st.session_state.get(keys(page.name).train_show)
    own_id = st.session_state.get(TRAIN_ANNOUNCED)  # the user's last finished training job's run
    yours = None
    if own_id and own_id not in {r.run_id for r in runs}:
        yours = next((r for r in list_runs(page.paths) if r.run_id == own_id), None)
    if not runs and yours is None:
        st.info(f"No training runs on version {page.version} yet.")
        return None
    if runs:
        history = pd.DataFrame([{
            "run": r.run_id, "started by": "automatic, after a commit" if r.automatic else "you", "kind": r.summary.kind, "best": r.summary.best_model,
            "accuracy": r.summary.held_out_accuracy, "labelled": r.summary.n_labelled, "seconds": r.summary.seconds,
        } for r in runs])
        st.markdown(f"**Runs on version {page.version}**")
        st.dataframe(history, hide_index=True, width="stretch", height=min(36 * (len(history) + 1), 250),
                     column_config={"accuracy": st.column_config.NumberColumn("accuracy (own labels, held out)", format="%.4f")})
    if yours is not None:
        st.info(f"Your run {yours.run_id} trained on v{yours.version}, not on v{page.version} shown here; it is shown below. "
                f"Pick v{yours.version} in the sidebar to see it among that version's runs.")
        runs = [yours, *runs]
    run_ids = [r.run_id for r in runs]
    by_id = {r.run_id: r for r in runs}
    if running:
        st.caption(f"Your run ({current_job(page.job_key).description}) is still training; the runs below are finished ones.")
    # Show the user's own run when there is one; a background run never takes its place.
    own = next((r.run_id for r in runs if not r.automatic), None)
    default = wanted if wanted in run_ids else own or run_ids[0]
    chosen = st.selectbox("Show run", run_ids, index=run_ids.index(default), help="Newest first.",
                          format_func=lambda i: i + f" · v{by_id[i].version}" + (" · automatic, after a commit" if by_id[i].automatic else "") + (" · yours, just trained" if i == own_id else ""))
    st.session_state[keys(page.name).train_show] = chosen
    return by_id[chosen]


def main() -> None:
    page = build_page()
    running = new_run(page)
    with st.expander("Sweep: try several settings, each as a run"):
        sweep_section(page)
    run = chosen_run(page, running)
    if run is None:
        return
    show_run(page, run)
    model = run.model_config()
    if model is not None and model.model_type != "triplet-encoder":
        with st.expander("Predict a folder of new images"):
            predict_section(page, run)


main()
