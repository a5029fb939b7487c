"""More like this: a sample's nearest neighbours in an embedding, from the core, the CLI and the Map page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelloop.data.ingest import import_dataset
from labelloop.data.workspace import open_table
from labelloop.embed import EmbedderConfig, embed_dataset, load_embeddings
from labelloop.embed.similar import more_like_this, parse_sample_ids
from labelloop.errors import UserError
from labelloop.maps.config import ProjectionConfig
from labelloop.maps.project import project_dataset
from tests.conftest import write_fashion_folders
from tests.test_cli import cli

PIXELS = EmbedderConfig(kind="pixels", resolution=16)


@pytest.fixture
def fashion(tmp_path: Path, workspace: Path) -> Path:
    """100 real Fashion-MNIST images, embedded as pixels."""
    import_dataset(write_fashion_folders(tmp_path / "fashion", 10), "fashion", workspace)
    embed_dataset(workspace, "fashion", PIXELS)
    return workspace


def test_more_like_this_is_the_exact_cosine_neighbours_with_the_query_first(fashion: Path):
    embeddings = load_embeddings(fashion, "fashion", "pixels-16px")
    unit = embeddings.vectors / np.linalg.norm(embeddings.vectors, axis=1, keepdims=True)
    query = int(embeddings.sample_ids[7])
    found = more_like_this(fashion, "fashion", "pixels-16px", [query], k=9)
    assert found["sample_id"].iloc[0] == query and found["is_query"].tolist() == [True] + [False] * 9
    similarity = unit @ unit[7]
    similarity[7] = -np.inf
    expected = embeddings.sample_ids[np.argsort(-similarity, kind="stable")[:9]]
    assert found["sample_id"].iloc[1:].tolist() == expected.tolist()
    assert found["similarity"].iloc[1:].is_monotonic_decreasing and np.isclose(found["similarity"].iloc[0], 1)
    # Several samples: nearest to the mean of their unit vectors, none of them listed twice.
    several = more_like_this(fashion, "fashion", "pixels-16px", [query, int(embeddings.sample_ids[3])], k=5)
    assert several["is_query"].sum() == 2 and several["sample_id"].is_unique and len(several) == 7
    # k beyond the data set: everything else, once.
    assert len(more_like_this(fashion, "fashion", "pixels-16px", [query], k=1000)) == 100


def test_more_like_this_refuses_what_it_cannot_answer(fashion: Path):
    first = int(open_table(fashion, "fashion").read()["sample_id"].iloc[0])
    with pytest.raises(UserError, match="#99999 is not among the embedded samples"):
        more_like_this(fashion, "fashion", "pixels-16px", [99999], k=5)
    with pytest.raises(UserError, match="at least 1"):
        more_like_this(fashion, "fashion", "pixels-16px", [first], k=0)
    with pytest.raises(UserError, match="no embeddings 'nope'"):
        more_like_this(fashion, "fashion", "nope", [first], k=5)
    assert parse_sample_ids("#12, 40 #7") == [12, 40, 7]
    with pytest.raises(UserError, match="'cat' is not a sample id"):
        parse_sample_ids("12, cat")


@pytest.mark.slow
def test_the_cli_lists_similar_samples_with_their_paths(fashion: Path):
    first = int(open_table(fashion, "fashion").read()["sample_id"].iloc[0])
    done = cli(fashion, "similar", "fashion", str(first), "--k", "5")
    assert done.returncode == 0, done.stderr
    assert "5 samples nearest to #" in done.stdout and ".png" in done.stdout
    refused = cli(fashion, "similar", "fashion", "99999")
    assert refused.returncode == 2 and "not among the embedded samples" in refused.stderr


@pytest.mark.slow
def test_the_map_page_selects_a_sample_and_its_neighbours(fashion: Path):
    from tests.test_app_pages import page

    project_dataset(fashion, "fashion", "pixels-16px", ProjectionConfig(dims=3))
    first = int(open_table(fashion, "fashion").read()["sample_id"].iloc[4])
    app = page("map")
    next(t for t in app.text_input if t.label == "More like sample").input(f"#{first}")
    next(n for n in app.number_input if n.label == "How many more").set_value(11)
    next(b for b in app.button if b.label == "Select").click().run()
    assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
    assert "**12 selected**" in [m.value for m in app.markdown]
    assert any(f"Selected #{first} and the 11 samples nearest to it" in c.value for c in app.caption)
    # Empty: more like the current selection (12 samples) grows it by 5.
    next(t for t in app.text_input if t.label == "More like sample").input("")
    next(n for n in app.number_input if n.label == "How many more").set_value(5)
    next(b for b in app.button if b.label == "Select").click().run()
    assert "**17 selected**" in [m.value for m in app.markdown]
