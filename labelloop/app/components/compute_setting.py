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

# The setting also lives in the page's address (``?compute.device=cuda:0&compute.ray=...``, only what differs from
# the default), so a browser reload, a bookmark or a second tab opened from it keeps where the jobs run.
URL_PREFIX = "compute."


def current_compute() -> Compute:
    """The setting this session's jobs run with (everything in this process on the best device, until changed)."""
    compute = st.session_state.get(COMPUTE)
    if compute is None:
        compute = _from_address()
        if compute is not None:
            st.session_state[COMPUTE] = compute
    return compute or Compute()


def _from_address() -> Compute | None:
    """The setting the page's address carries (a reload of a page where it was set), or None; an address that does
    not make a valid setting is dropped (the default applies) rather than half used."""
    given = {info.name: st.query_params[URL_PREFIX + info.name] for info in Compute.settings() if URL_PREFIX + info.name in st.query_params}
    if not given:
        return None
    try:
        parsed = {name: None if value == "" else Compute.setting_info(name).parse(value) for name, value in given.items()}
        return settings_of(Compute, parsed)
    except (UserError, TypeError, ValueError):
        _write_address(Compute())
        return None


def _write_address(compute: Compute) -> None:
    """Put what differs from the default into the page's address; take out what does not."""
    default = Compute()
    for info in Compute.settings():
        value = getattr(compute, info.name)
        if value != getattr(default, info.name):
            st.query_params[URL_PREFIX + info.name] = "" if value is None else str(value)
        elif URL_PREFIX + info.name in st.query_params:
            del st.query_params[URL_PREFIX + info.name]


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
    _write_address(compute)  # every run: a page switch starts the address anew
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
