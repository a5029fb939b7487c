"""Charts more than one page draws."""

from __future__ import annotations

import altair as alt
import pandas as pd


def confusion_chart(confusion: dict) -> alt.Chart:
    """A run's confusion matrix (``confusion.json``) as a heat map whose cells can be clicked (selection "cell")."""
    labels = confusion["labels"]
    cells = pd.DataFrame([(g, p, n) for g, row in zip(labels, confusion["matrix"]) for p, n in zip(labels, row)], columns=["given", "predicted", "count"])
    pick = alt.selection_point(name="cell", fields=["given", "predicted"], on="click", clear="dblclick")
    base = alt.Chart(cells).encode(x=alt.X("predicted:N", sort=labels, title=f"predicted ({confusion['columns'].split('(')[-1].rstrip(')')})"), y=alt.Y("given:N", sort=labels, title="given label"))
    heat = base.mark_rect().encode(
        color=alt.Color("count:Q", scale=alt.Scale(scheme="blues", type="symlog"), legend=None),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.55)),
        tooltip=["given:N", "predicted:N", "count:Q"],
    ).add_params(pick)
    text = base.mark_text(fontSize=11).encode(text="count:Q", color=alt.condition(alt.datum.count > max(cells["count"].max() / 3, 1), alt.value("white"), alt.value("#333")))
    return (heat + text).properties(height=max(32 * len(labels), 160) + 110)  # Streamlit counts the axis labels in the height
