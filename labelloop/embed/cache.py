"""The embedding cache of a data set: vectors keyed by (embedder key, image content hash).

Relabelling never re-embeds, adding images embeds only the new ones, and an
interrupted run resumes: every chunk is written whole and renamed into place.
"""

from __future__ import annotations

import functools
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelloop.compute.measured import record as record_rate
from labelloop.data.workspace import (
    WorkspaceOrDataset,
    as_dataset,
    models_dir,
    open_table,
)
from labelloop.embed.config import (
    EmbedderConfig,
    Progress,
    ShouldStop,
    base_key,
    input_resolution,
    safe_key,
)
from labelloop.embed.files import EmbeddedBatch, embed_paths
from labelloop.embed.runtimes import embedder_key, load_embedder
from labelloop.errors import Cancelled, UserError

CHUNK_SIZE = 4096  # vectors per cache file: a kill loses at most this much work
MAX_CHUNKS = 16  # more files than this are merged into one (rare: merging rewrites the whole cache)


class EmbeddingCache:
    """Vectors of one embedder for one data set, keyed by image content hash.

    Stored as Parquet files (``content_hash``, ``vector``) under
    ``<data set>/embeddings/<embedder key>/``, each written whole and renamed
    into place, so a crash loses at most the chunk being written.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def meta(self) -> dict | None:
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_meta(self, meta: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_name(f".meta.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp, self.meta_path)

    def chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.parquet")) if self.folder.is_dir() else []

    def load(self) -> tuple[pd.Index, np.ndarray]:
        """(content hashes, vectors). Damaged chunk files are skipped: their images get embedded again.

        The vectors are read into one array sized from the chunks' footers, so a million
        1280-d vectors take their 5 GB once, not again for a concatenated copy; chunks are
        decoded on two threads (Parquet decoding releases the GIL: 26 s -> 14 s at a million).
        """
        from concurrent.futures import ThreadPoolExecutor

        chunks = []
        for chunk in self.chunks():
            try:
                chunks.append((chunk, pq.ParquetFile(chunk).metadata.num_rows))
            except (OSError, pa.ArrowException):
                continue
        if not chunks:
            return pd.Index([], dtype=object), np.zeros((0, 0), dtype=np.float32)
        starts = np.cumsum([0] + [rows for _, rows in chunks])
        matrix: np.ndarray | None = None

        def read(number: int) -> np.ndarray | None:
            """Chunk ``number``'s hashes, its vectors written into its rows of ``matrix``; None if damaged."""
            nonlocal matrix
            chunk, rows = chunks[number]
            try:
                table = pq.read_table(chunk)
                block = _vectors_of(table.column("vector"))
                if matrix is None:
                    matrix = np.empty((int(starts[-1]), block.shape[1]), dtype=np.float32)
                if block.shape[1] != matrix.shape[1] or len(block) != rows:
                    return None
                matrix[starts[number] : starts[number] + rows] = block
                return table.column("content_hash").to_numpy(zero_copy_only=False)
            except (OSError, pa.ArrowException, KeyError, AttributeError, ValueError):
                return None

        found = []
        while matrix is None and len(found) < len(chunks):  # the first readable chunk sizes the matrix the others fill
            found.append(read(len(found)))
        with ThreadPoolExecutor(max_workers=2) as pool:
            found += pool.map(read, range(len(found), len(chunks)))
        readable = [number for number, hashes in enumerate(found) if hashes is not None]
        if not readable:
            return pd.Index([], dtype=object), np.zeros((0, 0), dtype=np.float32)
        index = pd.Index(np.concatenate([found[number] for number in readable]))
        if len(readable) < len(chunks):  # a damaged chunk left a gap: keep the rows that were read
            matrix = matrix[np.concatenate([np.arange(starts[number], starts[number + 1]) for number in readable])]
        keep = ~index.duplicated()
        if keep.all():
            return index, matrix
        return index[keep], matrix[keep]

    def hashes(self) -> pd.Index:
        """The content hashes in the cache, without reading any vector (cheap at 100k images)."""
        found = []
        for chunk in self.chunks():
            try:
                found.append(pq.read_table(chunk, columns=["content_hash"]).column("content_hash").to_numpy(zero_copy_only=False))
            except (OSError, pa.ArrowException, KeyError, ValueError):
                continue
        index = pd.Index(np.concatenate(found)) if found else pd.Index([], dtype=object)
        return index[~index.duplicated()]

    def append(self, content_hashes: Sequence[str], vectors: np.ndarray) -> None:
        if not len(content_hashes):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        table = pa.table({"content_hash": pa.array(list(content_hashes), pa.string()), "vector": _vector_column(vectors)})
        name = f"chunk-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.folder / f".{name}.tmp"
        # Vectors are bytes that neither compress nor repeat: stored plain, they decode at memory speed.
        pq.write_table(table, tmp, compression={"content_hash": "snappy", "vector": "none"}, use_dictionary=["content_hash"])
        os.replace(tmp, self.folder / name)

    def compact(self, max_chunks: int = MAX_CHUNKS) -> None:
        """Merge the chunk files into one if there are more than ``max_chunks`` (the new file is written first)."""
        chunks = self.chunks()
        if len(chunks) <= max(1, max_chunks):
            return
        hashes, vectors = self.load()
        self.append(list(hashes), vectors)
        newest = self.chunks()[-1]
        for chunk in chunks:
            if chunk != newest:
                chunk.unlink(missing_ok=True)


