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


def live_curve_chart(curves: pd.DataFrame, column: str) -> alt.Chart:
    """One live training curve (``column`` per ``epoch``, a line per ``series``) on axes right from the first point.

    The epoch axis runs from 1 to the planned epochs (``planned_epochs``, where the trainer says) or at least
    to 2; accuracy from 0 to 1. Points are drawn too: a one-point line is invisible, and Vega's automatic
    domain around a single epoch gave an axis such as 1.22 to 1.24 with nothing on it.
    """
    data = curves[["epoch", "series", column]].dropna()
    planned = curves["planned_epochs"].max() if "planned_epochs" in curves and curves["planned_epochs"].notna().any() else None
    last = max(float(data["epoch"].max()) if len(data) else 1.0, float(planned or 0), 2.0)
    x = alt.X("epoch:Q", scale=alt.Scale(domain=[1, last], nice=False), axis=alt.Axis(format="d", tickMinStep=1), title="epoch")
    y_scale = alt.Scale(domain=[0, 1]) if "accuracy" in column else alt.Scale(zero=True)
    y = alt.Y(f"{column}:Q", scale=y_scale, title=column.replace("_", " "))
    return alt.Chart(data).mark_line(point=True).encode(x=x, y=y, color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
                                                         tooltip=["series:N", "epoch:Q", alt.Tooltip(f"{column}:Q", format=".4f")]).properties(height=220)
