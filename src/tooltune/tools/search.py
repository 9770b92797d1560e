"""Full-text search over the world's corpus: a small BM25 index written from scratch.

The index is plain JSON on disk so that building a world once and running many rollouts against
it does not re-tokenise the corpus every time; a fingerprint of the corpus (relative paths, sizes
and content hashes) decides whether the persisted index is still valid.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tooltune.registry import ToolDefinition, ToolError, tool

INDEX_VERSION = 1
INDEX_FILE = "bm25_index.json"
TEXT_SUFFIXES = (".md", ".txt")
OPEN_DOCUMENT_MAX_CHARS = 4000
_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def tokenize(text: str) -> list[str]:
    """Lower-case `text` and split it into runs of letters and digits."""
    return _WORD_RE.findall(text.lower())


@dataclass
class Document:
    id: str
    title: str
    text: str


def _title_of(text: str, stem: str) -> str:
    match = _HEADING_RE.search(text)
    return match.group(1).strip() if match else stem


def load_corpus(corpus_dir: str | Path) -> list[Document]:
    """Read every .md/.txt file (one document each) and .jsonl file (one document per line)."""
    corpus_dir = Path(corpus_dir)
    docs: list[Document] = []
    seen: dict[str, str] = {}
    for path in _corpus_files(corpus_dir):
        rel = path.relative_to(corpus_dir)
        if path.suffix == ".jsonl":
            new = _load_jsonl(path)
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
            new = [Document(rel.with_suffix("").as_posix(), _title_of(text, path.stem), text)]
        for doc in new:
            if doc.id in seen:
                raise ValueError(f"duplicate document id {doc.id!r} in {rel} and {seen[doc.id]}")
            seen[doc.id] = str(rel)
            docs.append(doc)
    return docs


def _load_jsonl(path: Path) -> list[Document]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                docs.append(
                    Document(str(row["id"]), str(row.get("title") or row["id"]), str(row["text"]))
                )
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}:{lineno}: expected an object with id, title, text ({e})"
                ) from e
    return docs


def _corpus_files(corpus_dir: Path) -> list[Path]:
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus directory {corpus_dir} does not exist")
    suffixes = (*TEXT_SUFFIXES, ".jsonl")
    files = [p for p in corpus_dir.rglob("*") if p.is_file() and p.suffix in suffixes]
    return sorted(files, key=lambda p: p.relative_to(corpus_dir).as_posix())


def corpus_fingerprint(corpus_dir: str | Path) -> str:
    """Hash of every corpus file's relative path, size and content (mtimes alone miss fast rewrites)."""
    corpus_dir = Path(corpus_dir)
    h = hashlib.sha256()
    for path in _corpus_files(corpus_dir):
        data = path.read_bytes()
        rel = path.relative_to(corpus_dir).as_posix()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


@dataclass
class SearchHit:
    id: str
    title: str
    snippet: str
    score: float


