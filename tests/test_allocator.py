"""keep_freed_cpu_memory: after it, the memory of a freed large tensor stays with the process for the next one
(glibc's defaults give it back to the system at once). Run in a child process, whose malloc settings end with it."""
import subprocess
import sys

import pytest

CHILD = """
import os, torch
from fiber_d2.engine.allocator import keep_freed_cpu_memory

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def kept_after_free():
    before = resident_mib()
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, above glibc's largest default mmap threshold (32 MiB)
    del x
    return resident_mib() - before

default = kept_after_free()
assert keep_freed_cpu_memory()
first = kept_after_free()  # from the heap now, which grows by it and keeps it
print(default, first, sum(kept_after_free() for _ in range(4)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_stays_with_the_process_and_is_reused():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout.split()
    default, first, later = map(float, out)
    assert default < 8  # given back to the system at once: about 0 MiB more than before
    assert first > 56  # kept: the process holds the 64 MiB after the tensor is freed
    assert later < 72  # four more tensors of 64 MiB grow it by at most one more: the kept memory is reused