def _vector_column(vectors: np.ndarray) -> pa.Array:
    """One fixed-width binary value per row: the row's float32 values, little-endian.

    Caches written before held a list of floats per row; reading that back decodes a
    repetition level per value, three times slower than these (0.8 s against 0.25 s
    for 50,000 1280-d vectors). Both read back the same (:func:`_vectors_of`).
    """
    matrix = np.ascontiguousarray(vectors, dtype="<f4")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * matrix.shape[1]), len(matrix), [None, pa.py_buffer(matrix)])


def _vectors_of(column: pa.ChunkedArray) -> np.ndarray:
    """The (rows x dims) float32 matrix a chunk's ``vector`` column holds, in either layout."""
    column = column.combine_chunks()
    if pa.types.is_fixed_size_binary(column.type):
        width = column.type.byte_width
        if width % 4 or column.null_count:
            raise ValueError("not a column of float32 vectors")
        values = np.frombuffer(column.buffers()[1], dtype="<f4", count=len(column) * width // 4, offset=column.offset * width)
        return values.reshape(len(column), width // 4)
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)  # a cache written before


def decode_workers(embedder) -> int:
    """Processes decoding images for ``embedder``: one beside a CPU model (more would fight it for the
    cores), as many as the loader gives a GPU (labelloop.compute.device.loader_options)."""
    if embedder.device == "cpu":
        return 1
    from labelloop.compute.device import loader_options, resolve_device

    return loader_options(resolve_device(embedder.device))["num_workers"]


def embedding_cache(workspace: WorkspaceOrDataset, name: str | None, key: str) -> EmbeddingCache:
    return EmbeddingCache(as_dataset(workspace, name).embedding(safe_key(key)))


@dataclass
class EmbedReport:
    key: str
    description: str
    n_images: int  # distinct images (content) in the version
    n_cached: int  # of those, already in the cache
    n_computed: int
    failures: pd.DataFrame  # sample_id, path, reason
    seconds: float
    warnings: list[str]

    def describe(self) -> str:
        text = f"{self.description}: {self.n_images} images, {self.n_cached} from the cache, {self.n_computed} embedded"
        if self.n_computed and self.seconds:
            text += f" in {self.seconds:.1f} s ({self.n_computed / self.seconds:.0f} images/s)"
        if len(self.failures):
            text += f"; {len(self.failures)} could not be embedded"
        return text


def embed_dataset(
    workspace: str | os.PathLike | None,
    name: str,
    config: EmbedderConfig = EmbedderConfig(),
    *,
    version: int | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    ray: str | None = None,
) -> EmbedReport:
    """Embed the images of ``version`` that the cache does not have yet.

    ``ray`` (an address, see ``labelloop.compute.ray_cluster``) runs the model on a Ray Data actor pool instead of in this
    process: the same embedder and decoding on every worker, the vectors written here into the same cache.
    """
    if ray is not None:
        from labelloop.compute.ray_cluster import ray_cluster

        with ray_cluster(ray) as info:
            return _embed(workspace, name, config, version, progress, should_stop, gpus_per_actor=1.0 if info.gpus else 0.0, on_ray=True, on_this_machine=ray == "local")
    return _embed(workspace, name, config, version, progress, should_stop)


class _ChunkWriter:
    """Batches of vectors in, whole cache chunks of about :data:`CHUNK_SIZE` out: a killed run keeps every chunk it wrote."""

    def __init__(self, cache: EmbeddingCache, hashes: list[str]):
        self.cache, self.hashes, self.buffer = cache, hashes, []

    def keep(self, batch: EmbeddedBatch) -> None:
        self.buffer.append(batch)
        if sum(len(b.indices) for b in self.buffer) >= CHUNK_SIZE:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            indices = np.concatenate([b.indices for b in self.buffer])
            self.cache.append([self.hashes[i] for i in indices], np.concatenate([b.vectors for b in self.buffer]))
            self.buffer.clear()


def _embed(
    workspace, name: str, config: EmbedderConfig, version: int | None, progress, should_stop, *, gpus_per_actor: float = 0.0, on_ray: bool = False, on_this_machine: bool = True,
) -> EmbedReport:
    started = time.perf_counter()
    rows = open_table(workspace, name).read(version)
    distinct = rows.drop_duplicates("content_hash")

    def still_to_do(key: str) -> tuple[EmbeddingCache, pd.DataFrame]:
        cache = embedding_cache(workspace, name, key)
        known, _ = cache.load()
        return cache, distinct[~distinct["content_hash"].isin(known)]

    if on_ray and not on_this_machine:
        from labelloop.embed.on_ray import remote_key

        expected = remote_key(config, gpus_per_actor)  # the workers' runtime decides the key, not this machine's
    else:
        expected = embedder_key(config)
    cache, todo = still_to_do(expected)
    if todo.empty:  # everything cached: no model is even loaded
        meta = cache.meta() or {}
        return EmbedReport(cache.folder.name, meta.get("description", cache.folder.name), len(distinct), len(distinct), 0, pd.DataFrame(columns=["sample_id", "path", "reason"]), round(time.perf_counter() - started, 3), meta.get("warnings", []))
    make_embedder = functools.partial(load_embedder, config, str(models_dir(workspace)))
    facts: dict = {}

    def describe(found: dict) -> None:
        facts.update(found)
        cache.write_meta({**found, "config": asdict(config)})

    if not on_ray:
        embedder = make_embedder()
        if embedder.key != cache.folder.name:  # the fast runtime fell back to another precision
            cache, todo = still_to_do(embedder.key)
        describe({"key": embedder.key, "description": embedder.description, "dim": embedder.dim, "warnings": embedder.warnings})
    hashes = todo["content_hash"].tolist()
    chunks = _ChunkWriter(cache, hashes)
    keep, flush = chunks.keep, chunks.flush

    try:
        if on_ray:
            from labelloop.embed.on_ray import map_on_ray

            # The workers' embedder says what it is with its first batch (the meta is written before that batch).
            _, failures = map_on_ray(
                make_embedder, todo["path"].tolist(), hashes, resolution=input_resolution(config), expected_key=expected, batch_size=config.batch_size,
                gpus_per_actor=gpus_per_actor, progress=progress, should_stop=should_stop, on_facts=describe, on_batch=keep,
            )
        else:
            _, failures = embed_paths(
                embedder, todo["path"].tolist(), hashes, batch_size=config.batch_size, progress=progress, should_stop=should_stop, on_batch=keep,
                decode_workers=decode_workers(embedder),
            )
    except Cancelled as stop:
        flush()  # what was done is kept: the next run resumes from here
        raise Cancelled(f"{stop} Everything embedded so far is kept in the cache; run again to resume.") from None
    except BaseException:
        flush()  # a failed job (a cluster lost mid-way) keeps what it finished too
        raise
    flush()
    if not facts:  # every image failed on the cluster: nothing was embedded, nothing described
        facts = {"key": expected, "description": expected, "dim": 0, "warnings": []}
    cache.compact()
    record_rate(workspace, f"embed {config.model_name}" + (" on ray" if on_ray else ""), len(todo), time.perf_counter() - started)
    failed = todo.iloc[[i for i, _ in failures]]
    failure_frame = pd.DataFrame({"sample_id": failed["sample_id"].to_numpy(), "path": failed["path"].to_numpy(), "reason": [r for _, r in failures]})
    return EmbedReport(
        key=facts["key"],
        description=facts["description"],
        n_images=len(distinct),
        n_cached=len(distinct) - len(todo),
        n_computed=len(todo) - len(failures),
        failures=failure_frame,
        seconds=round(time.perf_counter() - started, 3),
        warnings=facts["warnings"],
    )


@dataclass
class Embeddings:
    key: str
    sample_ids: np.ndarray  # int64, the rows of the version that have a vector
    labels: np.ndarray  # their labels in that version
    content_hashes: np.ndarray
    vectors: np.ndarray  # float32
    missing: int  # rows of the version without a vector (not embedded yet, or failed)


def load_embeddings(
    workspace: WorkspaceOrDataset, name: str | None, key: str, version: int | None = None, *, with_vectors: bool = True, rows: pd.DataFrame | None = None
) -> Embeddings:
    """The cached vectors of the rows of ``version``; never computes anything.

    ``with_vectors=False`` reads only which rows have a vector (``vectors`` is then N x 0);
    ``rows`` are the version's rows when the caller has them already (saves reading the table).
    """
    dataset = as_dataset(workspace, name)
    name = dataset.name
    rows = open_table(dataset).read(version) if rows is None else rows
    cache = embedding_cache(dataset, None, key)
    if cache.meta() is None:
        raise UserError(f"'{name}' has no embeddings '{key}' yet. Run `labelloop embed {name}` first.")
    if with_vectors:
        index, matrix = cache.load()
    else:
        index = cache.hashes()
        matrix = np.zeros((len(index), 0), dtype=np.float32)
    positions = index.get_indexer(rows["content_hash"])
    have = positions >= 0
    return Embeddings(
        key=key,
        sample_ids=rows["sample_id"].to_numpy()[have],
        labels=rows["label"].to_numpy(dtype=object)[have],
        content_hashes=rows["content_hash"].to_numpy(dtype=object)[have],
        vectors=_rows_of(matrix, positions[have]),
        missing=int((~have).sum()),
    )


def _rows_of(matrix: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``matrix[positions]``, without a copy when that is the whole matrix in order (the usual case: a
    million 1280-d vectors are 5 GB)."""
    if len(positions) == 0:
        return np.zeros((0, matrix.shape[1] if matrix.size else 0), np.float32)
    if len(positions) == len(matrix) and positions[0] == 0 and (np.diff(positions) == 1).all():
        return matrix
    return matrix[positions]


def list_embeddings(workspace: WorkspaceOrDataset, name: str | None = None) -> list[dict]:
    """Meta data of every embedding cached for a data set."""
    root = as_dataset(workspace, name).embeddings
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        meta = EmbeddingCache(folder).meta()
        if meta:
            found.append(meta)
    return found


def preferred_embedding(workspace: WorkspaceOrDataset, name: str | None = None) -> str | None:
    """The cached embedding pages should start from: the default embedder's (in whatever precision
    it was made), else the first cached one, else None. Loads no model and no runtime."""
    keys = [meta["key"] for meta in list_embeddings(workspace, name)]
    return next((k for k in keys if is_default_embedding(k)), keys[0] if keys else None)


def is_default_embedding(key: str) -> bool:
    """Whether ``key`` was made by the default embedder (any runtime precision)."""
    return key.startswith(base_key(EmbedderConfig(), input_resolution(EmbedderConfig())) + "-")
