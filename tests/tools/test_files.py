"""Sandboxed file tools, including the per-episode overlay."""

from __future__ import annotations

import os

import pytest

from tooltune.registry import ToolRegistry
from tooltune.tools.files import make_file_tools
from tooltune.types import ToolCall


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "sandbox"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "todo.txt").write_text("buy milk\nwrite report\ncall Alice\nMilk again\n")
    (root / "readme.md").write_text("# Sandbox\nHello\n")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    os.symlink("notes/todo.txt", root / "todo-link")  # a link that stays inside is fine
    return root


def make_registry(root, **kwargs):
    registry = ToolRegistry()
    for t in make_file_tools(root, **kwargs):
        registry.register(t)
    return registry


def call(registry, name, **arguments):
    return registry.execute(ToolCall(id="1", name=name, arguments=arguments))


def test_list_files(root):
    reg = make_registry(root)
    listing = call(reg, "list_files")
    assert listing.success, listing.error
    entries = {e["name"]: e for e in listing.result["entries"]}
    assert entries["notes"]["type"] == "dir" and entries["notes"]["size"] is None
    assert entries["readme.md"] == {"name": "readme.md", "type": "file", "size": 16}
    assert entries["todo-link"]["type"] == "file"
    assert call(reg, "list_files", path="notes").result["entries"][0]["name"] == "todo.txt"
    missing = call(reg, "list_files", path="nope")
    assert not missing.success and "no such directory" in missing.error
    not_dir = call(reg, "list_files", path="readme.md")
    assert not not_dir.success and "not a directory" in not_dir.error


def test_read_file_and_line_ranges(root):
    reg = make_registry(root)
    whole = call(reg, "read_file", path="notes/todo.txt").result
    assert whole["content"] == "buy milk\nwrite report\ncall Alice\nMilk again\n"
    assert whole["total_lines"] == 4 and whole["truncated"] is False
    part = call(reg, "read_file", path="notes/todo.txt", start_line=2, end_line=3).result
    assert part["content"] == "write report\ncall Alice\n"
    assert (part["start_line"], part["end_line"]) == (2, 3)
    assert (
        call(reg, "read_file", path="notes/todo.txt", start_line=4).result["content"]
        == "Milk again\n"
    )
    assert (
        call(reg, "read_file", path="./notes//todo.txt", end_line=1).result["content"]
        == "buy milk\n"
    )
    assert call(reg, "read_file", path="todo-link", end_line=99).result["end_line"] == 4


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"path": "missing.txt"}, "no such file"),
        ({"path": "notes"}, "not a regular file"),
        ({"path": "blob.bin"}, "binary file"),
        ({"path": "notes/todo.txt", "start_line": 0}, "at least 1"),
        ({"path": "notes/todo.txt", "start_line": 3, "end_line": 2}, "smaller than start_line"),
        ({"path": "notes/todo.txt", "start_line": 9}, "past the end of the file (4 lines)"),
    ],
)
def test_read_file_errors(root, arguments, message):
    response = call(make_registry(root), "read_file", **arguments)
    assert not response.success
    assert message in response.error


def test_a_missing_file_names_the_closest_in_its_folder(root):
    reg = make_registry(root)
    slipped = call(reg, "read_file", path="notes/tdo.txt")
    assert slipped.error == (
        "no such file: 'notes/tdo.txt' (did you mean 'notes/todo.txt'?); "
        "use list_files to see what exists"
    )
    # nothing like it, more than a slip away, or no such folder
    for far in ["notes/budget.csv", "notes/todo_list.txt", "nowhere/todo.txt"]:
        assert "did you mean" not in call(reg, "read_file", path=far).error


def test_read_is_truncated(root):
    (root / "big.txt").write_text("a" * 500)
    result = call(make_registry(root, max_read_chars=100), "read_file", path="big.txt").result
    assert result["truncated"] is True
    assert (
        result["content"].startswith("a" * 100)
        and "truncated at 100 characters" in result["content"]
    )


