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
kernel (SmolLM2, 2 cores). ``MALLOC_CONF=dirty_decay_ms:-1`` (the user's choice; the restart
keeps it) keeps freed pages for reuse, and `release_free_memory` bounds what is kept: past
1 GiB after each training step, all after each rollout call and at the end of each stage. In
the fp32 demo (rollout calls then kept 1 GiB too) SFT ran 16% faster and GRPO 21%, but the
peak rose from 8.0 to 9.9 GB, over the 8 GB the demo is sized for, so it is not the default
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
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
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def release_free_memory(keep_bytes: int = 0) -> bool:
    """Hand the freed pages jemalloc keeps back to the system once they exceed `keep_bytes`.
    Only where jemalloc keeps them (`KEEP_PAGES_CONF`); otherwise it hands them back by itself
    and this returns False."""
    mallctl = _mallctl()
    if mallctl is None or not _keeps_pages():
        return False
    if keep_bytes and _kept_bytes(mallctl) <= keep_bytes:
        return True
    return mallctl(f"arena.{_ALL_ARENAS}.purge".encode(), None, None, None, 0) == 0


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
    mallctl = _mallctl()
    value, size = ctypes.c_ssize_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
    if mallctl(b"opt.dirty_decay_ms", ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
        return False
    return value.value == -1


def _kept_bytes(mallctl: Any) -> int:
    """Bytes of freed pages jemalloc holds (its dirty pages, all arenas)."""
    epoch = ctypes.c_uint64(1)
    mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.sizeof(epoch))  # fresh stats
    values = []
    for name in (f"stats.arenas.{_ALL_ARENAS}.pdirty", "arenas.page"):
        value, size = ctypes.c_size_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
        if mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
            return 1 << 62  # no statistics in this build: always release
        values.append(value.value)
    return values[0] * values[1]
