"""Which of a few names each of a million strings is, by Arrow's hash lookup.

Labels on the map page are matched to the class list on every rerun: one
``index_in`` over Arrow strings takes 0.03 s at a million, a pandas
``get_indexer`` 0.24 s (it turns every string into a Python object first)
and a dict lookup per value 0.3 s. For a million keys (content hashes)
Arrow's hash table is no faster than pandas' (0.6 s), so those joins stay
pandas ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def as_strings(values: Sequence[str] | pd.Series | pd.Index | np.ndarray | pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as one Arrow large_string array (without a copy when they are Arrow strings already)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        array = values
    elif isinstance(values, (pd.Series, pd.Index)):
        array = pa.array(values)
    else:
        array = pa.array(np.asarray(values, dtype=object), type=pa.large_string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array if pa.types.is_large_string(array.type) else array.cast(pa.large_string())


def positions_in(values, keys) -> np.ndarray:
    """For each of ``values``, the position of its first occurrence in ``keys``, or -1 where it is not there (int64)."""
    values, keys = as_strings(values), as_strings(keys)
    return pc.index_in(values, value_set=keys).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
