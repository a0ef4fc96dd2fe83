"""frame_stream: the script examples/frame_stream.c spawns and hands a frame every tick.

Each frame arrives as a read-only numpy array of uint8, [1080, 1920, 4], backed by the
host's shared memory (no copy was made to bring it here). The script answers with the
mean of each channel and how long it spent computing them, so that the host can tell
its work apart from the transfer.

Needs numpy (Debian: python3-numpy).
"""

import time

import numpy


def mean_per_channel(frame):
    start = time.perf_counter()
    # Channel by channel: a strided sum per channel is several times faster here than
    # one reduction over the last axis.
    pixels = frame.shape[0] * frame.shape[1]
    means = [int(frame[..., c].sum(dtype=numpy.uint64)) / pixels for c in range(frame.shape[-1])]
    return [*means, time.perf_counter() - start]
