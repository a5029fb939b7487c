"""Declared settings as widgets (labelloop.settings): one widget per setting, built from its declaration.

:func:`setting_widget` draws one, :func:`settings_of` reads them back validated. The training families'
form, the sidebar's compute setting and the Map's settings are all made of these two.
"""

from __future__ import annotations

from dataclasses import MISSING

from labelloop.settings import SettingInfo, Settings


def setting_widget(where, info: SettingInfo, value=MISSING, *, key: str | None = None):
    """One declared setting's widget, showing ``value`` (default: the declared default), built from its declaration:
    a choice is a select box, a number an input within its bounds, a list of numbers comma-separated text (read by
    :func:`settings_of`). For an optional number 0 (and for text, empty) means None, as the label says."""
    value = info.default if value is MISSING else value
    if info.is_tuple and info.choices:
        return tuple(where.multiselect(info.label, info.choices, default=list(value), help=info.help, key=key))
    if info.is_tuple:
        return where.text_input(info.label, info.shown(value), help=info.help + " Comma-separated.", key=key)
    if info.choices:
        return where.selectbox(info.label, info.choices, index=info.choices.index(value), help=info.help, key=key)
    if info.kind is str:
        return where.text_input(info.label, value or "", placeholder=info.none or None, help=info.help, key=key).strip() or None
    if info.optional:
        number = where.number_input(f"{info.label} (0: {info.none})", 0, int(info.maximum), int(value or 0), help=info.help, key=key)
        return int(number) or None
    if info.kind is int:
        return int(where.number_input(info.label, _bound(int, info.minimum), _bound(int, info.maximum), int(value), help=info.help, key=key))
    small = value and abs(value) < 0.01
    return float(where.number_input(info.label, _bound(float, info.minimum), _bound(float, info.maximum), float(value),
                                    format="%.2e" if small else "%.4g", help=info.help, key=key))


def settings_of(settings_class: type[Settings], values: dict, **fixed) -> Settings:
    """``settings_class`` from what :func:`setting_widget` returned (and ``fixed`` values), validated: a UserError names a bad one."""
    infos = {info.name: info for info in settings_class.settings()}
    parsed = {name: infos[name].parse(value) if infos[name].is_tuple and isinstance(value, str) else value for name, value in values.items()}
    settings = settings_class(**parsed, **fixed)
    settings.validate()
    return settings


def _bound(kind: type, bound: float | None):
    return None if bound is None else kind(bound)
