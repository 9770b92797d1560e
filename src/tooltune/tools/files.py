"""File tools confined to a sandbox directory, with an optional per-episode overlay.

Every path the model gives is relative to the sandbox root. A path is refused when it is
absolute, contains `..` or a NUL byte, or when it (or any parent) resolves through a symbolic
link to somewhere outside the root; only regular files and directories are ever opened, so a
device file, FIFO or socket planted in the sandbox cannot hang or flood a call.

With an `overlay` directory, writes go to the overlay and reads look there first (copy-on-write):
parallel rollouts of one task each get their own overlay and the shared world stays unchanged.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from tooltune.registry import ToolDefinition, ToolError, tool

MAX_LIST_ENTRIES = 200
MAX_MATCHES = 50
MAX_MATCH_LINE_CHARS = 200
MAX_SEARCH_FILE_BYTES = 2_000_000
MAX_READ_BYTES = 10_000_000


def _clean_parts(path: str) -> list[str]:
    """Validate a model-given relative path and split it into components."""
    if not isinstance(path, str):
        raise ToolError("path must be a string")
    if "\0" in path:
        raise ToolError("path must not contain NUL bytes")
    if path.startswith(("/", "\\", "~")) or (len(path) > 1 and path[1] == ":"):
        raise ToolError(
            f"absolute paths are not allowed ({path!r}); use a path relative to the sandbox root"
        )
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ToolError(f"'..' is not allowed in paths ({path!r}); use paths inside the sandbox")
    if len(parts) > 32 or len(path) > 1024:
        raise ToolError("path is too long")
    return parts


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass
class Sandbox:
    """Resolves model paths under `root` (and `overlay`) and checks every step."""

    root: Path
    overlay: Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))
        if not self.root.is_dir():
            raise FileNotFoundError(f"sandbox root {self.root} is not a directory")
        if self.overlay is not None:
            os.makedirs(self.overlay, exist_ok=True)
            self.overlay = Path(os.path.realpath(self.overlay))

    def locate(self, base: Path, parts: list[str], display: str) -> Path | None:
        """The real path of `parts` under `base`, or None when it does not exist there.

        Each prefix is resolved; any step through a link that leaves `base` is refused."""
        current = str(base)
        for part in parts:
            candidate = os.path.join(current, part)
            try:
                st = os.lstat(candidate)
            except FileNotFoundError:
                return None
            except OSError as e:
                raise ToolError(f"cannot access {display!r}: {e.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                candidate = os.path.realpath(candidate)
                if not _inside(candidate, str(base)):
                    raise ToolError(f"{display!r} leads outside the sandbox (symbolic link)")
                if not os.path.exists(candidate):
                    return None
            current = candidate
        return Path(current)

    def find(self, path: str) -> Path | None:
        """Where a read of `path` comes from: the overlay first, then the root."""
        parts = _clean_parts(path)
        if self.overlay is not None:
            found = self.locate(self.overlay, parts, path)
            if found is not None:
                return found
        return self.locate(self.root, parts, path)

    def writable(self, path: str) -> Path:
        """Where a write of `path` goes; parents are created inside the write base."""
        parts = _clean_parts(path)
        if not parts:
            raise ToolError("a file name is required")
        base = self.overlay or self.root
        parent = base
        for i, part in enumerate(parts[:-1]):
            found = self.locate(base, parts[: i + 1], path)
            if found is None:
                try:
                    os.makedirs(os.path.join(parent, part), exist_ok=True)
                except OSError as e:
                    raise ToolError(f"cannot create folder {part!r}: {e.strerror}") from None
                found = self.locate(base, parts[: i + 1], path)
            if found is None or not found.is_dir():
                raise ToolError(f"{'/'.join(parts[: i + 1])!r} is not a directory")
            parent = found
        target = parent / parts[-1]
        if target.is_symlink():
            raise ToolError(f"{path!r} is a symbolic link; refusing to write through it")
        if target.exists() and not target.is_file():
            raise ToolError(f"{path!r} exists and is not a regular file")
        return target


def _kind(path: Path) -> str | None:
    """'file', 'dir', or None for anything else (devices, FIFOs, sockets, dangling links)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return None