@dataclass
class SearchIndex:
    """Okapi BM25 over a list of documents.

    `postings[term]` lists `[doc_index, term_frequency]` pairs; titles are indexed together with
    the body so that a query naming a document's title finds it.
    """

    docs: list[Document]
    postings: dict[str, list[list[int]]]
    doc_lengths: list[int]
    k1: float = 1.5
    b: float = 0.75
    fingerprint: str = ""
    _idf: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n = len(self.docs)
        self._idf = {
            term: math.log(1.0 + (n - len(p) + 0.5) / (len(p) + 0.5))
            for term, p in self.postings.items()
        }
        self._by_id = {doc.id: doc for doc in self.docs}
        self._avgdl = sum(self.doc_lengths) / n if n else 0.0

    @classmethod
    def from_documents(
        cls, docs: list[Document], k1: float = 1.5, b: float = 0.75, fingerprint: str = ""
    ) -> SearchIndex:
        postings: dict[str, list[list[int]]] = {}
        lengths = []
        for i, doc in enumerate(docs):
            counts = Counter(tokenize(doc.title + "\n" + doc.text))
            lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                postings.setdefault(term, []).append([i, tf])
        return cls(docs, postings, lengths, k1=k1, b=b, fingerprint=fingerprint)

    @classmethod
    def build(
        cls, corpus_dir: str | Path, index_dir: str | Path, k1: float = 1.5, b: float = 0.75
    ) -> SearchIndex:
        """Load the index persisted in `index_dir`, rebuilding it when the corpus has changed."""
        index_path = Path(index_dir) / INDEX_FILE
        fingerprint = corpus_fingerprint(corpus_dir)
        cached = cls.load(index_path)
        if cached and cached.fingerprint == fingerprint and (cached.k1, cached.b) == (k1, b):
            return cached
        index = cls.from_documents(load_corpus(corpus_dir), k1=k1, b=b, fingerprint=fingerprint)
        index.save(index_path)
        return index

    @classmethod
    def load(cls, index_path: str | Path) -> SearchIndex | None:
        """Read a persisted index; None when missing, unreadable or from another format version."""
        try:
            data = json.loads(Path(index_path).read_text(encoding="utf-8"))
            if data.get("version") != INDEX_VERSION:
                return None
            docs = [Document(d["id"], d["title"], d["text"]) for d in data["docs"]]
            return cls(
                docs,
                data["postings"],
                data["doc_lengths"],
                k1=data["k1"],
                b=data["b"],
                fingerprint=data["fingerprint"],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, index_path: str | Path) -> None:
        """Write atomically (temp file + rename) so concurrent readers never see half an index."""
        index_path = Path(index_path)
        index_path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": INDEX_VERSION,
            "fingerprint": self.fingerprint,
            "k1": self.k1,
            "b": self.b,
            "docs": [{"id": d.id, "title": d.title, "text": d.text} for d in self.docs],
            "doc_lengths": self.doc_lengths,
            "postings": self.postings,
        }
        tmp = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, index_path)

    def get(self, doc_id: str) -> Document | None:
        return self._by_id.get(doc_id)

    def scores(self, query: str) -> dict[int, float]:
        """BM25 score of every document that contains at least one query term."""
        scores: dict[int, float] = {}
        for term in set(tokenize(query)):
            idf = self._idf.get(term)
            if idf is None:
                continue
            for i, tf in self.postings[term]:
                norm = self.k1 * (1.0 - self.b + self.b * self.doc_lengths[i] / self._avgdl)
                scores[i] = scores.get(i, 0.0) + idf * tf * (self.k1 + 1.0) / (tf + norm)
        return scores

    def search(self, query: str, top_k: int = 5) -> list[SearchHit]:
        ranked = sorted(self.scores(query).items(), key=lambda kv: (-kv[1], self.docs[kv[0]].id))
        hits = []
        for i, score in ranked[:top_k]:
            doc = self.docs[i]
            hits.append(
                SearchHit(doc.id, doc.title, self.snippet(doc.text, query), round(score, 4))
            )
        return hits

    def snippet(self, text: str, query: str, window: int = 30, max_chars: int = 300) -> str:
        """The `window`-word stretch of `text` covering the most (IDF-weighted) query terms."""
        words = list(_WORD_RE.finditer(text))
        if not words:
            return text[:max_chars]
        terms = set(tokenize(query))
        hits = [i for i, w in enumerate(words) if w.group().lower() in terms]
        start = 0
        if hits:
            best = -1.0
            for h in hits[:500]:
                lo = max(0, h - window // 4)
                seen = {w.group().lower() for w in words[lo : lo + window]} & terms
                weight = sum(self._idf.get(t, 0.0) for t in seen)
                if weight > best:
                    best, start = weight, lo
        end = min(len(words), start + window)
        a, z = words[start].start(), words[end - 1].end()
        out = " ".join(text[a:z].split())
        if len(out) > max_chars:
            out = out[:max_chars].rsplit(" ", 1)[0]
        prefix = "..." if a > 0 else ""
        suffix = "..." if z < len(text.rstrip()) else ""
        return prefix + out + suffix


def make_search_tools(
    index: SearchIndex, max_top_k: int = 20, max_chars: int = OPEN_DOCUMENT_MAX_CHARS
) -> list[ToolDefinition]:
    """The `search` and `open_document` tools over one index."""

    @tool
    def search(query: str, top_k: int = 5) -> list[dict]:
        """Search the document collection with keywords and return the best matches.

        Args:
            query: Keywords to look for, e.g. "capital of Norway population".
            top_k: How many results to return (1-20).
        """
        if not isinstance(query, str) or not tokenize(query):
            raise ToolError("query must contain at least one word")
        if isinstance(top_k, float) and top_k.is_integer():
            top_k = int(top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ToolError("top_k must be a positive integer")
        hits = index.search(query, min(top_k, max_top_k))
        return [
            {"id": h.id, "title": h.title, "snippet": h.snippet, "score": h.score} for h in hits
        ]

    @tool
    def open_document(doc_id: str) -> dict:
        """Open one document by the id that search returned and read its text.

        Args:
            doc_id: A document id from a search result.
        """
        doc = index.get(doc_id) if isinstance(doc_id, str) else None
        if doc is None:
            raise ToolError(f"no document with id {doc_id!r}; use search to find ids")
        text = doc.text
        if len(text) > max_chars:
            text = (
                text[:max_chars]
                + f"\n[truncated: showing {max_chars} of {len(doc.text)} characters]"
            )
        return {"id": doc.id, "title": doc.title, "text": text}

    return [search, open_document]
