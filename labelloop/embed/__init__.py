"""Embeddings: images -> float32 vectors, cached by image content.

One interface for every embedder: :func:`load_embedder` turns an
:class:`EmbedderConfig` into an :class:`Embedder` with a stable ``key`` (the
embedder and every setting that changes its output) and ``embed_batch``
(uint8 RGB images, N x S x S x 3 -> float32 N x D). :func:`embed_paths` runs
files through it with decoding in a separate process, so the model never
waits for the decoder; :func:`embed_dataset` does that for a data set and
keeps the vectors in a cache keyed by (embedder key, image content hash), so
relabelling never re-embeds and adding images embeds only the new ones.

Runtimes. ``torch`` runs the model as written (the reference).
``onnxruntime`` and ``openvino`` run an ONNX export of it, made once per
embedder and checked against torch outputs every time it is loaded (an
export that differs falls back to torch, with a note). ``auto`` picks the
fastest measured: OpenVINO in bf16 where the CPU has native bfloat16
(features at cosine >= 0.99 of fp32, the same linear-probe accuracy), else
ONNX Runtime in fp32. The precision is part of the key, so bf16 and fp32
vectors are never mixed. bench/bench_embed.py has the measurements.

The package: ``config`` (settings, keys, model names), ``kinds`` (one module
per kind of embedder, one registry), ``hub`` (where published weights are
cached, and what to say when they cannot be fetched), ``models`` (the
recommended list, sizes and speeds), ``runtimes`` (torch, ONNX Runtime,
OpenVINO), ``files`` (decoding beside the model), ``cache`` (the
per-data-set cache) and ``text`` (text search and zero-shot labels on a CLIP
model's embeddings).
Everything other modules use is imported here.
"""

from labelloop.embed.cache import (
    EmbeddingCache,
    Embeddings,
    EmbedReport,
    embed_dataset,
    embedding_cache,
    is_default_embedding,
    list_embeddings,
    load_embeddings,
    preferred_embedding,
)
from labelloop.embed.config import (
    PRECISIONS,
    RUNTIMES,
    Embedder,
    EmbedderConfig,
    input_resolution,
)
from labelloop.embed.files import EmbeddedBatch, embed_paths
from labelloop.embed.kinds import KINDS
from labelloop.embed.runtimes import embedder_key, load_embedder, torch_feature_model

EMBEDDER_KINDS = tuple(KINDS)

__all__ = [
    "EMBEDDER_KINDS", "PRECISIONS", "RUNTIMES", "EmbedReport", "EmbeddedBatch", "Embedder", "EmbedderConfig", "EmbeddingCache", "Embeddings",
    "embed_dataset", "embed_paths", "embedder_key", "embedding_cache", "input_resolution", "is_default_embedding", "list_embeddings",
    "load_embedder", "load_embeddings", "preferred_embedding", "torch_feature_model",
]
