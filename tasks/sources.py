"""Where landing files come from, and how each is read: one landing contract for every source.

Every source (synthetic, MovieLens-100k, any CSV/Parquet with a column mapping) resolves to a list of
:class:`FileSpec`, ordered users -> items -> interactions. Ingest only ever sees ``FileSpec``s.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import tomllib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from recsys import schema
from recsys.errors import ConfigError, SourceUnavailableError
from recsys.schema import ITEM_ID, RATING, TIMESTAMP, USER_ID
from recsys.settings import Settings
from tasks.generate import SYNTHETIC_FILES, GeneratorConfig, generate

SOURCES = ("synthetic", "movielens-100k", "csv", "parquet")
# Canonical column -> its key in mapping.toml and its command-line flag (see cli/main.py).
MAPPING_KEY = {TIMESTAMP: "timestamp"}
COLUMN_FLAG = {USER_ID: "--user-col", ITEM_ID: "--item-col", RATING: "--rating-col", TIMESTAMP: "--timestamp-col"}


@dataclass(frozen=True)
class FileSpec:
    """How to read one landing file into the canonical columns of its kind."""

    path: Path
    kind: str  # users | items | interactions
    format: str = "csv"  # csv | parquet
    delimiter: str = ","
    header: bool = True
    quote: str = '"'
    encoding: str = "utf-8"
    names: tuple[str, ...] | None = None  # column names of a headerless file
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> source column
    timestamp_format: str = "auto"  # auto (epoch seconds or ISO) | epoch | iso | a strptime format
    date_format: str | None = None  # strptime format of release_date; None: ISO
    genres_separator: str = "|"
    genre_flags: tuple[tuple[str, str], ...] = ()  # (source column, genre) for 0/1 flag columns

    def __post_init__(self) -> None:
        if self.kind not in schema.CANONICAL_COLUMNS:
            raise ConfigError(f"{self.path}: unknown file kind {self.kind!r}; use one of {schema.FILE_KINDS}")
        missing = [
            name
            for name, required in schema.CANONICAL_COLUMNS[self.kind].items()
            if required and name not in self.columns
        ]
        if missing:
            raise ConfigError(
                f"{self.path}: the column mapping for {self.kind} does not name {', '.join(missing)}; "
                f"add e.g. `{MAPPING_KEY.get(missing[0], missing[0])} = \"<column in the file>\"` under "
                f"[{self.kind}] in mapping.toml or pass {COLUMN_FLAG.get(missing[0], '--' + missing[0] + '-col')}"
            )


# ---------------------------------------------------------------------------------------------------------
# Synthetic: the generator's own CSV layout (see tasks/generate.py).



def synthetic_specs(folder: Path) -> list[FileSpec]:
    folder = Path(folder)
    if not (folder / SYNTHETIC_FILES["interactions"]).exists():
        raise SourceUnavailableError(
            f"{folder}: no {SYNTHETIC_FILES['interactions']} here; create one with "
            f"`recsys generate --out {folder}` or omit --path to generate the default data set"
        )
    return [
        FileSpec(folder / SYNTHETIC_FILES["users"], "users",
                 columns={c: c for c in ("user_id", "age", "gender", "occupation", "zip")}),
        FileSpec(folder / SYNTHETIC_FILES["items"], "items",
                 columns={c: c for c in ("item_id", "title", "release_date", "genres")}),
        FileSpec(folder / SYNTHETIC_FILES["interactions"], "interactions", timestamp_format="epoch",
                 columns={USER_ID: "user_id", ITEM_ID: "item_id", RATING: "rating", TIMESTAMP: "timestamp"}),
    ]


# ---------------------------------------------------------------------------------------------------------
# MovieLens-100k: u.user, u.item (Latin-1, 19 genre flags), u.data (tab-separated, epoch seconds).

ML100K_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
}
_ML_GENRE_COLUMNS = tuple(f"g{i:02d}" for i in range(len(schema.GENRES)))


def movielens_specs(folder: Path) -> list[FileSpec]:
    folder = Path(folder)
    missing = [name for name in ML100K_SHA256 if not (folder / name).exists()]
    if missing:
        raise SourceUnavailableError(
            f"{folder}: not a MovieLens-100k folder (missing {', '.join(missing)}); pass the folder that "
            f"holds u.data, u.user and u.item, e.g. --path ../shared/datasets/ml-100k"
        )
    return [
        FileSpec(folder / "u.user", "users", delimiter="|", header=False, quote="",
                 names=("user_id", "age", "gender", "occupation", "zip"),
                 columns={c: c for c in ("user_id", "age", "gender", "occupation", "zip")}),
        FileSpec(folder / "u.item", "items", delimiter="|", header=False, quote="", encoding="latin-1",
                 names=("item_id", "title", "release_date", "video_release_date", "imdb_url", *_ML_GENRE_COLUMNS),
                 columns={ITEM_ID: "item_id", "title": "title", "release_date": "release_date"},
                 date_format="%d-%b-%Y", genre_flags=tuple(zip(_ML_GENRE_COLUMNS, schema.GENRES, strict=True))),
        FileSpec(folder / "u.data", "interactions", delimiter="\t", header=False, quote="",
                 names=("user_id", "item_id", "rating", "timestamp"), timestamp_format="epoch",
                 columns={USER_ID: "user_id", ITEM_ID: "item_id", RATING: "rating", TIMESTAMP: "timestamp"}),
    ]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_movielens_100k(dest: Path, url: str, timeout: float = 30.0) -> Path:
    """Download and unpack the official zip into ``dest``; checksums of the three files are checked."""
    target = Path(dest) / "ml-100k"
    if all((target / name).exists() for name in ML100K_SHA256):
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed public URL
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise SourceUnavailableError(
            f"could not download MovieLens-100k from {url} ({exc}). If this machine is offline, pass a local "
            f"copy: `recsys ingest --source movielens-100k --path /path/to/ml-100k` (the folder with u.data, "
            f"u.user, u.item)"
        ) from exc
    staging = Path(dest) / "ml-100k.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        for name in ML100K_SHA256:
            (staging / name).write_bytes(archive.read(f"ml-100k/{name}"))
    for name, expected in ML100K_SHA256.items():
        actual = sha256_file(staging / name)
        if actual != expected:
            shutil.rmtree(staging, ignore_errors=True)
            raise SourceUnavailableError(
                f"{url}: {name} has sha256 {actual}, expected {expected}; the download is corrupt or not the "
                f"official MovieLens-100k. Retry, or pass a verified local copy with --path"
            )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


# ---------------------------------------------------------------------------------------------------------
# CSV / Parquet with a column mapping.

# Without a mapping, files are expected to use the canonical column names (optional ones are found by name).
_DEFAULT_TABLES = {
    "users": {"user_id": "user_id"},
    "items": {"item_id": "item_id"},
    "interactions": {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"},
}
_SPEC_OPTIONS = {"delimiter", "header", "quote", "encoding", "timestamp_format", "date_format", "genres_separator"}


def _spec_from_table(kind: str, table: dict, path: Path, fmt: str) -> FileSpec:
    columns: dict[str, str] = {}
    options: dict = {}
    for key, value in table.items():
        if key == "path":
            continue
        canonical = TIMESTAMP if key == "timestamp" else key
        if key in _SPEC_OPTIONS:
            options[key] = value
        elif canonical in schema.CANONICAL_COLUMNS[kind]:
            columns[canonical] = str(value)
        else:
            known = sorted(set(schema.CANONICAL_COLUMNS[kind]) | _SPEC_OPTIONS | {"path"})
            raise ConfigError(f"mapping [{kind}]: unknown key {key!r}; known keys are {', '.join(known)}")
    return FileSpec(path, kind, format=fmt, columns=columns, **options)


def load_mapping(path: Path) -> dict[str, dict]:
    try:
        with open(path, "rb") as fh:
            mapping = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"mapping file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"mapping file {path} is not valid TOML: {exc}") from exc
    unknown = set(mapping) - set(schema.FILE_KINDS)
    if unknown:
        raise ConfigError(f"mapping file {path}: unknown sections {sorted(unknown)}; use {list(schema.FILE_KINDS)}")
    return mapping


def not_loadable(path: Path, base: Path | None = None) -> str | None:
    """Why a file found in a folder is not read (None: it is): anything but a regular file (a directory, a
    FIFO that would block the read forever, a device), or a link whose real path leaves ``base``."""
    if base is not None and not path.resolve().is_relative_to(base.resolve()):
        return (f"it is a link to {str(path.resolve())[:200]}, outside {base}; put the file itself there, or allow "
                "it with --allow-paths-outside-mapping")
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        return f"it is {kind}, not a file; remove or rename it"
    return None


def _expand(path: Path, fmt: str, base: Path | None = None) -> list[Path]:
    """The files a source path stands for: the file, or a folder's files of the format (others named and
    skipped). ``base``: where a folder's entries must really be (links leaving it are skipped)."""
    path = Path(path)
    if path.is_dir():
        suffixes = {".parquet", ".pq"} if fmt == "parquet" else {".csv", ".tsv", ".txt"}
        files = []
        for candidate in sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes):
            why = not_loadable(candidate, base)
            if why:
                print(f"skipping {candidate}: {why}")
            else:
                files.append(candidate)
        if not files:
            raise SourceUnavailableError(f"{path}: no {fmt} files in this folder")
        return files
    if not path.exists():
        raise SourceUnavailableError(f"{path}: no such file or folder")
    return [path]


