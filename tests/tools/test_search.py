"""BM25 search index and the search/open_document tools."""

from __future__ import annotations

import json
import math

import pytest

from tooltune.registry import ToolRegistry
from tooltune.tools import search as search_module
from tooltune.tools.search import (
    INDEX_FILE,
    Document,
    SearchIndex,
    load_corpus,
    make_search_tools,
    tokenize,
)
from tooltune.types import ToolCall


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "norway.md").write_text(
        "# Norway\n\nOslo is the capital of Norway. Norway has fjords and a long coast.\n"
    )
    (root / "sub" / "sweden.txt").write_text(
        "Stockholm is the capital of Sweden. Sweden is large.\n"
    )
    rows = [
        {"id": "doc-fr", "title": "France", "text": "Paris is the capital of France."},
        {"id": "doc-cake", "title": "Baking", "text": "A cake needs flour, eggs and sugar."},
    ]
    (root / "extra.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "ignored.csv").write_text("not,a,document\n")
    return root


def registry_for(index):
    registry = ToolRegistry()
    for t in make_search_tools(index):
        registry.register(t)
    return registry


def call(registry, name, **arguments):
    return registry.execute(ToolCall(id="1", name=name, arguments=arguments))


def test_tokenize_lowercases_and_splits_words():
    assert tokenize("Hello, WORLD! it's 2024_x") == ["hello", "world", "it", "s", "2024", "x"]
    assert tokenize("Ünïcode Straße") == ["ünïcode", "straße"]


def test_load_corpus_ids_and_titles(corpus):
    docs = {d.id: d for d in load_corpus(corpus)}
    assert set(docs) == {"norway", "sub/sweden", "doc-fr", "doc-cake"}
    assert docs["norway"].title == "Norway"  # first Markdown heading
    assert docs["sub/sweden"].title == "sweden"  # no heading: the file stem
    assert docs["doc-cake"].title == "Baking"


def test_duplicate_ids_and_bad_jsonl_are_errors(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.md").write_text("x")
    (root / "b.jsonl").write_text(json.dumps({"id": "a", "title": "t", "text": "y"}) + "\n")
    with pytest.raises(ValueError, match="duplicate document id 'a'"):
        load_corpus(root)
    (root / "b.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="b.jsonl:1"):
        load_corpus(root)


def test_bm25_score_matches_formula():
    docs = [
        Document("a", "", "apple banana apple"),
        Document("b", "", "banana cherry"),
        Document("c", "", "cherry cherry cherry date"),
    ]
    index = SearchIndex.from_documents(docs, k1=1.2, b=0.75)
    avgdl = (3 + 2 + 4) / 3
    n, df, tf, dl = 3, 1, 2, 3
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    expected = idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * dl / avgdl))
    assert index.scores("apple")[0] == pytest.approx(expected)
    # A rare term outweighs a common one.
    ranked = [h.id for h in index.search("apple banana")]
    assert ranked[0] == "a" and set(ranked) == {"a", "b"}


def test_search_ranks_relevant_document_first(corpus, tmp_path):
    index = SearchIndex.build(corpus, tmp_path / "index")
    hits = index.search("capital of norway", top_k=3)
    assert hits[0].id == "norway"
    assert len(hits) == 3
    assert hits[0].score > hits[1].score
    assert "Norway" in hits[0].snippet
    assert index.search("zzzunknownword") == []


def test_snippet_is_a_window_around_the_match():
    text = (
        " ".join(f"w{i}" for i in range(200)) + " needle " + " ".join(f"v{i}" for i in range(200))
    )
    index = SearchIndex.from_documents([Document("d", "t", text)])
    snippet = index.snippet(text, "needle")
    assert "needle" in snippet
    assert snippet.startswith("...") and snippet.endswith("...")
    assert len(snippet) < 320


def test_index_is_persisted_and_reused(corpus, tmp_path, monkeypatch):
    index_dir = tmp_path / "index"
    first = SearchIndex.build(corpus, index_dir)
    assert (index_dir / INDEX_FILE).is_file()

    def no_loading(_):
        raise AssertionError("corpus should not be re-read when the index is fresh")

    monkeypatch.setattr(search_module, "load_corpus", no_loading)
    second = SearchIndex.build(corpus, index_dir)
    assert second.fingerprint == first.fingerprint
    assert [d.id for d in second.docs] == [d.id for d in first.docs]
    assert second.search("capital")[0].score == first.search("capital")[0].score


def test_index_is_rebuilt_when_corpus_changes(corpus, tmp_path):
    index_dir = tmp_path / "index"
    SearchIndex.build(corpus, index_dir)
    path = corpus / "sub" / "sweden.txt"
    text = path.read_text()
    path.write_text(text.replace("Stockholm", "Uppsalaa!"))  # same size, new content
    index = SearchIndex.build(corpus, index_dir)
    assert index.search("uppsalaa")[0].id == "sub/sweden"
    (corpus / "new.md").write_text("# Penguins\nPenguins live in Antarctica.\n")
    index = SearchIndex.build(corpus, index_dir)
    assert index.search("penguins antarctica")[0].id == "new"
    saved = json.loads((index_dir / INDEX_FILE).read_text())
    assert saved["fingerprint"] == index.fingerprint


def test_corrupt_index_file_is_rebuilt(corpus, tmp_path):
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    (index_dir / INDEX_FILE).write_text("{broken")
    index = SearchIndex.build(corpus, index_dir)
    assert index.search("cake")[0].id == "doc-cake"


def test_search_tools_through_registry(corpus, tmp_path):
    registry = registry_for(SearchIndex.build(corpus, tmp_path / "index"))
    response = call(registry, "search", query="paris capital", top_k=2)
    assert response.success, response.error
    assert len(response.result) == 2
    assert set(response.result[0]) == {"id", "title", "snippet", "score"}
    assert response.result[0]["id"] == "doc-fr"

    response = call(registry, "open_document", doc_id="doc-fr")
    assert response.success
    assert response.result == {
        "id": "doc-fr",
        "title": "France",
        "text": "Paris is the capital of France.",
    }


def test_search_tool_errors(corpus, tmp_path):
    registry = registry_for(SearchIndex.build(corpus, tmp_path / "index"))
    missing = call(registry, "open_document", doc_id="nope")
    assert not missing.success
    assert "no document with id 'nope'; use search to find ids" in missing.error
    empty = call(registry, "search", query="  ?! ")
    assert not empty.success and "at least one word" in empty.error
    bad_k = call(registry, "search", query="paris", top_k=0)
    assert not bad_k.success and "top_k" in bad_k.error
    wrong_type = call(registry, "search", query="paris", top_k="three")
    assert not wrong_type.success and "top_k" in wrong_type.error


def test_open_document_caps_long_text(tmp_path):
    docs = [Document("long", "Long", "x" * 10_000)]
    _, open_document = make_search_tools(SearchIndex.from_documents(docs), max_chars=100)
    result = open_document(doc_id="long")
    assert result["text"].startswith("x" * 100)
    assert "truncated: showing 100 of 10000 characters" in result["text"]
    assert len(result["text"]) < 200
