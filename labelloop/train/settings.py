"""Training settings: what every family's settings class is made of.

A family's settings are one frozen dataclass (``HeadsSettings``,
``ResnetScratchSettings``, ...) of :class:`FamilySettings`, whose fields are made
with :func:`labelloop.settings.setting`: its default, the label and help a user
sees, and its bounds or choices. The CLI's flags, the Train page's form and
validation are all built from those fields, so a family shows, takes and
records exactly the settings it reads, and nothing else. What a family adds to
:class:`labelloop.settings.Settings`: the seed, and the run's config.json.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from typing import ClassVar

from labelloop.errors import UserError
from labelloop.settings import SettingInfo, Settings, setting  # noqa: F401  (the families declare their settings with these)

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
CLASS_WEIGHTINGS = ("balanced", "none")
# crop-flip-jitter: random resized crop (0.8-1), flip, rotation 10, shear 8 / scale 0.85-1.15, colour jitter .15,
# erasing 5%: the augmentation the ResNet-18 recipe was tuned with. randaugment: torchvision's RandAugment.
IMAGE_AUGMENTATIONS = ("crop-flip-jitter", "randaugment", "none")


@dataclass(frozen=True)
class FamilySettings(Settings):
    """Base of every family's settings: the seed every family reads, validation, (de)serialisation."""

    family: ClassVar[str]

    seed: int = setting(42, "Random seed", "Same seed, same settings, same version: the same splits and numbers.", minimum=0, maximum=2**31 - 1)

    @classmethod
    def ordered_fields(cls) -> list[dataclasses.Field]:
        # The family's own settings first, the seed every family shares last.
        return sorted(fields(cls), key=lambda f: f.name == "seed")

    @classmethod
    def refuse(cls, message: str) -> typing.NoReturn:
        raise UserError(f"Invalid training setting for {cls.family}: {message}")

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        """Every setting this family read, and the family: what a run's config.json records."""
        return {"family": self.family, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_dict(cls, data: dict) -> FamilySettings:
        """Settings from a config.json (this format, or the flat one runs wrote before families had their own)."""
        data = cls.upgrade(dict(data))
        known = {}
        for info in cls.settings():
            if info.name in data and data[info.name] is not None:
                known[info.name] = tuple(data[info.name]) if info.is_tuple else data[info.name]
            elif info.name in data:
                known[info.name] = None
        return cls(**known)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """Rename the keys of an older config.json to this family's names (a subclass knows its own)."""
        if data.get("augmentation") == "seed-001":
            data["augmentation"] = "crop-flip-jitter"
        return data


def _plain(value):
    return list(value) if isinstance(value, tuple) else value