def _read_bytes(path: Path, display: str, limit: int) -> bytes:
    """Open without following a final link and without blocking, and insist on a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise ToolError(f"cannot open {display!r}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ToolError(f"{display!r} is not a regular file")
        if st.st_size > limit:
            raise ToolError(f"{display!r} is too large ({st.st_size} bytes; the limit is {limit})")
        return f.read(limit + 1)[:limit]


def _as_int(value: object, name: str) -> int | None:
    """JSON numbers like 3.0 count as integers; anything else that is not an int is refused."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolError(f"{name} must be an integer")
    return value


def _entries(sandbox: Sandbox, path: str) -> dict[str, Path]:
    """name -> real path of the entries of directory `path`, overlay entries winning."""
    parts = _clean_parts(path)
    bases = [sandbox.root] + ([sandbox.overlay] if sandbox.overlay is not None else [])
    found: dict[str, Path] = {}
    any_dir = False
    for base in bases:  # the overlay comes last so that it wins
        directory = sandbox.locate(base, parts, path)
        if directory is None or _kind(directory) != "dir":
            continue
        any_dir = True
        for name in os.listdir(directory):
            found[name] = directory / name
    if not any_dir:
        target = sandbox.find(path)
        if target is None:
            raise ToolError(f"no such directory: {path!r}")
        raise ToolError(f"{path!r} is not a directory")
    return found


def _safe_kind(sandbox: Sandbox, entry: Path) -> str | None:
    """Kind of a listed entry, treating links that lead outside the sandbox as absent."""
    if entry.is_symlink():
        real = os.path.realpath(entry)
        bases = [sandbox.root] + ([sandbox.overlay] if sandbox.overlay is not None else [])
        if not any(_inside(real, str(b)) for b in bases):
            return None
    return _kind(entry)


def _walk(sandbox: Sandbox, path: str) -> list[tuple[str, Path]]:
    """(relative path, real path) of every regular file under `path`, overlay versions winning."""
    start = sandbox.find(path)
    if start is None:
        raise ToolError(f"no such file or directory: {path!r}")
    prefix = "/".join(_clean_parts(path))
    if _kind(start) == "file":
        return [(prefix or start.name, start)]
    files: dict[str, Path] = {}
    stack = [prefix]
    while stack and len(files) < 10_000:
        rel_dir = stack.pop()
        for name, entry in sorted(_entries(sandbox, rel_dir or ".").items()):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            kind = None if entry.is_symlink() else _kind(entry)  # walks never follow links
            if kind == "dir":
                stack.append(rel)
            elif kind == "file":
                files[rel] = entry
    return sorted(files.items())


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: letters inserted, dropped or replaced to turn `a` into `b`."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _closest(sandbox: Sandbox, path: str) -> str:
    """The " (did you mean 'a/b.csv'?)" of a missing file, where one file in its folder is its name
    with a slip (at most two letters inserted, dropped or replaced), "" otherwise. Only a slip:
    a looser match (`difflib`'s) named the budget of another team or company in the world's
    folders of look-alike names, a wrong file that reads as the answer."""
    parts = _clean_parts(path)
    if not parts:
        return ""
    folder = "/".join(parts[:-1])
    try:
        names = [n for n, e in _entries(sandbox, folder or ".").items() if _kind(e) == "file"]
    except ToolError:
        return ""
    close = [n for n in names if abs(len(n) - len(parts[-1])) <= 2 and _edits(n, parts[-1]) <= 2]
    return f" (did you mean {'/'.join([*parts[:-1], close[0]])!r}?)" if len(close) == 1 else ""


