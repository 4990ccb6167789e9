"""profiler/allocator.py: the lockprof program loads pyarrow with malloc as
its memory pool (mimalloc kept ~30 MB of freed pages at the end of a run),
without leaving the setting to the commands it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What the lockprof program sees once its module is loaded as the program.
PROBE = (
    "import sys; sys.argv = ['lockprof']\n"
    "import json, os, profiler.cli.main, pyarrow\n"
    "print(json.dumps([pyarrow.default_memory_pool().backend_name,"
    " os.environ.get('ARROW_DEFAULT_MEMORY_POOL')]))\n"
)


def _pool_and_env(env: dict[str, str]) -> list:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
        check=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout.splitlines()[-1])


def test_the_program_loads_pyarrow_with_malloc_and_does_not_pass_it_on():
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _pool_and_env(env) == ["system", None]


@pytest.mark.parametrize("choice", ["mimalloc", "jemalloc"])
def test_a_users_own_pool_wins(choice):
    import pyarrow

    if choice not in pyarrow.supported_memory_backends():
        pytest.skip(f"this pyarrow has no {choice}")
    assert _pool_and_env({**os.environ, "ARROW_DEFAULT_MEMORY_POOL": choice}) == [choice, choice]


# Frees a 4 MB block (glibc then raises its threshold to 4 MB, unless it is
# fixed), then takes a 1 MB one: mapped on its own, or from the heap? glibc's
# mallinfo2().hblks counts the blocks mapped on their own.
LARGE_BLOCK_PROBE = """
import ctypes, json, sys
sys.argv = ['lockprof', 'show']
if FIX:
    import profiler.cli.main
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks')]
libc.mallinfo2.restype = Info
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(json.dumps(libc.mallinfo2().hblks - before))
"""


@pytest.mark.parametrize(("fixed", "mapped"), [(True, 1), (False, 0)])
def test_the_program_maps_large_blocks_on_their_own_however_large_a_freed_one(fixed, mapped):
    out = subprocess.run(
        [sys.executable, "-c", f"FIX = {fixed}\n{LARGE_BLOCK_PROBE}"], cwd=REPO,
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert json.loads(out.stdout.splitlines()[-1]) == mapped