def tabular_specs(
    fmt: str,
    path: Path | None,
    mapping: dict[str, dict] | None = None,
    users: Path | None = None,
    items: Path | None = None,
    base_dir: Path | None = None,
    allow_outside: bool = False,
    confine_to: Path | None = None,
) -> list[FileSpec]:
    """Specs for ``csv``/``parquet`` sources: interactions at ``path`` (file or folder), optional users/items.

    A ``path`` in the mapping is relative to the mapping's folder and must stay inside it (``../..`` or an
    absolute path elsewhere is refused unless ``allow_outside``): a mapping file cannot make the pipeline
    read what its author could not put next to it; a folder's entries (a link among them) must really be
    inside the mapping's folder, or inside ``confine_to`` (the drop folder). Paths given on the command line
    are taken as given.
    """
    mapping = {kind: dict(table) for kind, table in (mapping or {}).items()}
    base = (Path(base_dir) if base_dir else Path.cwd()).resolve()

    contained = None if allow_outside else base  # where a mapping's folder's entries must really be
    confined = None if allow_outside or confine_to is None else Path(confine_to).resolve()

    def where(kind: str, given: Path | None) -> Path | None:
        if given is not None:
            return Path(given)
        rel = mapping.get(kind, {}).get("path")
        if rel is None:
            return None
        target = (base / str(rel)).resolve()
        if not allow_outside and not target.is_relative_to(base):
            raise ConfigError(
                f"mapping [{kind}] path {str(rel)[:200]!r} leaves the mapping's folder {base}; put the file next "
                f"to the mapping, pass it with --path/--users/--items, or allow it with --allow-paths-outside-mapping")
        return target

    specs: list[FileSpec] = []
    for kind, given in (("users", users), ("items", items)):
        location = where(kind, given)
        if location is not None:
            for file in _expand(location, fmt, contained if given is None else confined):
                specs.append(_spec_from_table(kind, mapping.get(kind, _DEFAULT_TABLES[kind]), file, fmt))
    location = where("interactions", path)
    if location is None:
        raise ConfigError(f"--source {fmt} needs --path (the interactions file or folder) or [interactions].path")
    for file in _expand(location, fmt, contained if path is None else confined):
        specs.append(_spec_from_table("interactions", mapping.get("interactions", _DEFAULT_TABLES["interactions"]),
                                      file, fmt))
    return specs


