"""The commands on embeddings and maps: embed, list, the recommended models, more like this, project."""

from __future__ import annotations

import argparse

import pandas as pd

from labelloop.cli.common import (
    add_compute_flags,
    add_setting_flags,
    compute_of,
    default_embedding_key,
    embedder_config,
    given_settings,
    print_table,
    progress_bar,
)
from labelloop.data.workspace import DatasetPaths, open_table


def cmd_embed(args: argparse.Namespace) -> None:
    from labelloop.embed import embed_dataset

    config, compute = embedder_config(args), compute_of(args)
    open_table(args.workspace, args.name)  # a clear error before any model loads
    with progress_bar("embedding") as progress:
        report = embed_dataset(args.workspace, args.name, config, version=args.version, progress=progress, ray=compute.ray)
    print(f"embeddings '{report.key}': {report.describe()}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    for row in report.failures.head(20).itertuples():
        print(f"not embedded: sample {row.sample_id} {row.path}: {row.reason}")
    if len(report.failures) > 20:
        print(f"... and {len(report.failures) - 20} more")


def cmd_embeddings(args: argparse.Namespace) -> None:
    from labelloop.embed import EmbeddingCache, list_embeddings

    rows = []
    for meta in list_embeddings(args.workspace, args.name):
        cache = EmbeddingCache(DatasetPaths(args.workspace, args.name).embedding(meta["key"]))
        rows.append({"key": meta["key"], "dims": meta["dim"], "vectors": len(cache.load()[0]), "description": meta["description"]})
    print_table(pd.DataFrame(rows, columns=["key", "dims", "vectors", "description"]))


def cmd_models(args: argparse.Namespace) -> None:
    from labelloop.embed.models import model_choices

    names = [(name, name, "") for name in args.names] if args.names else None
    rows = []
    for choice in model_choices(args.workspace, names):
        facts = choice.facts
        rows.append({
            "model": choice.name, "parameters (M)": f"{facts.parameters / 1e6:.1f}" if facts else "?", "GFLOPs": f"{facts.gflops:.1f}" if facts else "?",
            "input": f"{facts.input_size}px" if facts else "?", "images/s here": choice.speed(), "weights": "cached" if choice.cached else "not cached",
        })
    print_table(pd.DataFrame(rows))
    print("Speeds are measured here once a model has embedded a data set; before that they are estimated from the default model's measured rate and FLOPs.")


def cmd_similar(args: argparse.Namespace) -> None:
    from labelloop.embed.similar import more_like_this

    table = open_table(args.workspace, args.name)
    version = args.version or table.head_version()
    key = args.embedding or default_embedding_key(args.workspace, args.name)
    found = more_like_this(args.workspace, args.name, key, args.sample_ids, k=args.k, version=version)
    paths = table.read(version).set_index("sample_id")["path"]
    found["similarity"] = found["similarity"].round(4)
    found["path"] = paths.reindex(found["sample_id"]).to_numpy()
    print_table(found)
    print(f"{len(found) - int(found['is_query'].sum())} samples nearest to {', '.join(f'#{i}' for i in args.sample_ids)} in '{key}' (cosine), version {version}")


def cmd_project(args: argparse.Namespace) -> None:
    from labelloop.maps.config import ProjectionConfig
    from labelloop.maps.project import project_dataset

    config = ProjectionConfig(**given_settings(args, ProjectionConfig.settings()))
    config.validate()
    open_table(args.workspace, args.name)
    key = args.embedding or default_embedding_key(args.workspace, args.name)
    with progress_bar("projecting", unit="step") as progress:
        projection = project_dataset(args.workspace, args.name, key, config, version=args.version, progress=progress, refit=args.refit)
    print(f"'{args.name}' {key}: {projection.describe()}")
    if projection.missing:
        print(f"warning: {projection.missing} samples have no embedding and are not on the map; run `embed {args.name}` to add them")


COMMANDS = ("embed", "embeddings", "models", "similar", "project")  # what register() adds, known without importing what the commands use


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add this group's commands to the parser."""
    from labelloop.embed import EmbedderConfig
    from labelloop.maps.config import ProjectionConfig

    p = sub.add_parser("embed", parents=[common], help="embed the images of a data set (cached: only new images are computed)")
    p.add_argument("name")
    p.add_argument("--model", help="a model by name: efficientnet-lite0 (default), torchvision:ARCH:WEIGHTS, open_clip:ARCH:TAG, "
                   "timm:NAME.TAG, or KIND:hf-hub:ORG/REPO; see `models` for recommended ones")
    add_setting_flags(p, EmbedderConfig, skip=("device",))  # the device is the compute setting's
    p.add_argument("--version", type=int, help="version whose images to embed (default: the latest)")
    add_compute_flags(p, ray="run the model on a Ray Data actor pool (the vectors land in the same cache)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("embeddings", parents=[common], help="list the embeddings cached for a data set")
    p.add_argument("name")
    p.set_defaults(func=cmd_embeddings)

    p = sub.add_parser("models", parents=[common], help="the recommended models (or the ones named): size, speed here, whether their weights are cached")
    p.add_argument("names", nargs="*", help="model names, e.g. torchvision:convnext_tiny:DEFAULT (default: the recommended list)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("similar", parents=[common], help="more like this: the samples nearest to one (or several) in an embedding")
    p.add_argument("name")
    p.add_argument("sample_ids", nargs="+", type=int, metavar="SAMPLE_ID", help="several: nearest to their mean")
    p.add_argument("--k", type=int, default=50, help="how many similar samples (default 50)")
    p.add_argument("--embedding", help="embedding key (see `embeddings NAME`; default: the default embedder's)")
    p.add_argument("--version", type=int, help="version whose samples to search (default: the latest)")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("project", parents=[common], help="project embeddings to a 2D/3D map (cached)")
    p.add_argument("name")
    p.add_argument("--embedding", help="embedding key (see `embeddings NAME`; default: the default embedder's)")
    add_setting_flags(p, ProjectionConfig)
    p.add_argument("--refit", action="store_true", help="fit the map again on this version (otherwise images added since the fit are placed on it)")
    p.add_argument("--version", type=int, help="version to map (default: the latest)")
    p.set_defaults(func=cmd_project)

