"""A text browser over allow-listed local web pages, and the static web server that hosts them.

Pages are fetched with httpx and rendered to plain text with numbered links (`[3] Pricing`), the
form a model can read and act on: open a URL, click a link by its number or its text, find text
on the page, go back. Every URL, including each redirect hop, must be on an allowed origin
(scheme, host and port exactly as given), which shuts out SSRF tricks: other schemes,
credentials in the URL, numeric or IPv6 spellings of an address, and redirects off the allowed
sites.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tooltune.registry import ToolDefinition, ToolError, tool
from tooltune.tools.server import LocalServer, http_client, read_limited

MAX_PAGE_BYTES = 2_000_000
MAX_REDIRECTS = 5
MAX_FIND_LINES = 20
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


# --------------------------------------------------------------------------------------------
# Static web server
# --------------------------------------------------------------------------------------------


class WebServer:
    """Serve the HTML files under `root_dir` on 127.0.0.1 (a directory serves its index.html).

    `redirects` maps request paths to targets (e.g. a moved page); tests also use it to make an
    allowed page redirect off-site. Paths never leave `root_dir`, and symlinks are not followed.
    """

    def __init__(self, root_dir: str | Path, redirects: dict[str, str] | None = None):
        self.root = Path(root_dir).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"web root {root_dir} is not a directory")
        self.redirects = dict(redirects or {})
        self._server: LocalServer | None = None
        self.base_url: str | None = None

    def _file_for(self, url_path: str) -> Path | None:
        parts = [p for p in url_path.split("/") if p]
        if any(p in (".", "..") or "\0" in p for p in parts):
            return None
        candidate = self.root.joinpath(*parts)
        if candidate.is_dir():
            candidate = candidate / "index.html"
        # No symlinks anywhere on the way: a link inside the web root could point outside it.
        probe = candidate
        while probe != self.root:
            if probe.is_symlink():
                return None
            probe = probe.parent
        return candidate if candidate.is_file() else None

    def app(self) -> Starlette:
        async def serve(request: Request) -> Response:
            path = request.url.path
            if path in self.redirects:
                return RedirectResponse(self.redirects[path], status_code=302)
            found = self._file_for(path)
            if found is None:
                return PlainTextResponse("404 page not found", status_code=404)
            return FileResponse(found)

        return Starlette(routes=[Route("/{path:path}", serve, methods=["GET", "HEAD"])])

    def start(self) -> str:
        if self.base_url is None:
            self._server = LocalServer(self.app())
            self.base_url = self._server.start()
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server, self.base_url = None, None

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# HTML -> text
# --------------------------------------------------------------------------------------------

_BLOCK = {
    "p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "form",
    "blockquote", "pre", "figure", "figcaption", "address", "dl", "dt", "dd", "hr", "br", "table",
    "ul", "ol", "title",
}  # fmt: skip
_SKIP = {"script", "style", "noscript", "template", "head", "svg", "iframe", "object"}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _TextRenderer(HTMLParser):
    """Collect readable lines and numbered links from an HTML document."""

    def __init__(self, base_url: str):
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.lines: list[str] = []
        self.current: list[str] = []
        self.links: list[str] = []
        self.link_texts: list[str] = []
        self.title = ""
        self._skip_depth = 0
        self._in_title = False
        self._lists: list[list[int]] = []  # stack of [is_ordered, counter]
        self._link: str | None = None
        self._link_text: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._pre = 0

    # -- helpers ------------------------------------------------------------------------------
    def _flush(self) -> None:
        text = "".join(self.current)
        text = text.strip() if self._pre else " ".join(text.split())
        if text:
            self.lines.append(text)
        self.current = []

    def _emit(self, text: str) -> None:
        if self._cell is not None:
            self._cell.append(text)
        elif self._link is not None:
            self._link_text.append(text)
        else:
            self.current.append(text)

    # -- parser callbacks ---------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            if tag == "head":
                return  # the <title> inside <head> is still read
            self._skip_depth += 1
            return
        if self._skip_depth:
            return
        if tag == "title":
            self._in_title = True
            return
        if tag == "base":
            href = dict(attrs).get("href")
            if href:
                self.base_url = urljoin(self.base_url, href)
            return
        if tag in _HEADINGS:
            self._flush()
            self.current.append("#" * _HEADINGS[tag] + " ")
        elif tag in ("ul", "ol"):
            self._flush()
            self._lists.append([tag == "ol", 0])
        elif tag == "li":
            self._flush()
            indent = "  " * max(len(self._lists) - 1, 0)
            if self._lists and self._lists[-1][0]:
                self._lists[-1][1] += 1
                self.current.append(f"{indent}{self._lists[-1][1]}. ")
            else:
                self.current.append(f"{indent}- ")
        elif tag == "tr":
            self._flush()
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._emit(f"[image: {alt}]")
        elif tag == "a":
            href = dict(attrs).get("href")
            if href and self._link is None:
                self._link = href
                self._link_text = []
        elif tag in _BLOCK:
            if tag == "pre":
                self._pre += 1
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP and tag != "head":
            self._skip_depth = max(self._skip_depth - 1, 0)
            return
        if self._skip_depth:
            return
        if tag == "title":
            self._in_title = False
        elif tag == "a" and self._link is not None:
            text = " ".join("".join(self._link_text).split())
            href, self._link = self._link, None
            target = urljoin(self.base_url, href)
            if urlsplit(target).scheme in ("http", "https"):
                self.links.append(target.split("#")[0] or target)
                self.link_texts.append(text or target)
                self._emit(f"[{len(self.links)}] {text or target}")
            else:
                self._emit(text)
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            row, self._row = self._row, None
            if any(row):
                self.lines.append(" | ".join(row))
        elif tag in ("ul", "ol"):
            self._flush()
            if self._lists:
                self._lists.pop()
        elif tag in _HEADINGS or tag == "li" or tag in _BLOCK:
            if tag == "pre":
                self._pre = max(self._pre - 1, 0)
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._in_title:
            self.title += data
            return
        self._emit(data)

    def render(self, html: str) -> dict[str, Any]:
        self.feed(html)
        self.close()
        if self._link is not None:  # an unclosed <a>
            self.handle_endtag("a")
        self._flush()
        return {"title": " ".join(self.title.split()), "lines": self.lines,
                "links": self.links, "link_texts": self.link_texts}  # fmt: skip


def html_to_text(html: str, base_url: str = "http://localhost/") -> dict[str, Any]:
    """Render HTML to `{"title", "lines", "links", "link_texts"}`: links are absolute http(s)
    URLs, numbered from 1 as the text shows them, and `link_texts` their texts in that order."""
    return _TextRenderer(base_url).render(html)


# --------------------------------------------------------------------------------------------
# URL policy
# --------------------------------------------------------------------------------------------


def normalize_origin(url: str) -> str:
    """`scheme://host:port` with an explicit port, lowercased; raises ValueError if malformed."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if "@" in parts.netloc:
        raise ValueError(f"URLs with credentials are not allowed: {url!r}")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def check_url(url: str, allowed: set[str]) -> str:
    """The URL if it may be fetched, else ToolError saying why.

    Both the stdlib parser and httpx's parser must agree on the origin, so a URL that the two
    read differently (a classic SSRF trick) is refused rather than guessed at.
    """
    if _BAD_URL_CHARS.search(url):
        raise ToolError("refused: the URL contains spaces, control characters or backslashes")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ToolError(f"refused: only http and https URLs can be opened, not {scheme or 'this'}:")
    try:
        origin = normalize_origin(url)
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ToolError(f"refused: {exc}") from None
    host = parsed.host.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 0)
    if f"{parsed.scheme}://{host}:{port}" != origin or parsed.userinfo:
        raise ToolError("refused: the URL is ambiguous")
    if origin not in allowed:
        raise ToolError(
            f"refused: {origin} is not an allowed site (allowed: {', '.join(sorted(allowed))})"
        )
    return url


