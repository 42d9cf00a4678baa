"""Static memory planning: every buffer gets an offset in one arena from its live interval.

Greedy by size, as TFLite's and TVM's planners do (XLA's heap simulator likewise): buffers
sorted by size descending (ties: earlier first, then name, so the plan is reproducible);
each is placed in the smallest gap, between the buffers already placed that are live at
the same time, that fits it (best fit), else above them. Two buffers whose live intervals
meet never share a byte; buffers whose lifetimes do not meet reuse the same memory. The
arena is allocated once per batch size, so a step allocates nothing; its size is the
planned peak. Offsets are multiples of ALIGNMENT (cache lines, SIMD loads).
"""

from __future__ import annotations

#: bytes every offset (and so every buffer's footprint) is rounded to
ALIGNMENT = 64


def footprint(nbytes: int) -> int:
    """Bytes a buffer of `nbytes` takes in the arena: rounded up to ALIGNMENT."""
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def assign_offsets(buffers) -> dict[str, int]:
    """buffer name -> byte offset in the arena, for `buffers` (cnndsl.plan.Buffer, live
    over [first, last] inclusive)."""
    placed: list[tuple[int, object]] = []
    offsets: dict[str, int] = {}
    for buffer in sorted(buffers, key=lambda b: (-b.nbytes, b.first, b.name)):
        busy = sorted((offset, offset + footprint(other.nbytes))
                      for offset, other in placed if other.overlaps(buffer))
        offset = _best_gap(busy, footprint(buffer.nbytes))
        placed.append((offset, buffer))
        offsets[buffer.name] = offset
    return offsets


def _best_gap(busy: list[tuple[int, int]], size: int) -> int:
    """The start of the smallest free gap of at least `size` bytes below or between the
    `busy` (start, end) ranges (sorted by start), else the end of the highest."""
    best, best_gap, cursor = None, None, 0
    for start, end in busy:
        gap = start - cursor
        if gap >= size and (best_gap is None or gap < best_gap):
            best, best_gap = cursor, gap
        cursor = max(cursor, end)
    return cursor if best is None else best


def arena_bytes(buffers, offsets: dict[str, int]) -> int:
    """The arena's size: the highest end of a placed buffer."""
    return max((offsets[b.name] + footprint(b.nbytes) for b in buffers), default=0)


def live_bytes(buffers, step: int) -> int:
    """Bytes of the buffers live at `step`."""
    return sum(b.nbytes for b in buffers if b.first <= step <= b.last)