def with_overrides(table: dict, **flags: str | None) -> dict:
    """Merge command-line column flags (``--user-col`` ...) over a mapping table."""
    merged = dict(table)
    merged.update({key: value for key, value in flags.items() if value is not None})
    return merged


def resolve_source(
    settings: Settings,
    source: str,
    path: Path | None = None,
    mapping: dict[str, dict] | None = None,
    users: Path | None = None,
    items: Path | None = None,
    mapping_dir: Path | None = None,
    allow_outside: bool = False,
) -> list[FileSpec]:
    """Turn a ``--source``/``--path`` pair into file specs, landing data first where needed."""
    if source == "synthetic":
        if path is None:
            config = GeneratorConfig.sized(settings.synthetic_size, settings.seed)
            path = settings.landing_dir / "synthetic" / config.slug()
            if not (path / SYNTHETIC_FILES["interactions"]).exists():
                generate(path, config)
        return synthetic_specs(Path(path))
    if source == "movielens-100k":
        if path is None:
            path = download_movielens_100k(settings.landing_dir / "movielens-100k", settings.ml100k_url)
        return movielens_specs(Path(path))
    if source in ("csv", "parquet"):
        if path is None and not (mapping or {}).get("interactions", {}).get("path"):
            # The drop folder: files placed in RECSYS_HOME/landing/<csv|parquet>/ are read each night (the
            # ledger skips what was loaded already), with the folder's mapping.toml if there is one.
            drop = drop_folder(settings, source)
            drop.mkdir(parents=True, exist_ok=True)
            if mapping is None and (drop / "mapping.toml").exists():
                mapping = load_mapping(drop / "mapping.toml")
            try:
                return tabular_specs(source, drop, mapping, base_dir=drop, allow_outside=allow_outside,
                                     confine_to=drop)
            except SourceUnavailableError as exc:
                raise SourceUnavailableError(
                    f"--source {source} without --path reads the drop folder {drop}, which has no {source} files "
                    f"yet: put the files there (with a mapping.toml naming your columns), or pass --path") from exc
        return tabular_specs(source, path, mapping, users=users, items=items, base_dir=mapping_dir,
                             allow_outside=allow_outside)
    raise ConfigError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")



def drop_folder(settings: Settings, source: str) -> Path:
    """Where new files of a source are dropped to be picked up by the next night."""
    return settings.landing_dir / source


# What the generated and downloaded parts of the landing area hold; anything else there is read by no source.
_LANDING_READS = {
    "synthetic": {*SYNTHETIC_FILES.values(), "generator.json"},
    "movielens-100k": {"u.data", "u.user", "u.item"},
}


def unread_landing_files(settings: Settings) -> list[Path]:
    """Files under RECSYS_HOME/landing that no source reads: dropped in the wrong place, most likely."""
    root = settings.landing_dir
    if not root.exists():
        return []
    unread = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = path.relative_to(root).parts
        area = parts[0] if len(parts) > 1 else None
        if area in ("csv", "parquet"):  # the drop folders read their top level (not subfolders)
            suffixes = {".parquet", ".pq"} if area == "parquet" else {".csv", ".tsv", ".txt"}
            if len(parts) == 2 and (path.suffix.lower() in suffixes or path.name == "mapping.toml"):
                continue
        elif path.name in _LANDING_READS.get(area or "", set()):
            continue
        unread.append(path)
    return unread
