"""Placing the images a fit left out: their nearest fitted images, searched beside the fit, or PaCMAP's transform, whichever places a trial set better."""

from __future__ import annotations

import threading

import numpy as np

from labelloop.compute.neighbours import NeighbourIndex
from labelloop.compute.reduction import PcaReduction
from labelloop.maps.fit import (
    PLACEMENT_NEIGHBOURS,
    FittedMap,
    place_by_transform,
    place_left_out,
    placement_accuracy,
)

PLACEMENT_TRIAL = 5_000  # images placed both ways when a fit leaves some out, to choose between the ways


PLACEMENT_BLOCK = 100_000  # images placed at a time: bounded memory for their neighbours' positions


SEARCH_BLOCK = 20_000  # images reduced and searched at a time: how soon the search takes the fit's core once it ends


class PlacementSearch:
    """The nearest fitted images of every image a map's fit leaves out, searched on a thread of its own.

    Started as soon as the fit's vectors are reduced, it runs beside PaCMAP's optimisation, which uses
    one core: on a 2-core machine the other core finds the neighbours of about half of the rest
    of a million images before the fit ends (with one core to spare while the fit runs, all of them after).
    """

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, k: int = PLACEMENT_NEIGHBOURS):
        self.vectors, self.rows, self.k = vectors, rows, k
        self.index: NeighbourIndex | None = None
        self._found = np.zeros((len(rows), 0), dtype=np.int64)
        self._fitting = threading.Event()  # set while the fit runs: leave it a core
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, reduction: PcaReduction | None, reduced: np.ndarray) -> None:
        self._fitting.set()
        self._thread = threading.Thread(target=self._run, args=(reduction, reduced), name="map placement search", daemon=True)
        self._thread.start()

    def _run(self, reduction: PcaReduction | None, reduced: np.ndarray) -> None:
        try:
            threads = search_threads()

            def leave_the_fit_a_core() -> None:
                if threads:  # OpenMP thread counts are per calling thread: this sets only this thread's
                    import faiss

                    faiss.omp_set_num_threads(max(1, threads - 1) if self._fitting.is_set() else threads)

            leave_the_fit_a_core()
            self.index = NeighbourIndex(reduced)
            if not len(self.rows):
                return
            k = max(1, min(self.k, len(self.index)))
            self._found = np.empty((len(self.rows), k), dtype=np.int64)
            for start in range(0, len(self.rows), SEARCH_BLOCK):
                if self._stopping.is_set():
                    return
                leave_the_fit_a_core()
                block = self.vectors[self.rows[start : start + SEARCH_BLOCK]]
                self._found[start : start + SEARCH_BLOCK] = self.index.search(reduction.transform(block) if reduction is not None else block, k)
        except BaseException as error:  # handed to whoever waits for the result
            self._error = error

    def result(self) -> np.ndarray:
        """Indices into the fitted points of each left-out image's ``k`` nearest, nearest first (waits for the search)."""
        self._fitting.clear()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._found

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()


def search_threads() -> int:
    """The FAISS threads this process may use (0 when FAISS is not installed: exact search only)."""
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.omp_get_max_threads()


def place_rest(fitted: FittedMap, search: PlacementSearch, labels: np.ndarray, in_sample: np.ndarray, coords: np.ndarray, seed: int) -> dict:
    """Place the points the fit left out (filling ``coords``); return how each way placed a trial set.

    Neighbour placement costs one search per image (``search`` has run them, mostly while the fit ran).
    PaCMAP's ``transform`` re-optimises every fitted point together with the new ones, so one call costs
    about as much as the fit's own optimisation: it is tried only when all the rest fit in one call no
    larger than the fit (at 1,000,000 images and a 100,000-image fit it would cost several fits).
    """
    rest = search.rows
    vectors = search.vectors
    fitted_labels = labels[in_sample]
    found = search.result()
    fitted.adopt_index(search.index)
    if len(rest) == 0 and len(fitted.coords) < 2:
        return {"used": "neighbours", "neighbours": None, "transform": None, "measured_on": "nothing: too few images"}
    if len(rest) == 0:
        # Nothing to place now; how images added later will be placed, measured on the fitted ones themselves.
        trial = np.random.default_rng(seed).choice(len(fitted.coords), size=min(PLACEMENT_TRIAL, len(fitted.coords)), replace=False)
        left_out = place_left_out(fitted, trial)
        return {"used": "neighbours", "neighbours": placement_accuracy(fitted, left_out, fitted_labels[trial], fitted_labels), "transform": None, "measured_on": "fitted images, each left out of its own placement"}
    by_neighbours = np.empty((len(rest), coords.shape[1]), dtype=np.float32)
    for start in range(0, len(rest), PLACEMENT_BLOCK):  # bounded memory: one block of (images x neighbours x dims)
        by_neighbours[start : start + PLACEMENT_BLOCK] = fitted.coords[found[start : start + PLACEMENT_BLOCK]].mean(axis=1)
    transform_tried = fitted.reducer is not None and len(rest) <= len(fitted.coords)
    by_transform = place_by_transform(fitted, vectors[rest]) if transform_tried else None
    trial = np.sort(np.random.default_rng(seed).choice(len(rest), size=min(PLACEMENT_TRIAL, len(rest)), replace=False))
    scores = {
        "neighbours": placement_accuracy(fitted, by_neighbours[trial], labels[rest[trial]], fitted_labels),
        "transform": None if by_transform is None else placement_accuracy(fitted, by_transform[trial], labels[rest[trial]], fitted_labels),
    }
    used = "transform" if scores["transform"] is not None and (scores["neighbours"] is None or scores["transform"] > scores["neighbours"]) else "neighbours"
    coords[rest] = by_transform if used == "transform" else by_neighbours
    placement = {"used": used, **scores, "measured_on": f"{len(trial):,} images the fit left out"}
    if fitted.reducer is not None and not transform_tried:
        placement["transform_skipped"] = f"{len(rest):,} images to place is more than the {len(fitted.coords):,} fitted: transform re-optimises every fitted point with them, several fits' time"
    return placement
