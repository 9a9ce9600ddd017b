"""Item text vectors: each item's text embedded once by the pretrained encoder, kept between nights.

An item's text is "<title>. Genres: <a, b>". Its vector is stored in a cache keyed by the sha256 of the
encoder's name and the text (``RECSYS_HOME/embeddings/<encoder>.parquet``), so a night embeds only the texts
it has never seen: an unchanged catalogue costs one hash per item, a changed title is embedded again, and
a text shared by two items is embedded once.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import polars as pl

from models.text_encoder import ENCODERS, TextEncoder
from models.tiled import thread_count, use_threads
from recsys import progress
from recsys.schema import ITEM_ID
from recsys.settings import Settings

VECTOR_COLUMN = "text_vector"


def item_texts(items: pl.DataFrame) -> pl.DataFrame:
    """(item_id, text): what the encoder reads of each item."""
    genres = (pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String))).list.join(", ")
              if "genres" in items.columns else pl.lit(""))
    title = pl.col("title").fill_null("").str.strip_chars() if "title" in items.columns else pl.lit("")
    text = (pl.when(genres.str.len_chars() > 0).then(pl.concat_str([title, pl.lit(". Genres: "), genres]))
            .otherwise(title))
    return items.select(ITEM_ID, text.alias("text"))


def text_key(encoder: str, text: str) -> str:
    return hashlib.sha256(f"{encoder}\x00{text}".encode()).hexdigest()


def cache_path(settings: Settings) -> Path:
    return settings.text_vector_dir / f"{ENCODERS[settings.text_encoder].name}.parquet"


def text_vectors(items: pl.DataFrame, settings: Settings, log=print) -> pl.DataFrame | None:
    """(item_id, text_vector) for every item with text, embedding only texts the cache does not hold; None
    when ``RECSYS_TEXT_ENCODER=none``."""
    if settings.text_encoder == "none":
        return None
    spec = ENCODERS[settings.text_encoder]
    texts = item_texts(items).filter(pl.col("text").str.len_chars() > 0)
    texts = texts.with_columns(key=pl.col("text").map_elements(lambda t: text_key(spec.name, t),
                                                               return_dtype=pl.String))
    path = cache_path(settings)
    cached = (pl.read_parquet(path) if path.exists()
              else pl.DataFrame(schema={"key": pl.String, VECTOR_COLUMN: pl.Array(pl.Float32, spec.dimension)}))
    missing = texts.filter(~pl.col("key").is_in(cached["key"].implode())).unique("key").sort("key")
    if missing.height:
        started = time.perf_counter()
        # The same vectors on any number of threads (tested).
        use_threads(settings.scoring_threads, settings.keep_freed_memory)
        with progress.activity(f"embedding {missing.height:,} item texts with {spec.name}"):
            vectors = TextEncoder(spec, settings.text_encoder_model_path, threads=thread_count()).encode(
                missing["text"].to_list())
        fresh = pl.DataFrame({"key": missing["key"],
                              VECTOR_COLUMN: pl.Series(VECTOR_COLUMN, vectors,
                                                       dtype=pl.Array(pl.Float32, spec.dimension))})
        cached = pl.concat([cached, fresh]).unique("key", keep="first").sort("key")
        _write_atomically(cached, path)
        log(f"  embedded {missing.height:,} item texts with {spec.name} in {time.perf_counter() - started:.1f} s "
            f"({texts.height - missing.height:,} from the cache)")
    return texts.join(cached, on="key", how="left").select(ITEM_ID, VECTOR_COLUMN).sort(ITEM_ID)


def _write_atomically(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        frame.write_parquet(staged)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
