"""The compute setting: where this session's heavy jobs run (the torch device; optionally a Ray cluster).

It lives in the sidebar, folded, and says in one line what it is set to. Nothing connects to a
cluster until the user presses Check (opening a page never starts a Ray); the jobs connect when
they start, and say so if no Ray answers.
"""

from __future__ import annotations

import streamlit as st

from labelloop.app.components.session import COMPUTE, COMPUTE_CHANGED, COMPUTE_SEEN
from labelloop.app.components.setting_widgets import setting_widget, settings_of
from labelloop.compute.device import Compute
from labelloop.errors import UserError


def current_compute() -> Compute:
    """The setting this session's jobs run with (everything in this process on the best device, until changed)."""
    return st.session_state.get(COMPUTE) or Compute()


def _device_choices() -> list[str]:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu", *[f"cuda:{i}" for i in range(gpus)]]


def _summary(compute: Compute) -> str:
    from labelloop.compute.device import resolve_device

    device = resolve_device(compute.device)
    where = f"{device}" + (" (auto)" if compute.device == "auto" else "")
    if compute.ray is None:
        return f"Here, on {where}"
    return f"Ray at {compute.ray} ({compute.workers} training worker{'s' if compute.workers > 1 else ''}); torch here on {where}"


def compute_setting() -> None:
    """The sidebar's Compute expander."""
    from labelloop.compute.device import what_torch_sees

    compute = current_compute()
    # The label says what it is set to, so a change makes a new expander: it opens to show what the change found.
    with st.sidebar.expander(f"Compute: {_summary(compute)}", expanded=st.session_state.pop(COMPUTE_CHANGED, False)):
        seen = what_torch_sees()
        st.caption(seen[0].upper() + seen[1:] + ".")
        with st.form("compute-setting", border=False):
            choices = _device_choices()  # the devices torch sees here, not every name the setting takes
            device_info = Compute.setting_info("device")
            values = {"device": st.selectbox(device_info.label, choices, index=choices.index(compute.device) if compute.device in choices else 0, help=device_info.help)}
            values["ray"] = setting_widget(st, Compute.setting_info("ray"), compute.ray)
            left, right = st.columns(2)
            values["workers"] = setting_widget(left, Compute.setting_info("workers"), compute.workers)
            values["gpus_per_worker"] = setting_widget(right, Compute.setting_info("gpus_per_worker"), compute.gpus_per_worker)
            save, check = st.columns(2)
            saved = save.form_submit_button("Use")
            checked = check.form_submit_button("Check", help="Connect to the Ray address and read what it has (CPUs, GPUs).")
        if saved or checked:
            try:
                chosen = settings_of(Compute, values)
            except UserError as exc:
                st.error(str(exc))
                return
            st.session_state[COMPUTE] = chosen
            st.session_state[COMPUTE_CHANGED] = True
            st.session_state.pop(COMPUTE_SEEN, None)
            if checked and chosen.ray is not None:
                from labelloop.compute.ray_cluster import probe

                with st.spinner(f"Connecting to Ray at {chosen.ray}"):
                    try:
                        st.session_state[COMPUTE_SEEN] = probe(chosen.ray).describe()
                    except UserError as exc:
                        st.session_state[COMPUTE_SEEN] = f"error: {exc}"
            st.rerun()
        seen = st.session_state.get(COMPUTE_SEEN)
        if seen:
            (st.error if seen.startswith("error: ") else st.success)(seen.removeprefix("error: "))
