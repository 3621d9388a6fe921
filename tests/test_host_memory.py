"""`keep_host_memory`: the blocks a thread frees come back without page faults.

Each case runs in its own Python process, so the test process's malloc stays as it
was (the settings last until a process exits).
"""

import os
import subprocess
import sys

import pytest

from keras_scalevit.utils import host_memory, keep_host_memory

# One worker thread mallocs, touches and frees a 128 MiB block six times, as XLA's
# CPU runtime does with a step's temporaries, and reports the minor page faults of
# the last five.
_SCRIPT = """
import ctypes, ctypes.util, importlib.util, resource, sys, threading
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[1])
host_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_memory)
if sys.argv[2] == "keep":
    assert host_memory.keep_host_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 128 << 20
faults = []
def steps():
    for i in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=steps)
thread.start()
thread.join()
print(sum(faults[1:]))
"""


def _faults(mode):
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, host_memory.__file__, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GLIBC_TUNABLES": ""},  # glibc's defaults, no huge pages
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(
    host_memory._libc() is None, reason="needs glibc's malloc (Linux, not musl)"
)
def test_freed_blocks_are_reused_without_page_faults():
    pages = 5 * (128 << 20) // os.sysconf("SC_PAGE_SIZE")
    # Without it glibc maps each block fresh and unmaps it on free (huge pages, where
    # the kernel gives them unasked, would divide the count by 512).
    assert _faults("default") >= 0.9 * pages / 512
    assert _faults("keep") < 0.01 * pages / 512


def test_other_mallocs_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert keep_host_memory() is False
