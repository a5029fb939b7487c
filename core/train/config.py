"""TrainConfig: every training setting a user sees on the Train page, in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from core.errors import UserError

FAMILIES = ("heads", "resnet18-scratch", "frozen-backbone", "triplet")
AUGMENTATIONS = ("seed-001", "randaugment", "none")
BACKBONES = ("efficientnet-lite0", "torchvision", "open_clip")
HEADS = ("knn", "logreg", "mlp", "softmax")
SEED_000_HEADS = ("knn", "logreg", "mlp")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
CLASS_WEIGHTINGS = ("balanced", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the seed-000 pipeline exactly: k-NN (k = min(5, n_train - 1),
    cosine), logistic regression (C 1.0, balanced class weights, max_iter
    1000) and an MLP (in -> 256 -> 128 -> classes, ReLU, dropout 0.3 / 0.2,
    Adam lr 1e-3, weight decay 1e-4, batch 32, up to 100 epochs, early
    stopping on validation accuracy with patience 15, class-weighted loss),
    stratified k-fold with k = max(2, min(5, smallest class)), seed 42; the
    best mean CV accuracy is retrained on all labelled data (the MLP with a
    90/10 split for early stopping, up to 200 epochs).

    ``softmax`` (seed 002) is one more head to add to ``heads``: softmax
    regression trained like the MLP (same optimiser, batch, L2 through the
    weight decay) with no hidden layer and early stopping after
    ``softmax_patience`` epochs without a better validation accuracy.

    ``frozen-backbone`` (seed 004) trains a new head (``hidden_units`` = one
    layer, ``dropout`` = before it and before the output) on a pretrained
    ``backbone`` (an embedder kind, with ``backbone_arch`` / ``backbone_weights``
    for torchvision and open_clip); ``unfreeze_from`` > 0 unfreezes it
    gradually from that epoch; ``folds`` None means one validation split,
    a number means k-fold cross-validation.
    """

    family: str = "heads"
    heads: tuple[str, ...] = SEED_000_HEADS
    embedding: str | None = None  # embedding key; None: the default embedder's
    folds: int | None = None  # None: max(2, min(5, smallest class count))
    seed: int = 42
    # MLP
    epochs: int = 100
    final_epochs: int = 200
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    patience: int = 15
    hidden_units: tuple[int, ...] = (256, 128)
    dropout: tuple[float, ...] = (0.3, 0.2)
    validation_split: float = 0.1  # share held out for early stopping inside each training set
    class_weighting: str = "balanced"
    augmentation: str = "seed-001"  # image models only
    # frozen pretrained backbone (seed 004)
    backbone: str = "efficientnet-lite0"
    backbone_arch: str | None = None
    backbone_weights: str | None = None
    image_size: int | None = None  # None: the backbone's own input size
    unfreeze_from: int = 0  # epoch from which the backbone unfreezes gradually; 0: never
    # softmax regression (seed 002): a linear layer, L2 via weight decay, early stopping
    softmax_patience: int = 25
    # k-NN and logistic regression
    knn_k: int = 5
    logreg_c: float = 1.0
    logreg_max_iter: int = 1000
    # label issues
    issue_neighbours: int = 10

    def validate(self) -> None:
        def bad(message: str) -> None:
            raise UserError(f"Invalid training setting: {message}")

        if self.family not in FAMILIES:
            bad(f"model family '{self.family}' is not one of {', '.join(FAMILIES)}.")
        if not self.heads or any(h not in HEADS for h in self.heads) or len(set(self.heads)) != len(self.heads):
            bad(f"heads must be a selection of {', '.join(HEADS)}, each once; got {', '.join(self.heads) or 'none'}.")
        if self.folds is not None and not 2 <= self.folds <= 20:
            bad(f"folds must be 2 to 20 (or automatic), not {self.folds}.")
        if not 1 <= self.epochs <= 10_000 or not 1 <= self.final_epochs <= 10_000:
            bad("epochs must be 1 to 10,000.")
        if not 1 <= self.batch_size <= 65_536:
            bad(f"batch size must be 1 to 65,536, not {self.batch_size}.")
        if not 0 < self.learning_rate <= 10:
            bad(f"learning rate must be above 0 and at most 10, not {self.learning_rate}.")
        if self.optimizer not in OPTIMIZERS:
            bad(f"optimizer '{self.optimizer}' is not one of {', '.join(OPTIMIZERS)}.")
        if not 0 <= self.weight_decay <= 1:
            bad(f"weight decay must be 0 to 1, not {self.weight_decay}.")
        if not 1 <= self.patience <= 10_000 or not 1 <= self.softmax_patience <= 10_000:
            bad(f"patience must be at least 1 epoch, not {self.patience}.")
        if not self.hidden_units or any(u < 1 or u > 65_536 for u in self.hidden_units):
            bad(f"hidden layers need 1 to 65,536 units each, not {self.hidden_units}.")
        if not 0.02 <= self.validation_split <= 0.5:
            bad(f"validation split must be 0.02 to 0.5, not {self.validation_split}.")
        if self.family == "triplet" and len(self.hidden_units) != 2:
            bad(f"the triplet encoder takes hidden_units = (hidden, output dims), not {self.hidden_units}.")
        if self.family == "frozen-backbone":
            if len(self.hidden_units) != 1 or len(self.dropout) != 2:
                bad(f"the frozen-backbone head takes one hidden layer and two dropouts (before it and before the output), not {self.hidden_units} / {self.dropout}.")
            if self.backbone not in BACKBONES:
                bad(f"backbone '{self.backbone}' is not one of {', '.join(BACKBONES)}.")
            if not 0 <= self.unfreeze_from <= self.epochs:
                bad(f"unfreeze_from must be 0 (never) to the number of epochs ({self.epochs}), not {self.unfreeze_from}.")
            self.backbone_config().validate()
        elif len(self.dropout) != len(self.hidden_units) or any(not 0 <= p < 1 for p in self.dropout):
            bad(f"give one dropout in [0, 1) per hidden layer ({len(self.hidden_units)}), not {self.dropout}.")
        if any(not 0 <= p < 1 for p in self.dropout):
            bad(f"dropout must be in [0, 1), not {self.dropout}.")
        if self.augmentation not in AUGMENTATIONS:
            bad(f"augmentation '{self.augmentation}' is not one of {', '.join(AUGMENTATIONS)}.")
        if self.class_weighting not in CLASS_WEIGHTINGS:
            bad(f"class weighting '{self.class_weighting}' is not one of {', '.join(CLASS_WEIGHTINGS)}.")
        if not 1 <= self.knn_k <= 1000 or not 1 <= self.issue_neighbours <= 1000:
            bad("neighbour counts must be 1 to 1,000.")
        if not 0 < self.logreg_c <= 1e6 or not 1 <= self.logreg_max_iter <= 100_000:
            bad("logistic regression needs C > 0 and max_iter >= 1.")

    @classmethod
    def seed_001(cls, **overrides) -> TrainConfig:
        """ResNet-18 from scratch with seed 001's settings: AdamW lr 5e-4, weight decay 5e-4, batch 16."""
        settings = {"family": "resnet18-scratch", "epochs": 10, "batch_size": 16, "learning_rate": 5e-4, "weight_decay": 5e-4, "optimizer": "adamw", "augmentation": "seed-001", **overrides}
        return cls(**settings)

    @classmethod
    def seed_002_triplet(cls, **overrides) -> TrainConfig:
        """The triplet-loss encoder: hidden_units = (hidden, output dims), 30 epochs of 128-triplet batches."""
        settings = {"family": "triplet", "epochs": 30, "batch_size": 128, "learning_rate": 1e-3, "weight_decay": 1e-4, "hidden_units": (256, 64), "dropout": (0.0, 0.0), **overrides}
        return cls(**settings)

    @classmethod
    def seed_004(cls, **overrides) -> TrainConfig:
        """A frozen EfficientNet-Lite0 with seed 004's head: Dropout .5, 512, ReLU, Dropout .5; AdamW 5e-4, wd 1e-4, cosine."""
        settings = {"family": "frozen-backbone", "epochs": 15, "batch_size": 32, "learning_rate": 5e-4, "weight_decay": 1e-4, "optimizer": "adamw", "hidden_units": (512,), "dropout": (0.5, 0.5), "augmentation": "none", "class_weighting": "none", **overrides}
        return cls(**settings)

    @classmethod
    def for_family(cls, family: str, **overrides) -> TrainConfig:
        """The seed settings of a model family, with ``overrides`` applied."""
        make = {"resnet18-scratch": cls.seed_001, "frozen-backbone": cls.seed_004, "triplet": cls.seed_002_triplet}.get(family)
        return make(**overrides) if make else cls(family=family, **overrides)

    def backbone_config(self):
        """The embedder that is this config's frozen backbone."""
        from core.embed import EmbedderConfig

        return EmbedderConfig(kind=self.backbone, arch=self.backbone_arch, weights=self.backbone_weights, resolution=self.image_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("heads", "hidden_units", "dropout"):
            if key in known and known[key] is not None:
                known[key] = tuple(known[key])
        return cls(**known)