def test_write_and_append(root):
    reg = make_registry(root)
    written = call(reg, "write_file", path="out/new/summary.txt", content="line 1\n")
    assert written.success, written.error
    assert written.result == {"path": "out/new/summary.txt", "bytes": 7}
    assert (root / "out" / "new" / "summary.txt").read_text() == "line 1\n"
    assert call(reg, "append_file", path="out/new/summary.txt", content="line 2\n").success
    assert (root / "out" / "new" / "summary.txt").read_text() == "line 1\nline 2\n"
    assert call(reg, "append_file", path="fresh.txt", content="x").success
    assert (root / "fresh.txt").read_text() == "x"
    overwrite = call(reg, "write_file", path="readme.md", content="new")
    assert overwrite.success and (root / "readme.md").read_text() == "new"


def test_write_limits_and_errors(root):
    reg = make_registry(root, max_write_bytes=10)
    too_big = call(reg, "write_file", path="a.txt", content="x" * 11)
    assert not too_big.success and "limit is 10" in too_big.error
    assert not (root / "a.txt").exists()
    assert call(reg, "write_file", path="a.txt", content="x" * 8).success
    grow = call(reg, "append_file", path="a.txt", content="yyy")
    assert not grow.success and "10-byte limit" in grow.error
    onto_dir = call(reg, "write_file", path="notes", content="x")
    assert not onto_dir.success and "not a regular file" in onto_dir.error
    under_file = call(reg, "write_file", path="readme.md/x.txt", content="x")
    assert not under_file.success and "not a directory" in under_file.error
    through_link = call(reg, "write_file", path="todo-link", content="x")
    assert not through_link.success and "symbolic link" in through_link.error
    no_name = call(reg, "write_file", path=".", content="x")
    assert not no_name.success


def test_search_files(root):
    reg = make_registry(root)
    found = call(reg, "search_files", pattern="MILK")
    assert found.success, found.error
    assert found.result["matches"] == ["notes/todo.txt:1:buy milk", "notes/todo.txt:4:Milk again"]
    assert found.result["truncated"] is False
    scoped = call(reg, "search_files", pattern="hello", path="readme.md")
    assert scoped.result["matches"] == ["readme.md:2:Hello"]
    assert call(reg, "search_files", pattern="nothing-like-this").result["matches"] == []
    empty = call(reg, "search_files", pattern="")
    assert not empty.success


def test_search_files_caps_matches(root):
    (root / "many.txt").write_text("hit\n" * 500)
    result = call(make_registry(root), "search_files", pattern="hit", path="many.txt").result
    assert len(result["matches"]) == 50 and result["truncated"] is True


def test_overlay_isolates_writes(root, tmp_path):
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    episode_a = make_registry(root, overlay=tmp_path / "overlay-a")
    episode_b = make_registry(root, overlay=tmp_path / "overlay-b")

    assert call(episode_a, "write_file", path="readme.md", content="A was here\n").success
    assert call(episode_a, "append_file", path="notes/todo.txt", content="A's item\n").success
    assert call(episode_a, "write_file", path="new/a.txt", content="only in A").success

    # Episode A sees its own versions, copy-on-write for the appended file.
    assert call(episode_a, "read_file", path="readme.md").result["content"] == "A was here\n"
    todo = call(episode_a, "read_file", path="notes/todo.txt").result["content"]
    assert todo.endswith("Milk again\nA's item\n")
    names = {e["name"] for e in call(episode_a, "list_files").result["entries"]}
    assert {"new", "readme.md", "notes"} <= names
    assert call(episode_a, "search_files", pattern="a's item").result["matches"] == [
        "notes/todo.txt:5:A's item"
    ]

    # Episode B and the shared root are untouched.
    assert call(episode_b, "read_file", path="readme.md").result["content"] == "# Sandbox\nHello\n"
    assert not call(episode_b, "read_file", path="new/a.txt").success
    assert call(episode_b, "search_files", pattern="a's item").result["matches"] == []
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before
    assert (tmp_path / "overlay-a" / "readme.md").read_text() == "A was here\n"


def test_root_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        make_file_tools(tmp_path / "missing")
