"""Picking a model: the recommended list (size, speed here, whether the weights are cached), or any other by name."""

from __future__ import annotations

import streamlit as st

from labelloop.embed.models import DEFAULT_MODEL, ModelChoice, model_choices

OTHER = "Other model (type its name below)"
NAME_HELP = ("A model by the name its library publishes: torchvision:ARCH:WEIGHTS (torchvision:convnext_tiny:DEFAULT), "
             "open_clip:ARCH:TAG (open_clip:ViT-L-14:datacomp_xl_s13b_b90k), timm:NAME.TAG (timm:vit_base_patch14_dinov2.lvd142m), "
             "or open_clip:hf-hub:ORG/REPO. Weights download once into the library's cache (TORCH_HOME, HF_HOME).")


@st.cache_data(ttl=30, show_spinner="Reading the recommended models...")
def _choices(workspace: str) -> list[ModelChoice]:
    # Short-lived: the cache state changes when a download finishes, the speed when a model has run.
    return model_choices(workspace)


def model_picker(where, workspace, *, key: str, label: str = "Model", default: str = DEFAULT_MODEL, in_form: bool = False) -> str:
    """A selectbox of the recommended models plus an "other" name field; returns the chosen model's name."""
    choices = _choices(str(workspace))
    by_name = {c.name: c for c in choices}
    names = [c.name for c in choices]
    options = [*names, OTHER]
    index = options.index(default) if default in options else len(options) - 1
    picked = where.selectbox(label, options, index=index, key=f"{key}-pick", format_func=lambda n: by_name[n].label() if n in by_name else n,
                             help="Size: parameters and the FLOPs of one image. Speed: measured here once a model has run, else estimated from "
                                  "the bundled model's measured rate. Ready: the weights are on this machine; otherwise they download once.")
    if picked != OTHER and not in_form:
        return picked
    # Inside a form nothing reruns until it is submitted, so there the name field is always shown (and used with "Other").
    typed = where.text_input("Other model name" + (" (used when 'Other model' is picked above)" if in_form else ""), value="" if default in names else default, key=f"{key}-other",
                             placeholder="e.g. torchvision:convnext_tiny:DEFAULT", help=NAME_HELP)
    return typed.strip() if picked == OTHER else picked
