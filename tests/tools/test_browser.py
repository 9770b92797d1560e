"""Browser tools over a local static site: rendering, navigation, and the URL allow-list."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tooltune.registry import ToolRegistry
from tooltune.tools.browser import WebServer, html_to_text, make_browser_tools, normalize_origin
from tooltune.tools.server import LocalServer
from tooltune.types import ToolCall

INDEX = """<!doctype html>
<html><head><title>Acme  Travel</title>
<style>body { color: red }</style><script>var secret = "do not show";</script></head>
<body>
<nav><a href="/about.html">About us</a> | <a href="guides/">Guides</a></nav>
<h1>Welcome to Acme</h1>
<p>We sell <b>cheap</b> trips. Call &amp; ask.</p>
<h2>Top cities</h2>
<ul><li>Oslo <a href="cities/oslo.html">details</a></li><li>Lisbon</li></ul>
<ol><li>Book</li><li>Fly</li></ol>
<table><tr><th>City</th><th>Price</th></tr><tr><td>Oslo</td><td>120</td></tr></table>
<p><a href="javascript:alert(1)">click me</a> <a href="mailto:x@y.z">mail</a>
<a href="/old">old page</a> <a href="/away">partner site</a> <a href="#top">top</a></p>
<noscript>enable js</noscript>
</body></html>"""

ABOUT = "<h1>About</h1><p>Founded in 1999 by Ada.</p><p><a href='index.html'>Home</a></p>"
OSLO = "<h1>Oslo</h1><p>Population 709,000.</p><a href='../'>Back home</a>"
GUIDES = "<p>Guides index</p>"
TWICE = "<a href='a.html'>Next</a> <a href='b.html'>next</a> <a href='about.html'>Same</a>"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("web")
    (root / "index.html").write_text(INDEX)
    (root / "about.html").write_text(ABOUT)
    (root / "cities").mkdir()
    (root / "cities" / "oslo.html").write_text(OSLO)
    (root / "guides").mkdir()
    (root / "guides" / "index.html").write_text(GUIDES)
    (root / "long.html").write_text("<p>" + "word " * 3000 + "</p><p>needle at the end</p>")
    (root / "data.bin").write_bytes(b"\x00\x01" * 10)
    (root / "notes.txt").write_text("line one\nline two")
    (root / "twice.html").write_text(TWICE)
    secret = tmp_path_factory.mktemp("secret") / "secret.html"
    secret.write_text("<p>top secret</p>")
    (root / "leak.html").symlink_to(secret)
    redirects = {"/old": "/about.html", "/away": "http://example.com/", "/loop": "/loop"}
    with WebServer(root, redirects=redirects) as server:
        yield server.base_url


@pytest.fixture
def browser(site: str) -> ToolRegistry:
    return ToolRegistry(make_browser_tools([site], start_url=site + "/"))


def run(registry: ToolRegistry, tool_name: str, /, **arguments):
    return registry.execute(ToolCall(id="1", name=tool_name, arguments=arguments))


def test_html_to_text() -> None:
    page = html_to_text(INDEX, "http://site.test/dir/")
    assert page["title"] == "Acme Travel"
    text = "\n".join(page["lines"])
    assert "secret" not in text and "color" not in text and "enable js" not in text
    assert "# Welcome to Acme" in page["lines"]
    assert "## Top cities" in page["lines"]
    assert "We sell cheap trips. Call & ask." in page["lines"]
    assert "- Oslo [3] details" in page["lines"] and "- Lisbon" in page["lines"]
    assert "1. Book" in page["lines"] and "2. Fly" in page["lines"]
    assert "City | Price" in page["lines"] and "Oslo | 120" in page["lines"]
    assert page["lines"][0] == "[1] About us | [2] Guides"
    assert "click me" in text and "[4] click me" not in text  # javascript: is not a link
    assert page["links"] == [
        "http://site.test/about.html",
        "http://site.test/dir/guides/",
        "http://site.test/dir/cities/oslo.html",
        "http://site.test/old",
        "http://site.test/away",
        "http://site.test/dir/",
    ]
    assert page["link_texts"] == ["About us", "Guides", "details", "old page", "partner site",
                                  "top"]  # fmt: skip


def test_open_click_back(browser: ToolRegistry, site: str) -> None:
    home = run(browser, "browser_open", url=site + "/")
    assert home.success, home.error
    assert home.result["title"] == "Acme Travel" and home.result["links"] == 6
    assert "[3] details" in home.result["content"]
    oslo = run(browser, "browser_click", link=3)
    assert oslo.result["url"] == "/cities/oslo.html"  # the start site's pages by their path
    assert "Population 709,000." in oslo.result["content"]
    home_again = run(browser, "browser_click", link=1)  # '../' relative to /cities/
    assert home_again.result["url"] == "/"
    back = run(browser, "browser_back")
    assert back.result["url"] == "/cities/oslo.html"
    assert run(browser, "browser_back").result["url"] == "/"
    empty = run(browser, "browser_back")
    assert not empty.success and "no previous page" in empty.error


def test_relative_urls_and_start_url(browser: ToolRegistry, site: str) -> None:
    about = run(browser, "browser_open", url="about.html")  # resolved against start_url
    assert about.success and "Founded in 1999" in about.result["content"]
    guides = run(browser, "browser_open", url="/guides")  # directory index
    assert "Guides index" in guides.result["content"]
    # Shown by path: the server's port changes from run to run, the episode's text must not.
    assert guides.result["url"] == "/guides"
    assert run(browser, "browser_find", text="guides").result["url"] == "/guides"
    no_start = ToolRegistry(make_browser_tools([site]))  # no start site: full URLs
    assert run(no_start, "browser_open", url=site + "/about.html").result["url"] == (
        site + "/about.html"
    )


def test_no_page_open_errors(site: str) -> None:
    registry = ToolRegistry(make_browser_tools([site]))
    for name, args in [("browser_click", {"link": 1}), ("browser_find", {"text": "x"})]:
        response = run(registry, name, **args)
        assert not response.success and "no page is open" in response.error
    relative = run(registry, "browser_open", url="about.html")
    assert not relative.success and "absolute" in relative.error


def test_click_out_of_range(browser: ToolRegistry, site: str) -> None:
    run(browser, "browser_open", url=site + "/")
    for link in (0, 7, -1):
        response = run(browser, "browser_click", link=link)
        assert not response.success and "from 1 to 6" in response.error
    wrong_type = run(browser, "browser_click", link=[3])
    assert not wrong_type.success and "integer or string" in wrong_type.error


def test_click_by_text(browser: ToolRegistry, site: str) -> None:
    """A link can be named by its text (case and spacing aside), what a model has just written
    in its thought; a text no link has, or one several links share, says what to do instead."""
    run(browser, "browser_open", url=site + "/")
    oslo = run(browser, "browser_click", link="  DETAILS ")
    assert oslo.success and oslo.result["url"] == "/cities/oslo.html"
    assert run(browser, "browser_click", link="Back home").result["url"] == "/"
    by_number = run(browser, "browser_click", link="3")  # a bare number no link is named
    assert by_number.success and by_number.result["url"] == "/cities/oslo.html"
    run(browser, "browser_back")
    missing = run(browser, "browser_click", link="guide")
    assert not missing.success and "no link named 'guide'" in missing.error
    assert "[2] Guides" in missing.error  # the links whose text contains it
    superscript = run(browser, "browser_click", link="²")  # isdigit(), but not a number
    assert not superscript.success and "no link named '²'" in superscript.error
    run(browser, "browser_open", url="twice.html")
    twice = run(browser, "browser_click", link="next")
    assert not twice.success and "2 links are named 'next' (numbers 1, 2)" in twice.error
    assert run(browser, "browser_click", link="Same").result["url"] == "/about.html"


def test_find(browser: ToolRegistry, site: str) -> None:
    run(browser, "browser_open", url=site + "/")
    found = run(browser, "browser_find", text="OSLO")
    assert found.result["count"] == 2
    assert [m["text"] for m in found.result["matches"]] == ["- Oslo [3] details", "Oslo | 120"]
    assert run(browser, "browser_find", text="zebra").result["count"] == 0
    assert not run(browser, "browser_find", text="  ").success


def test_truncation_and_find_on_long_pages(site: str) -> None:
    registry = ToolRegistry(make_browser_tools([site], max_chars=500))
    page = run(registry, "browser_open", url=site + "/long.html").result
    assert page["truncated"] and len(page["content"]) < 600
    assert "needle" not in page["content"]
    assert run(registry, "browser_find", text="needle").result["count"] == 1


def test_a_page_over_the_size_limit_is_refused_not_read(site: str, monkeypatch) -> None:
    import tooltune.tools.browser as browser_module

    monkeypatch.setattr(browser_module, "MAX_PAGE_BYTES", 5_000)  # long.html has ~15,000
    registry = ToolRegistry(make_browser_tools([site]))
    big = run(registry, "browser_open", url=site + "/long.html")
    assert not big.success and "page larger than 5000 bytes" in big.error
    assert run(registry, "browser_open", url=site + "/about.html").success


def test_redirects(browser: ToolRegistry, site: str) -> None:
    moved = run(browser, "browser_open", url=site + "/old")
    assert moved.success and moved.result["url"] == "/about.html"
    away = run(browser, "browser_open", url=site + "/away")
    assert not away.success and "example.com" in away.error and "refused" in away.error
    loop = run(browser, "browser_open", url=site + "/loop")
    assert not loop.success and "too many redirects" in loop.error
    # A failed open leaves the current page unchanged.
    assert run(browser, "browser_find", text="Founded").result["count"] == 1


def test_content_types_and_missing_pages(browser: ToolRegistry, site: str) -> None:
    text = run(browser, "browser_open", url=site + "/notes.txt")
    assert text.success and text.result["content"] == "line one\nline two"
    binary = run(browser, "browser_open", url=site + "/data.bin")
    assert not binary.success and "cannot display" in binary.error
    missing = run(browser, "browser_open", url=site + "/nope.html")
    assert not missing.success and "HTTP 404" in missing.error


def test_web_server_stays_in_its_root(site: str) -> None:
    assert httpx.get(site + "/leak.html").status_code == 404  # symlink out of the root
    assert httpx.get(site + "/%2e%2e/%2e%2e/etc/passwd").status_code == 404
    assert httpx.get(site + "/about.html").status_code == 200


def test_sessions_are_independent(site: str) -> None:
    one = ToolRegistry(make_browser_tools([site]))
    two = ToolRegistry(make_browser_tools([site]))
    run(one, "browser_open", url=site + "/about.html")
    assert not run(two, "browser_back").success
    assert not run(two, "browser_find", text="Ada").success
    assert run(one, "browser_find", text="Ada").result["count"] == 1


def test_normalize_origin() -> None:
    assert normalize_origin("http://Example.COM/path") == "http://example.com:80"
    assert normalize_origin("https://a.b:8443") == "https://a.b:8443"
    assert normalize_origin("http://[::1]:9/") == "http://[::1]:9"
    for bad in ("ftp://a.b/", "http://u:p@a.b/", "not a url"):
        with pytest.raises(ValueError):
            normalize_origin(bad)
    with pytest.raises(ValueError):
        make_browser_tools([])


def test_local_server_lifecycle(tmp_path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LocalServer(object(), host="0.0.0.0")
    (tmp_path / "index.html").write_text("<p>hi</p>")
    server = LocalServer(WebServer(tmp_path).app())
    url = server.start()
    assert url.startswith("http://127.0.0.1:") and server.start() == url and server.running
    assert httpx.get(url + "/").text == "<p>hi</p>"
    server.stop()
    assert not server.running and server.base_url is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/", timeout=2)
    server.stop()  # idempotent
    with pytest.raises(FileNotFoundError):
        WebServer(tmp_path / "missing")
