"""cnnkernels._layout.is_channels_last against torch's own rule, over many stride patterns."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch._prims_common import suggest_memory_format

from cnnkernels._layout import is_channels_last


def _torch_says_channels_last(t: torch.Tensor) -> bool:
    return suggest_memory_format(t) == torch.channels_last


def _views(size):
    """Tensors of `size` in the layouts the operators meet: contiguous, channels_last, every
    permutation of the dimensions, sliced, and expanded (stride 0) views."""
    bases = [torch.empty(size)]
    if len(size) == 4:
        bases.append(bases[0].contiguous(memory_format=torch.channels_last))
    for perm in itertools.permutations(range(len(size))):
        # A tensor laid out in order `perm`, viewed back in the order of `size`.
        yield torch.empty([size[p] for p in perm]).permute([perm.index(d) for d in range(len(size))])
    for base in bases:
        yield base
        for d in range(len(size)):
            yield base.narrow(d, 0, (size[d] + 1) // 2)
            yield base[(slice(None),) * d + (slice(None, None, 2),)]
            if size[d] == 1:
                yield base.expand(*size[:d], 3, *size[d + 1:])


def _cases():
    for size in itertools.product([0, 1, 2, 3], repeat=4):
        yield from _views(size)
    for size in [(2, 3, 4), (1, 3, 1), (2, 3, 4, 5, 6), (2, 1, 1, 1, 3), (4, 3, 8, 8), (8, 64, 7, 7)]:
        yield from _views(size)
    # Arbitrary strides, overlapping ones included.
    rng = random.Random(0)
    for _ in range(3000):
        size = [rng.choice([0, 1, 1, 2, 3, 4]) for _ in range(4)]
        stride = [rng.choice([0, 1, 2, 3, 4, 6, 8, 12, 24, 48]) for _ in range(4)]
        yield torch.empty_strided(size, stride)


def test_is_channels_last_is_torchs_rule():
    verdicts = []
    for t in _cases():
        expected = _torch_says_channels_last(t)
        assert is_channels_last(t) == expected, f"size {list(t.shape)}, strides {t.stride()}: torch says {expected}"
        verdicts.append(expected)
    # The cases cover both answers, many times each.
    assert 100 < sum(verdicts) < len(verdicts) - 100


@pytest.mark.parametrize("size, stride, expected", [
    ([2, 3, 4, 5], [60, 20, 5, 1], False),   # contiguous
    ([2, 3, 4, 5], [60, 1, 15, 3], True),    # channels_last
    ([2, 1, 1, 1], [1, 1, 1, 1], False),     # N111 contiguous: ambiguous, NCHW
    ([2, 1, 1, 1], [5, 5, 5, 5], False),     # N11W contiguous sliced on W: ambiguous, NCHW
    ([2, 1, 4, 1], [4, 1, 1, 1], True),      # N1H1 with channels_last strides
    ([2, 1, 4, 1], [4, 4, 1, 1], False),     # N1H1 with contiguous strides
    ([1, 3, 1, 5], [15, 5, 5, 1], False),    # 1C1W contiguous
    ([1, 5, 1, 3], [15, 1, 5, 5], False),    # its transpose(1, 3)
    ([2, 3, 4, 5], [60, 0, 5, 1], False),    # a stride-0 channel dimension
    ([2, 3, 0, 5], [15, 1, 15, 3], False),   # an empty tensor
])
def test_is_channels_last_on_the_cases_c10_names(size, stride, expected):
    """The ambiguous cases c10's is_channels_last_strides_2d_s4 comments on (c10/core/MemoryFormat.h)."""
    t = torch.empty_strided(size, stride)
    assert is_channels_last(t) == expected == _torch_says_channels_last(t)
