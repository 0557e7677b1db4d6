"""The process settings of the stages that train and evaluate: freed memory kept for the next tensor,
and batches made ahead on a thread only where the step leaves it a core."""

import os
import subprocess
import sys
from pathlib import Path

from components.ml.prefetch import worth_a_thread

PROJECT = Path(__file__).resolve().parents[2]
# Minor page faults of twenty rounds of 64 MiB tensors made and freed, after ten rounds to settle the heap.
FAULTS = """
import resource, sys, torch
from components.ml.runtime import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
x = torch.rand(16 << 20)
def round_():
    y = x * 2
    return float((y + 1)[0])
for _ in range(10):
    round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
                         cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    return int(out.stdout.split()[-1])


def test_kept_memory_is_reused_without_page_faults():
    # glibc's defaults map each 64 MiB block afresh, two a round: 16,384 faults a block with 4 KiB pages, fewer
    # where the kernel backs every mapping with huge pages. Kept memory is reused: 0 faults, or a block's
    # worth where the heap had not yet settled (seen once in a full test run).
    default, kept = _faults("default"), _faults("kept")
    assert kept * 10 < default, (default, kept)


def test_batches_are_made_ahead_on_a_thread_only_where_the_step_leaves_a_core():
    cores = len(os.sched_getaffinity(0))
    assert worth_a_thread(2, cores, on_gpu=False) == 0
    assert worth_a_thread(2, cores, on_gpu=True) == 2
    assert worth_a_thread(3, 1, on_gpu=False) == (3 if cores > 1 else 0)
    assert worth_a_thread(0, 1, on_gpu=True) == 0
