"""The pretrained text encoder: offline, pinned by sha256, deterministic, and embedded once per text."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from models.text_encoder import MINILM, EncoderFileError, TextEncoder, packaged_model_file, sha256_of
from recsys.settings import Settings
from tasks import item_text
from tasks.item_text import cache_path, item_texts, text_vectors

TITLES = ["Star Wars (1977). Genres: Action, Adventure, Sci-Fi",
          "Return of the Jedi (1983). Genres: Action, Adventure, Sci-Fi",
          "Sense and Sensibility (1995). Genres: Drama, Romance",
          "Persuasion (1995). Genres: Romance"]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_the_installed_model_is_the_pinned_one():
    assert sha256_of(packaged_model_file(MINILM)) == MINILM.model_sha256


def test_vectors_are_unit_length_and_put_like_with_like(encoder):
    v = encoder.encode(TITLES)
    assert v.shape == (4, MINILM.dimension) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    similarity = v @ v.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1  # the two Star Wars films, not a Jane Austen one
    assert similarity[2, 3] > similarity[2, 0] + 0.1  # the two Austen adaptations


def test_a_text_gets_the_same_vector_on_any_number_of_threads(encoder):
    """The night embeds on every core (RECSYS_SCORING_THREADS): the vectors are the one thread's, bit for bit."""
    texts = TITLES + [f"Synthetic Item {i} ({1950 + i % 70}). Genres: Drama, Comedy" for i in range(150)]
    assert np.array_equal(TextEncoder(threads=2).encode(texts), encoder.encode(texts))


def test_a_text_gets_the_same_vector_whatever_else_is_encoded_with_it(encoder):
    together = encoder.encode(TITLES)
    alone = np.stack([encoder.encode([t])[0] for t in TITLES])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(encoder.encode(TITLES[::-1])[::-1], together)


def test_a_wrong_model_file_fails_with_one_clear_line(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not the model")
    with pytest.raises(EncoderFileError) as caught:
        TextEncoder(model_path=bad).encode(["anything"])
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message and "sha256" in message and "pinned" in message
    with pytest.raises(EncoderFileError, match="does not exist"):
        TextEncoder(model_path=tmp_path / "missing.onnx").encode(["anything"])


def test_item_text_reads_title_and_genres():
    items = pl.DataFrame({"item_id": [1, 2, 3], "title": ["Heat (1995)", None, "Up (2009)"],
                          "genres": [["Action", "Crime"], ["Drama"], []]})
    assert item_texts(items)["text"].to_list() == ["Heat (1995). Genres: Action, Crime", ". Genres: Drama",
                                                   "Up (2009)"]


def test_an_unchanged_catalogue_embeds_nothing_the_next_night(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path, text_vector_cache=tmp_path / "vectors")
    items = pl.DataFrame({"item_id": [1, 2, 3], "title": ["Heat (1995)", "Up (2009)", "Heat (1995)"],
                          "genres": [["Action"], ["Animation"], ["Action"]]})
    encoded: list[list[str]] = []
    real = TextEncoder.encode

    def counting(self, texts, batch=64):
        encoded.append(list(texts))
        return real(self, texts, batch)

    monkeypatch.setattr(item_text.TextEncoder, "encode", counting)
    first = text_vectors(items, settings, log=lambda _: None)
    assert encoded == [sorted({"Up (2009). Genres: Animation", "Heat (1995). Genres: Action"},
                              key=lambda t: item_text.text_key(MINILM.name, t))]  # a shared text once
    assert cache_path(settings).exists()
    again = text_vectors(items, settings, log=lambda _: None)
    assert len(encoded) == 1  # nothing embedded again
    assert again.equals(first)
    renamed = items.with_columns(title=pl.when(pl.col("item_id") == 2).then(pl.lit("Up (2010)")).otherwise("title"))
    changed = text_vectors(renamed, settings, log=lambda _: None)
    assert encoded[1] == ["Up (2010). Genres: Animation"]  # only the changed text
    assert changed.filter(pl.col("item_id") != 2).equals(first.filter(pl.col("item_id") != 2))


def test_the_encoder_can_be_turned_off(tmp_path):
    items = pl.DataFrame({"item_id": [1], "title": ["Heat (1995)"], "genres": [["Action"]]})
    assert text_vectors(items, Settings(home=tmp_path, text_encoder="none")) is None
