"""jemalloc for long training runs on a CPU, where the system has it.

Training allocates and frees activation tensors of new sizes at every step. glibc's malloc
keeps what is freed in fragments and the process grows: 60 SFT steps of SmolLM2-135M (top 20
layers, bf16, 2 cores) went from 3.9 to 7.8 GB, against 2.3-3.4 GB under jemalloc, which also
ran the steps 22% faster (benchmarks/RESULTS.md). glibc's own knobs do not help: a fixed mmap
threshold kept 3.2 GB but faulted pages in at every step and ran 1.5x slower. A running
Python process cannot change its allocator, so `tooltune demo` and `tooltune train` restart
themselves once with jemalloc preloaded when the system has the library (Debian/Ubuntu:
``apt-get install libjemalloc2``); without it nothing changes. ``TOOLTUNE_ALLOCATOR=system``
keeps the system's malloc.

jemalloc's default hands freed pages of 8 MiB and more back to the kernel at once, and each
SFT step then faults ~2 million pages back in: 15% of the fp32 demo's CPU time went to the
kernel (SmolLM2, 2 cores). `keep_freed_pages` keeps them for reuse where the same sizes come
back again and again: SFT steps and rollouts (each generate call frees a key/value cache and the
next one allocates one of a similar size; 50 test tasks on SmolLM2 in bf16 took 161 s with 41
million page faults, 101 s with 2.2 million, the same episodes). `release_free_memory` bounds
what is kept: past 1 GiB after each optimizer step, micro-batch or generate call (whose caches
`max_cache_bytes` bounds), all of it when the block ends. GRPO's update keeps jemalloc's own
decay: with pages kept across its micro-batches of many sizes the demo's GRPO stage peaked at
10.8 GB (7.2 in a rerun; 5.3 without, in 181 against 167 s). Keeping pages everywhere
(``MALLOC_CONF=dirty_decay_ms:-1``, which the restart passes on) made SFT 16% faster and GRPO
21% but raised the fp32 demo's peak from 8.0 to 9.9 GB (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
ENV = "TOOLTUNE_ALLOCATOR"  # auto (default) | system; set to jemalloc by the restart
KEEP_PAGES_CONF = "dirty_decay_ms:-1"  # MALLOC_CONF that keeps freed pages (opt-in)
_ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL
KEEP_FREE_BYTES = 1 << 30  # freed pages kept for reuse from one training step to the next
_keeping = False  # inside `keep_freed_pages`


def find_jemalloc() -> str | None:
    """The path of the system's jemalloc library, or None."""
    return next((p for p in JEMALLOC_PATHS if Path(p).is_file()), None)


def allocator_name() -> str:
    """The allocator this process runs with, as the run log says it."""
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "system malloc"


def restart_with_jemalloc() -> None:
    """Replace this process by the same command with jemalloc preloaded, where that applies
    (Linux, jemalloc found, not preloaded yet, not turned off); otherwise return."""
    if sys.platform != "linux" or os.environ.get(ENV, "auto") != "auto":
        return
    if allocator_name() == "jemalloc":
        return
    library = find_jemalloc()
    if library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{library} {env.get('LD_PRELOAD', '')}".strip()
    env[ENV] = "jemalloc"  # never restarts twice, even if the preload did not take
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, same_command(), env)


def same_command() -> list[str]:
    """This process's command line, to start it again: `python -m tooltune ...` where it was
    started with -m (its argv[0] is then the path of `__main__.py`, and that file run as a
    script would put the package's own folder first on sys.path, where `tooltune/types.py`
    hides the standard library's `types`), else the script and its arguments."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return [sys.executable, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    return [sys.executable, *sys.argv]


def release_free_memory(keep_bytes: int = 0) -> bool:
    """Hand the freed pages jemalloc keeps back to the system once they exceed `keep_bytes`.
    Only where jemalloc keeps them (inside `keep_freed_pages`, or `KEEP_PAGES_CONF`);
    otherwise it hands them back by itself and this returns False."""
    mallctl = _mallctl()
    if mallctl is None or not (_keeping or _keeps_pages()):
        return False
    if keep_bytes and _kept_bytes(mallctl) <= keep_bytes:
        return True
    return mallctl(f"arena.{_ALL_ARENAS}.purge".encode(), None, None, None, 0) == 0


@contextlib.contextmanager
def keep_freed_pages() -> Iterator[None]:
    """Within the block, jemalloc's arenas keep freed pages for reuse (dirty decay -1); at its
    end each arena's own decay comes back and the kept pages go back to the system. A no-op
    without jemalloc, inside another such block, or where `KEEP_PAGES_CONF` keeps pages anyway."""
    global _keeping
    mallctl = _mallctl()
    if mallctl is None or _keeping or _keeps_pages():
        yield
        return
    _use_large_block_arena()
    saved = {}
    for arena in range(_read(mallctl, "arenas.narenas", ctypes.c_uint) or 0):
        name = f"arena.{arena}.dirty_decay_ms"
        decay = _read(mallctl, name, ctypes.c_ssize_t)  # None: an arena not in use yet
        if decay is not None and _write(mallctl, name, -1):
            saved[name] = decay
    _keeping = bool(saved)
    try:
        yield
    finally:
        _keeping = False
        for name, decay in saved.items():
            _write(mallctl, name, decay)
        if saved:
            mallctl(f"arena.{_ALL_ARENAS}.purge".encode(), None, None, None, 0)


def _use_large_block_arena() -> None:
    """jemalloc makes its arena for blocks of `opt.oversize_threshold` and up on first use,
    with a decay of 0; one such block allocated and freed makes it now, so that
    `keep_freed_pages` sets it too."""
    size = _read(_mallctl(), "opt.oversize_threshold", ctypes.c_size_t)
    if size:
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
        libc.free(libc.malloc(size))


def _read(mallctl: Any, name: str, ctype: Any) -> int | None:
    value, size = ctype(0), ctypes.c_size_t(ctypes.sizeof(ctype))
    if mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
        return None
    return int(value.value)


def _write(mallctl: Any, name: str, value: int) -> bool:
    new = ctypes.c_ssize_t(value)
    return mallctl(name.encode(), None, None, ctypes.byref(new), ctypes.sizeof(new)) == 0


@functools.cache
def _mallctl() -> Any:
    """jemalloc's control function where this process runs under jemalloc, else None."""
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except (AttributeError, OSError):  # not jemalloc, or no symbols to look in
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_size_t]  # fmt: skip
    return mallctl


@functools.cache
def _keeps_pages() -> bool:
    """Whether jemalloc runs with a dirty-page decay of -1 (freed pages never handed back)."""
    return _read(_mallctl(), "opt.dirty_decay_ms", ctypes.c_ssize_t) == -1


def _kept_bytes(mallctl: Any) -> int:
    """Bytes of freed pages jemalloc holds (its dirty pages, all arenas)."""
    epoch = ctypes.c_uint64(1)
    mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.sizeof(epoch))  # fresh stats
    pages = _read(mallctl, f"stats.arenas.{_ALL_ARENAS}.pdirty", ctypes.c_size_t)
    page = _read(mallctl, "arenas.page", ctypes.c_size_t)
    if pages is None or page is None:
        return 1 << 62  # no statistics in this build: always release
    return pages * page
