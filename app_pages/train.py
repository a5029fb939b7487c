"""Train page: every training setting, live progress and curves, then the CV table, the report,
and a clickable confusion matrix; run history, model downloads, predicting a folder."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from components.data_cache import version_rows
from components.charts import confusion_chart
from components.gallery import plain, send_to_map, thumbnail_grid
from components.jobs import current_job, start_job
from components.sidebar import open_current_version, workspace
from core.embed import list_embeddings, preferred_embedding
from core.errors import UserError
from core.runs import held_out, list_runs, load_json, load_samples, measured_speed
from core.train.config import (
    AUGMENTATIONS,
    BACKBONES,
    CLASS_WEIGHTINGS,
    FAMILIES,
    HEADS,
    OPTIMIZERS,
    TrainConfig,
)
from core.train.pipeline import train
from core.workspace import DatasetPaths

FAMILY_HELP = {
    "heads": "k-NN, logistic regression and an MLP on the embeddings: stratified k-fold, the best retrained on everything.",
    "frozen-backbone": "A pretrained backbone kept frozen with a new head (Dropout, 512, ReLU, Dropout). Fast on cached features; RandAugment or unfreezing go through the images every epoch (slow on a CPU).",
    "resnet18-scratch": "ResNet-18 from scratch on the images at 128 px.",
    "triplet": "A triplet-loss encoder on the embeddings; its output becomes a new map (classes pulled apart).",
}

table, name, version = open_current_version()
rows = version_rows(table, version)
paths = DatasetPaths(workspace(), name)
st.title("Train")
st.caption(f"Version {version} of '{name}': {int(((rows['label'] != 'undefined') & (rows['weight'] > 0)).sum()):,} labelled samples to train on.")
job_key = f"train:{name}"


def settings_form() -> TrainConfig | None:
    family = st.selectbox("Model family", FAMILIES, help="What to train. Each family starts from its recipe's settings.")
    speed = measured_speed(list_runs(workspace(), name), family)
    st.caption(FAMILY_HELP[family] + (f" Last run of this family here: {speed}." if speed else " No run of this family here yet, so no time estimate."))
    base = TrainConfig.for_family(family)
    keys = [m["key"] for m in list_embeddings(workspace(), name)]
    default_key = preferred_embedding(workspace(), name) or "none yet"
    with st.form(f"settings-{family}"):
        values: dict = {}
        if family == "heads":  # a row of its own: in a quarter of the form its chips were cut off
            values["heads"] = tuple(st.multiselect("Heads", HEADS, default=list(base.heads), help="Candidates; the best mean CV accuracy wins and is retrained on all labelled data."))
        a, b, c, d = st.columns(4)
        if family in ("heads", "triplet"):
            if not keys:
                st.warning(f"No embeddings yet: make them on the Map page (Embed) or with `python -m core embed {name}`.")
            values["embedding"] = a.selectbox("Embedding", keys or [default_key], index=keys.index(default_key) if default_key in keys else 0, help="The vectors the heads train on.")
        if family == "heads":
            folds = b.number_input("Folds (0 = automatic)", 0, 20, 0, help="Automatic: max(2, min(5, smallest class count)).")
            values["folds"] = int(folds) or None
            values["knn_k"] = c.number_input("k-NN: k", 1, 1000, base.knn_k, help="Neighbours (cosine); at most n_train - 1.")
            values["logreg_c"] = d.number_input("Logistic regression: C", 1e-4, 1e6, base.logreg_c, format="%.4g", help="Inverse L2 strength; class weights balanced.")
        if family == "frozen-backbone":
            values["backbone"] = a.selectbox("Backbone", BACKBONES, help="EfficientNet-Lite0 ships with the app; torchvision and open_clip need a local weights file.")
            values["backbone_arch"] = b.text_input("Architecture", "", help="torchvision: e.g. resnet50; open_clip: e.g. ViT-B-32. Leave empty for EfficientNet-Lite0.") or None
            values["backbone_weights"] = c.text_input("Weights file", "", help="A checkpoint on this machine; nothing is downloaded.") or None
            size = d.number_input("Image size (0 = backbone's own)", 0, 1024, 0, help="Smaller is faster on a CPU.")
            values["image_size"] = int(size) or None
            values["unfreeze_from"] = a.number_input("Unfreeze from epoch (0 = never)", 0, 10_000, 0, help="From this epoch one more tenth of the backbone trains each epoch, at a tenth of the rate.")
            folds = b.number_input("Folds (0 = one validation split)", 0, 20, 0, help="k-fold gives every labelled sample an out-of-fold score (k times the cost).")
            values["folds"] = int(folds) or None
        values["epochs"] = b.number_input("Epochs", 1, 10_000, base.epochs, help="At most; early stopping may end sooner (MLP).")
        values["batch_size"] = c.number_input("Batch size", 1, 65_536, base.batch_size)
        values["learning_rate"] = d.number_input("Learning rate", 1e-6, 10.0, base.learning_rate, format="%.2e")
        values["optimizer"] = a.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(base.optimizer), help="SGD uses momentum 0.9.")
        values["weight_decay"] = b.number_input("Weight decay", 0.0, 1.0, base.weight_decay, format="%.1e")
        values["seed"] = c.number_input("Random seed", 0, 2**31 - 1, base.seed, help="Same seed, same settings, same version: same split and numbers.")
        values["validation_split"] = d.number_input("Validation split", 0.02, 0.5, base.validation_split, help="Share held out for early stopping / validation.")
        if family in ("heads", "frozen-backbone", "triplet"):
            hidden = a.text_input("Hidden units per layer", ",".join(str(u) for u in base.hidden_units), help="Comma-separated; frozen-backbone: one layer; triplet: hidden, output dims.")
            dropout = b.text_input("Dropout", ",".join(str(p) for p in base.dropout), help="One per hidden layer (frozen-backbone: before the hidden layer and before the output).")
        if family == "heads":
            values["patience"] = c.number_input("Early-stopping patience", 1, 10_000, base.patience, help="MLP epochs without a better validation accuracy.")
            values["final_epochs"] = d.number_input("Final epochs", 1, 10_000, base.final_epochs, help="MLP epochs at most when retraining on everything.")
            values["softmax_patience"] = a.number_input("Softmax patience", 1, 10_000, base.softmax_patience)
        if family in ("heads", "frozen-backbone"):
            values["class_weighting"] = c.selectbox("Class weighting", CLASS_WEIGHTINGS, index=CLASS_WEIGHTINGS.index(base.class_weighting))
        if family in ("resnet18-scratch", "frozen-backbone"):
            values["augmentation"] = d.selectbox("Augmentation", AUGMENTATIONS, index=AUGMENTATIONS.index(base.augmentation), help="seed-001: crop, flip, rotation, affine, colour jitter, erasing; randaugment: torchvision RandAugment.")
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return None
    try:
        if family in ("heads", "frozen-backbone", "triplet"):
            values["hidden_units"] = tuple(int(v) for v in hidden.split(",") if v.strip())
            values["dropout"] = tuple(float(v) for v in dropout.split(",") if v.strip())
        config = replace(base, **values)
        config.validate()
        return config
    except ValueError:
        st.error("Hidden units and dropout take comma-separated numbers, e.g. 256,128 and 0.3,0.2.")
    except UserError as error:
        st.error(str(error))
    return None


def job_panel() -> None:
    job = current_job(job_key)
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
                where.caption(column.replace("_", " "))
                where.line_chart(curves, x="epoch", y=column, color="series", height=220)
    if not job.running and job.result is not None and st.session_state.get("announced") != job.result.run_id:
        st.session_state["announced"] = job.result.run_id
        st.session_state[f"train-show:{name}"] = job.result.run_id  # the user's own run, not a background one
        st.rerun(scope="app")


def start(config: TrainConfig) -> None:
    description = f"{config.family} on v{version}"
    start_job(job_key, description, lambda job: train(workspace(), name, config, version=version, progress=job.progress, should_stop=job.should_stop, on_curve=job.add_curve))
    st.session_state[f"train-started:{name}"] = True


@st.cache_data(max_entries=8, show_spinner=False)
def model_zip(run_path: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(Path(run_path, "model").iterdir()):
            archive.write(file, f"model/{file.name}")
    return buffer.getvalue()


def show_run(run) -> None:
    summary = run.summary
    cv = load_json(run, "cv.json") if (run.path / "cv.json").exists() else {"heads": {}}
    st.subheader(f"Run {run.run_id}")
    st.caption(summary.get("note", "") or f"{summary.get('folds')}-fold cross-validation; per-sample scores are out of fold.")
    if cv["heads"]:
        table_rows = [{"model": head, "mean accuracy": round(v["mean"], 4), "std": round(v["std"], 4), "folds": ", ".join(f"{a:.3f}" for a in v["fold_accuracy"]), "seconds": v.get("seconds"), "best": head == cv.get("best")} for head, v in cv["heads"].items()]
        st.dataframe(pd.DataFrame(table_rows), hide_index=True, width="stretch")
    if summary.get("kind") == "triplet":
        st.write(f"10-NN accuracy of the labels: {summary['knn_input']:.4f} in the input embedding, {summary['knn_encoded']:.4f} in the encoder's space (in-sample). Its map: embedding 'triplet-{run.run_id}' on the Map page.")
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
            cell = cell.merge(rows[["sample_id", "content_hash"]], on="sample_id")
            st.markdown(f"**{len(cell):,} samples labelled {plain(picked['given'])}, predicted {plain(picked['predicted'])}**")
            thumbnail_grid(paths.thumbs, cell.sort_values("issue_score", ascending=False), caption_column="sample_id")
            if len(cell) and st.button("Send these to the map as a selection", key=f"to-map-{run.run_id}"):
                send_to_map(name, cell["sample_id"], "confusion")
    model_config = run.path / "model" / "model_config.json"
    if model_config.exists():
        a, b = st.columns(2)
        a.download_button("Download the model (zip)", model_zip(str(run.path)), file_name=f"{run.run_id}-model.zip", key=f"zip-{run.run_id}")
        b.download_button("Download model_config.json", model_config.read_bytes(), file_name="model_config.json", mime="application/json", key=f"config-{run.run_id}")


def predict_section(run) -> None:
    from core.predict import predict_folder

    with st.form(f"predict-{run.run_id}"):
        folder = st.text_input("Folder of new images", help="Every image under it is classified; the CSV has filename,label (seed-004 format).")
        out = st.text_input("Write the CSV to", str(paths.root / "exports" / f"predictions-{run.run_id}.csv"))
        with_probabilities = st.checkbox("Add one probability column per class")
        go = st.form_submit_button("Predict")
    if go:
        bar = st.progress(0.0, text="predicting...")
        try:
            csv, count, skipped = predict_folder(run.run_id, folder, out, workspace(), probabilities=with_probabilities, progress=lambda done, total: bar.progress(done / max(total, 1), text=f"predicting {done:,} of {total:,}"))
        except UserError as error:
            st.error(str(error))
            return
        st.success(f"Wrote {count:,} predictions to {csv}" + (f"; skipped {len(skipped)} file(s)" if skipped else ""))
        st.download_button("Download the CSV", csv.read_bytes(), file_name=csv.name, mime="text/csv")


job = current_job(job_key)
running = job is not None and job.running
# The settings stay folded once the user has started a run: its progress and results belong in view.
with st.expander("New training run", expanded=not running and not st.session_state.get(f"train-started:{name}")):
    config = settings_form()
    if config is not None:
        start(config)
        st.rerun()
if running:
    # Polls once a second only while the job runs: a timer left ticking after it (or after the user went
    # to another page) asks Streamlit to rerun a fragment that no longer exists.
    st.fragment(job_panel, run_every=1.0)()
else:
    job_panel()

runs = list_runs(workspace(), name, version)
if not runs:
    st.info(f"No training runs on version {version} yet.")
    st.stop()
history = pd.DataFrame([{
    "run": r.run_id, "started by": "automatic, after a commit" if r.automatic else "you", "kind": r.summary.get("kind"), "best": r.summary.get("best_model"),
    "accuracy": r.summary.get("cv_accuracy"), "labelled": r.summary.get("n_labelled"), "seconds": r.summary.get("seconds"),
} for r in runs])
st.markdown(f"**Runs on version {version}**")
st.dataframe(history, hide_index=True, width="stretch", height=min(36 * (len(history) + 1), 250), column_config={"accuracy": st.column_config.NumberColumn("accuracy (own labels, held out)", format="%.4f")})
run_ids = [r.run_id for r in runs]
by_id = {r.run_id: r for r in runs}
if running:
    st.caption(f"Your run ({job.description}) is still training; the runs below are finished ones.")
# Show the user's own run when there is one; a background run never takes its place.
wanted = st.session_state.get(f"train-show:{name}")
own = next((r.run_id for r in runs if not r.automatic), None)
default = wanted if wanted in run_ids else own or run_ids[0]
chosen = st.selectbox("Show run", run_ids, index=run_ids.index(default), format_func=lambda i: i + (" · automatic, after a commit" if by_id[i].automatic else ""), help="Newest first.")
st.session_state[f"train-show:{name}"] = chosen
run = by_id[chosen]
show_run(run)
if (run.path / "model" / "model_config.json").exists() and json.loads((run.path / "model" / "model_config.json").read_text()).get("model_type") != "triplet-encoder":
    with st.expander("Predict a folder of new images"):
        predict_section(run)