# --------------------------------------------------------------------------------------------
# Browser tools
# --------------------------------------------------------------------------------------------


class BrowserSession:
    """One episode's browser: the current page, its links and the back history."""

    def __init__(
        self,
        allowed_origins: list[str],
        *,
        start_url: str | None = None,
        max_chars: int = 4000,
        timeout: float = 10.0,
    ):
        if not allowed_origins:
            raise ValueError("at least one allowed origin is required")
        self.allowed = {normalize_origin(o) for o in allowed_origins}
        self.start_url = start_url
        self.max_chars = max_chars
        self.timeout = timeout
        self.page: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        # Redirects are followed by hand so that every hop is checked against the allow-list.
        self.client = http_client(timeout)

    def _fetch(self, url: str) -> dict[str, Any]:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, self.allowed)
            try:
                with self.client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    body = read_limited(response, MAX_PAGE_BYTES, "page")
            except httpx.TimeoutException:
                raise ToolError(f"timed out loading {url}") from None
            except httpx.HTTPError as exc:
                raise ToolError(f"could not load {url}: {type(exc).__name__}") from None
            if response.status_code >= 400:
                raise ToolError(f"HTTP {response.status_code} loading {url}")
            return self._render(url, response.headers.get("content-type", ""), body)
        raise ToolError(f"too many redirects (more than {MAX_REDIRECTS})")

    def _render(self, url: str, content_type: str, body: bytes) -> dict[str, Any]:
        kind = content_type.split(";")[0].strip().lower()
        match = re.search(r"charset=([\w\-]+)", content_type)
        try:
            text = body.decode(match.group(1) if match else "utf-8", errors="replace")
        except LookupError:
            text = body.decode("utf-8", errors="replace")
        if kind in ("text/html", "application/xhtml+xml", ""):
            page = html_to_text(text, url)
        elif kind.startswith("text/") or kind.endswith("json"):
            page = {"title": "", "lines": text.splitlines(), "links": [], "link_texts": []}
        else:
            raise ToolError(f"cannot display {kind} content at {url}")
        page["url"] = url
        return page

    def _shown_url(self, url: str) -> str:
        """A page of the start site is shown by its path: the site's origin (a local server's
        port, different in every run) is noise to the model and would make episodes differ
        from run to run. Other origins are shown in full."""
        if self.start_url is None:
            return url
        parts = urlsplit(url)
        if urljoin(url, "/") != urljoin(self.start_url, "/"):
            return url
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def _view(self) -> dict[str, Any]:
        assert self.page is not None
        text = "\n".join(self.page["lines"])
        truncated = len(text) > self.max_chars
        if truncated:
            text = text[: self.max_chars] + "\n[... page truncated; use browser_find to search it]"
        return {
            "url": self._shown_url(self.page["url"]),
            "title": self.page["title"],
            "content": text,
            "links": len(self.page["links"]),
            "truncated": truncated,
        }

    def open(self, url: str) -> dict[str, Any]:
        url = url.strip()
        base = self.page["url"] if self.page else self.start_url
        if not urlsplit(url).scheme and not url.startswith("//"):
            if base is None:
                raise ToolError("no page is open, so the URL must be absolute (http://...)")
            url = urljoin(base, url)
        elif url.startswith("//"):
            url = urljoin(base or "http://invalid/", url)
        page = self._fetch(url)
        if self.page is not None:
            self.history.append(self.page)
        self.page = page
        return self._view()

    def click(self, link: int | str) -> dict[str, Any]:
        """Follow link number `link` (as the text shows it), or the link whose text is `link`."""
        if self.page is None:
            raise ToolError("no page is open; use browser_open first")
        links = self.page["links"]
        if not links:
            raise ToolError("this page has no links")
        if isinstance(link, str):
            link = self._number_of(link)
        if isinstance(link, bool) or not 1 <= link <= len(links):
            raise ToolError(f"link must be a number from 1 to {len(links)}, got {link}")
        return self.open(links[link - 1])

    def _number_of(self, text: str) -> int:
        """The number of the link whose text is `text` (case and spacing aside); a bare number
        that no link's text is counts as the link's number."""
        wanted = " ".join(text.split()).casefold()
        texts = [" ".join(t.split()).casefold() for t in self.page["link_texts"]]
        numbers = [i + 1 for i, t in enumerate(texts) if t == wanted]
        if numbers:
            targets = {self.page["links"][n - 1] for n in numbers}
            if len(targets) > 1:
                raise ToolError(f"{len(numbers)} links are named {text!r} (numbers "
                                f"{', '.join(map(str, numbers))}); click one by its number")  # fmt: skip
            return numbers[0]
        if wanted.isascii() and wanted.isdigit():  # not "²", which isdigit() but int() refuses
            return int(wanted)
        near = [f"[{i + 1}] {self.page['link_texts'][i]}" for i, t in enumerate(texts)
                if wanted and wanted in t][:5]  # fmt: skip
        hint = f"; links that contain it: {', '.join(near)}" if near else ""
        raise ToolError(f"no link named {text!r} on this page{hint}")

    def find(self, text: str) -> dict[str, Any]:
        if self.page is None:
            raise ToolError("no page is open; use browser_open first")
        needle = text.strip().lower()
        if not needle:
            raise ToolError("text to find must not be empty")
        hits = [
            {"line": i + 1, "text": line}
            for i, line in enumerate(self.page["lines"])
            if needle in line.lower()
        ]
        return {
            "url": self._shown_url(self.page["url"]),
            "query": text,
            "count": len(hits),
            "matches": hits[:MAX_FIND_LINES],
        }

    def back(self) -> dict[str, Any]:
        if not self.history:
            raise ToolError("there is no previous page to go back to")
        self.page = self.history.pop()
        return self._view()


def make_browser_tools(
    allowed_origins: list[str], *, start_url: str | None = None, max_chars: int = 4000
) -> list[ToolDefinition]:
    """`[browser_open, browser_click, browser_find, browser_back]` sharing one browser session.

    Build one set per episode: the session holds the current page and the history.
    """
    session = BrowserSession(allowed_origins, start_url=start_url, max_chars=max_chars)

    @tool
    def browser_open(url: str) -> dict:
        """Open a web page and show its text with numbered links like [1].

        Args:
            url: Absolute URL (http://...) or a path relative to the current page, e.g. '/about.html'.
        """
        return session.open(url)

    @tool
    def browser_click(link: int | str) -> dict:
        """Follow a link of the current page, given by its number or its text.

        Args:
            link: The number in brackets before the link, e.g. 3 for '[3] Pricing', or the
                link's text, 'Pricing'.
        """
        return session.click(link)

    @tool
    def browser_find(text: str) -> dict:
        """Find the lines of the current page that contain some text (case-insensitive).

        Args:
            text: The text to look for.
        """
        return session.find(text)

    @tool
    def browser_back() -> dict:
        """Go back to the previous page."""
        return session.back()

    return [browser_open, browser_click, browser_find, browser_back]
