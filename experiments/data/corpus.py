"""Byte-level corpora built once from local files and memory-mapped by every later run.

Layout of a built corpus (one folder per source fingerprint)::

    <cache_dir>/<name>-<fingerprint[:12]>/
        meta.json            sources, fingerprint, split rule, documents and bytes per split
        train.bin  val.bin  test.bin            flat uint8 bytes of the split's documents
        train.idx.npy  val.idx.npy  test.idx.npy  int64 offsets, n_docs + 1 (doc i = bin[o[i]:o[i+1]])
        train.paths.json ...                      source path of each document, in order

By default each file is one document (``documents: file``); ``documents: directory`` joins the files
of each directory into one document, and ``documents: concat`` joins consecutive files (in path
order) until a document holds at least ``min_doc_bytes`` (long documents from a corpus of small
files, e.g. for long-context evaluation). The split of a document is a pure function of its id (the
relative path of the file, directory or first file: a SHA-1 hash), so adding files never moves
existing documents between splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.data import records, sources
from experiments.data.build import (
    SPLITS,
    file_digest,
    group_documents,
    intact,
    remove_abandoned_builds,
    summary,
    write_corpus,
)
from experiments.data.files import fingerprint, list_sources
from experiments.data.tokens import tokenize_corpus
from experiments.data.wheels import packages_source

CORPUS_KEYS = ("path", "pattern", "exclude", "cache_dir", "name", "val_fraction", "test_fraction", "max_doc_bytes",
               "documents", "min_doc_bytes", "source", "text_field", "doc_separator", "block_bytes", "split_bytes",
               "hf_name", "hf_config", "skip_unreadable", "tokenizer", "bpe_vocab_size", "distributions")


def corpus_options(data) -> dict:
    """The ``ByteCorpus.build_or_load`` arguments in a ``data`` config (missing keys: their defaults)."""
    out = {k: data[k] for k in CORPUS_KEYS if k in data}
    for k in ("exclude", "split_bytes", "distributions"):
        if out.get(k) is not None:
            out[k] = list(out[k])
    return out


def default_cache_dir() -> Path:
    env = os.environ.get("LONGLAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "longlab"


@dataclass
class Split:
    """One split of a built corpus: bytes and document offsets, memory-mapped."""

    data: np.ndarray  # uint8 [n_bytes] (a tokenized corpus: uint16 / uint32 token ids)
    offsets: np.ndarray  # int64 [n_docs + 1]
    paths: list[str]
    token_bytes: np.ndarray | None = None  # tokens: the UTF-8 bytes each id stands for (None: one byte each)
    tokenizer: str | None = None  # tokens: the tokenizer.json the ids come from

    def bytes_of(self, ids) -> np.ndarray:
        """The number of text bytes the token ids stand for (elementwise)."""
        ids = np.asarray(ids)
        return np.ones(ids.shape, dtype=np.int64) if self.token_bytes is None else self.token_bytes[ids]

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def document(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i] : self.offsets[i + 1]]


class ByteCorpus:
    """A built corpus folder; ``ByteCorpus.build_or_load(...)`` is the usual entry point."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.folder} is not a built corpus (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        self._splits: dict[str, Split] = {}
        self._content: str | None = None

    @property
    def content(self) -> str:
        """What the corpus holds, whatever machine built it: a hash of every split's bytes and document
        boundaries. The folder name hashes the sources' paths, sizes and dates, so the same text installed
        elsewhere gets another folder but the same ``content``, and other text (``data=packages`` reads whatever
        site-packages holds) gets another ``content``."""
        if self._content is None:
            h = hashlib.sha256(b"longlab-corpus-v1")
            for s in SPLITS:
                info = self.meta["splits"][s]
                h.update(json.dumps([s, info["docs"], info["bytes"], info.get("blake2b")]).encode())
                h.update(file_digest(self.folder / f"{s}.idx.npy").encode())
            self._content = h.hexdigest()[:16]
        return self._content

    def identity(self) -> dict:
        """``corpus.json`` of a run: the folder, the content hash and the documents per split."""
        return {"folder": self.folder.name, "content": self.content,
                "docs": {s: int(self.meta["splits"][s]["docs"]) for s in SPLITS}}

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {SPLITS}")
        if name not in self._splits:
            n = self.meta["splits"][name]["bytes"]
            if n == 0:
                raise ValueError(
                    f"the {name!r} split of corpus {self.folder} is empty "
                    f"({self.meta['splits'][name]['docs']} documents); add more files to data.path "
                    "or change data.val_fraction / data.test_fraction"
                )
            data = np.memmap(self.folder / f"{name}.bin", dtype=np.uint8, mode="r", shape=(n,))
            offsets = np.load(self.folder / f"{name}.idx.npy")
            paths = json.loads((self.folder / f"{name}.paths.json").read_text())
            self._splits[name] = Split(data, offsets, paths)
        return self._splits[name]

    @classmethod
    def build_or_load(
        cls,
        path: str | None = None,
        pattern: str | None = None,
        exclude: list[str] | None = None,
        cache_dir: str | Path | None = None,
        name: str = "corpus",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        max_doc_bytes: int | None = None,
        documents: str = "file",
        min_doc_bytes: int | None = None,
        source: str = "auto",
        text_field: str = "text",
        doc_separator: str | None = None,
        block_bytes: int | None = None,
        split_bytes: list[int] | None = None,
        hf_name: str | None = None,
        hf_config: str | None = None,
        skip_unreadable: bool = False,
        tokenizer: str = "bytes",
        bpe_vocab_size: int = 4096,
        distributions: list[str] | None = None,
    ) -> ByteCorpus:
        """The byte corpus of these sources (built once, then reused); with ``tokenizer`` other than bytes, its
        tokenized version (``experiments.data.tokens``). ``distributions``: ``data=packages`` from these pinned
        wheels instead of the installed site-packages (``experiments.data.wheels``)."""
        corpus = cls._build_or_load(path, pattern, exclude, cache_dir, name, val_fraction, test_fraction, max_doc_bytes,
                                    documents, min_doc_bytes, source, text_field, doc_separator, block_bytes,
                                    split_bytes, hf_name, hf_config, skip_unreadable, distributions)
        if str(tokenizer) == "bytes":
            return corpus
        return TokenCorpus(tokenize_corpus(corpus, str(tokenizer), int(bpe_vocab_size)))

    @classmethod
    def _build_or_load(cls, path, pattern, exclude, cache_dir, name, val_fraction, test_fraction, max_doc_bytes,
                       documents, min_doc_bytes, source, text_field, doc_separator, block_bytes, split_bytes,
                       hf_name, hf_config, skip_unreadable, distributions=None) -> ByteCorpus:
        for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"data.{key}={frac} must be in [0, 1)")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} leaves no "
                "training documents; keep their sum below 1"
            )
        kind = sources.detect(None if hf_name else path) if source == "auto" else source
        if kind not in sources.SOURCES:
            raise ValueError(f"data.source={source!r} is unknown; use one of {sources.SOURCES}")
        if hf_name:
            kind = "hf"
        if distributions is not None and kind != "packages":
            raise ValueError(f"data.distributions pins the wheels of data.source=packages; data.source={kind!r} "
                             "reads data.path: leave data.distributions null")
        report = sources.Report()
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        options = {"source": kind, "text_field": text_field, "doc_separator": doc_separator, "block_bytes": block_bytes,
                   "split_bytes": None if split_bytes is None else [int(b) for b in split_bytes],
                   "hf_name": hf_name, "hf_config": hf_config}
        if kind == "hf" and hf_name:
            root, files = Path("."), []
            docs = lambda: sources.hf_documents(None, hf_name, hf_config, text_field, report)  # noqa: E731
        elif kind == "packages":
            root, files, docs = packages_source(distributions, cache, report)
            if distributions is not None:  # only then: the folders of unpinned corpora keep their names
                options["distributions"] = sorted(str(d).strip() for d in distributions)
        else:
            root, files = list_sources(path, pattern, exclude, skip_unreadable, report.unreadable)
            if kind == "files":
                named = path is not None and sources.named_splits(root)
                options["named_splits"] = named
                docs = lambda: sources.file_documents(root, files, report, named, doc_separator)  # noqa: E731
            elif kind == "file":
                if len(files) != 1:
                    raise ValueError(f"data.source=file reads one file, but data.path={path!r} has {len(files)}; "
                                     "point data.path at the file")
                docs = lambda: sources.single_file_documents(files[0], doc_separator, block_bytes,  # noqa: E731
                                                             split_bytes, val_fraction, test_fraction)
            elif kind == "hf":
                docs = lambda: sources.hf_documents(path, None, None, text_field, report)  # noqa: E731
            else:
                docs = lambda: records.record_documents(Path(os.path.expanduser(str(path))), kind,  # noqa: E731
                                                        text_field, report)
        fp = fingerprint(root, files, val_fraction, test_fraction)
        if max_doc_bytes:
            fp = hashlib.sha256(f"{fp}|max{max_doc_bytes}".encode()).hexdigest()
        if documents != "file":
            fp = hashlib.sha256(f"{fp}|{documents}|{min_doc_bytes}".encode()).hexdigest()
        if kind != "files" or options.get("named_splits"):  # the source and its split rule
            fp = hashlib.sha256(f"{fp}|{json.dumps(options, sort_keys=True)}".encode()).hexdigest()
        folder = cache / f"{name}-{fp[:12]}"
        if (folder / "meta.json").exists():
            if intact(folder):
                return cls(folder)
            print(f"[longlab] the cached corpus {folder} is damaged (truncated or unreadable): rebuilding it")
            shutil.rmtree(folder, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        remove_abandoned_builds(cache)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{os.getpid()}-", dir=cache))
        try:
            all_docs = group_documents(list(docs()), documents, min_doc_bytes)
            write_corpus(tmp, root, all_docs, fp, val_fraction, test_fraction, max_doc_bytes, path, pattern,
                          options, report)
            try:
                os.rename(tmp, folder)  # atomic: a reader sees a whole corpus or none
            except OSError:
                if not (folder / "meta.json").exists():  # not a concurrent builder: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        corpus = cls(folder)
        print(summary(corpus.meta, name), flush=True)
        return corpus


class TokenCorpus(ByteCorpus):
    """A tokenized corpus folder (``experiments.data.tokens``): the same documents and splits as its byte
    corpus, as token ids, with the bytes each token stands for."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.token_bytes = np.load(self.folder / "token_bytes.npy")

    @property
    def bytes_per_token(self) -> float:
        """Text bytes per token over the training split (what sizes a token model's windows in bytes)."""
        train = self.meta["splits"]["train"]
        return train["bytes"] / max(1, train["tokens"])

    def byte_corpus(self) -> ByteCorpus:
        """The byte corpus these tokens were made from (it sits beside this folder)."""
        return ByteCorpus(self.folder.parent / self.meta["byte_corpus"])

    @property
    def content(self) -> str:
        """The byte corpus's content and the tokenizer that made these ids."""
        if self._content is None:
            h = hashlib.sha256(f"longlab-tokens-v1|{self.byte_corpus().content}".encode())
            h.update(file_digest(self.folder / "tokenizer.json").encode())
            self._content = h.hexdigest()[:16]
        return self._content

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {SPLITS}")
        if name not in self._splits:
            info = self.meta["splits"][name]
            if info["tokens"] == 0:
                raise ValueError(f"the {name!r} split of {self.folder} is empty; add more files to data.path")
            data = np.memmap(self.folder / f"{name}.bin", dtype=self.meta["dtype"], mode="r", shape=(info["tokens"],))
            self._splits[name] = Split(data, np.load(self.folder / f"{name}.idx.npy"),
                                       json.loads((self.folder / f"{name}.paths.json").read_text()),
                                       self.token_bytes, str(self.folder / "tokenizer.json"))
        return self._splits[name]