def make_file_tools(
    root: str | Path,
    *,
    overlay: str | Path | None = None,
    max_write_bytes: int = 1_000_000,
    max_read_chars: int = 20_000,
) -> list[ToolDefinition]:
    """list_files, read_file, write_file, append_file and search_files under `root`."""
    sandbox = Sandbox(Path(root), Path(overlay) if overlay is not None else None)

    @tool
    def list_files(path: str = ".") -> dict:
        """List the files and folders in a folder of the sandbox.

        Args:
            path: Folder relative to the sandbox root, e.g. "." or "reports/2023".
        """
        entries = []
        for name, entry in sorted(_entries(sandbox, path).items()):
            kind = _safe_kind(sandbox, entry)
            if kind is None:
                continue
            size = os.stat(entry).st_size if kind == "file" else None
            entries.append({"name": name, "type": kind, "size": size})
        shown = entries[:MAX_LIST_ENTRIES]
        return {"path": path, "entries": shown, "truncated": len(entries) > len(shown)}

    @tool
    def read_file(path: str, start_line: int | None = None, end_line: int | None = None) -> dict:
        """Read a text file from the sandbox, optionally only some lines.

        Args:
            path: File path relative to the sandbox root, e.g. "notes/todo.txt".
            start_line: First line to return (1-based, inclusive); default the first line.
            end_line: Last line to return (1-based, inclusive); default the last line.
        """
        target = sandbox.find(path)
        if target is None:
            raise ToolError(f"no such file: {path!r}{_closest(sandbox, path)}; "
                            "use list_files to see what exists")  # fmt: skip
        if _kind(target) != "file":
            raise ToolError(f"{path!r} is not a regular file")
        data = _read_bytes(target, path, MAX_READ_BYTES)
        if b"\0" in data[:8192]:
            raise ToolError(f"{path!r} is a binary file, not text")
        lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
        total = len(lines)
        start_line = _as_int(start_line, "start_line")
        end_line = _as_int(end_line, "end_line")
        first = 1 if start_line is None else start_line
        last = total if end_line is None else min(end_line, total)
        if first < 1:
            raise ToolError("start_line must be at least 1 (lines are numbered from 1)")
        if end_line is not None and end_line < first:
            raise ToolError("end_line must not be smaller than start_line")
        if total and first > total:
            raise ToolError(f"start_line {first} is past the end of the file ({total} lines)")
        content = "".join(lines[first - 1 : last])
        truncated = len(content) > max_read_chars
        if truncated:
            content = content[:max_read_chars]
            content += f"\n[truncated at {max_read_chars} characters; read fewer lines]"
        return {
            "path": path,
            "content": content,
            "start_line": first if total else 0,
            "end_line": last,
            "total_lines": total,
            "truncated": truncated,
        }

    def _check_content(content: str) -> bytes:
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        data = content.encode("utf-8")
        if len(data) > max_write_bytes:
            raise ToolError(f"content is {len(data)} bytes; the limit is {max_write_bytes}")
        return data

    def _write(path: str, data: bytes, append: bool) -> dict:
        target = sandbox.writable(path)
        existing = b""
        if append:
            source = sandbox.find(path)
            if source is not None:
                if _kind(source) != "file":
                    raise ToolError(f"{path!r} is not a regular file")
                existing = _read_bytes(source, path, max_write_bytes)
        if len(existing) + len(data) > max_write_bytes:
            raise ToolError(f"the file would exceed the {max_write_bytes}-byte limit")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        try:
            fd = os.open(target, flags, 0o644)
        except OSError as e:
            raise ToolError(f"cannot write {path!r}: {e.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(existing + data)
        return {"path": path, "bytes": len(existing) + len(data)}

    @tool
    def write_file(path: str, content: str) -> dict:
        """Create or overwrite a text file in the sandbox (parent folders are created).

        Args:
            path: File path relative to the sandbox root, e.g. "out/summary.txt".
            content: The full text to write.
        """
        return _write(path, _check_content(content), append=False)

    @tool
    def append_file(path: str, content: str) -> dict:
        """Append text to the end of a file in the sandbox (created when missing).

        Args:
            path: File path relative to the sandbox root.
            content: The text to add at the end.
        """
        return _write(path, _check_content(content), append=True)

    @tool
    def search_files(pattern: str, path: str = ".") -> dict:
        """Find lines containing a text (case-insensitive, literal) in the sandbox's files.

        Returns matches as "path:line:text".

        Args:
            pattern: The text to look for (not a regular expression).
            path: File or folder to search, relative to the sandbox root.
        """
        if not isinstance(pattern, str) or not pattern:
            raise ToolError("pattern must be a non-empty string")
        needle = pattern.lower()
        matches: list[str] = []
        more = False
        for rel, real in _walk(sandbox, path):
            try:
                if os.stat(real).st_size > MAX_SEARCH_FILE_BYTES:
                    continue
                data = _read_bytes(real, rel, MAX_SEARCH_FILE_BYTES)
            except (ToolError, OSError):
                continue
            if b"\0" in data[:8192]:
                continue
            for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                if needle in line.lower():
                    if len(matches) >= MAX_MATCHES:
                        more = True
                        break
                    matches.append(f"{rel}:{lineno}:{line.strip()[:MAX_MATCH_LINE_CHARS]}")
            if more:
                break
        return {"matches": matches, "truncated": more}

    return [list_files, read_file, write_file, append_file, search_files]
