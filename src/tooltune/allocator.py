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

jemalloc's default hands freed pages back to the kernel within seconds, and each SFT step then
faults ~2 million pages back in: 16% of the CPU time went to the kernel (SmolLM2, fp32, 2
cores). `dirty_decay_ms:-1` keeps freed pages for reuse: 10 steps 17% faster, 1.7 million page
faults instead of 20 million, resident memory 7.1 GB instead of 5.1 (benchmarks/RESULTS.md). A
longer finite decay (30 or 120 s) did not help. What a stage kept is handed back when it ends
(`release_free_memory`), so one stage's leftovers do not add to the next one's peak. A
MALLOC_CONF of the user's own is left as it is.
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
JEMALLOC_CONF = "dirty_decay_ms:-1"  # keep freed pages until release_free_memory
_ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL
KEEP_FREE_BYTES = 1 << 30  # freed pages kept for reuse between training steps and rollout calls


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
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    env[ENV] = "jemalloc"  # never restarts twice, even if the preload did not take
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def release_free_memory(keep_bytes: int = 0) -> bool:
    """Hand the pages jemalloc keeps for reuse back to the system once they exceed
    `keep_bytes` (training steps, rollout calls and stage ends call it). False where this
    process does not run under jemalloc."""
    mallctl = _mallctl()
    if mallctl is None:
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
