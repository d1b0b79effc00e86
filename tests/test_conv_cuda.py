"""conv2d operators on a CUDA GPU (marker `cuda`; skipped where no GPU is present)."""
from __future__ import annotations

import pytest
import torch

import cnnkernels

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (32, 256, 14, 14), (3, 1, 1, 1), (1, 70, 3, 1)])
def test_backward_bias_cuda_matches_torch(shape, channels_last, dtype):
    if not cnnkernels.build_info()["cuda"]:
        pytest.fail("cnnkernels._C was built without CUDA on a machine with a GPU")
    g = torch.randn(shape, device="cuda", dtype=dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    out = torch.ops.cnnkernels.conv2d_backward_bias(g)
    ref = g.double().sum(dim=(0, 2, 3))
    assert out.dtype == dtype
    tol = {torch.float64: 1e-10, torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * max(1.0, shape[0] * shape[2] * shape[3] / 100))


def test_backward_bias_cuda_is_deterministic_and_handles_expanded_gradients():
    g = torch.randn(64, 128, 28, 28, device="cuda")
    first = torch.ops.cnnkernels.conv2d_backward_bias(g)
    for _ in range(3):
        assert torch.equal(torch.ops.cnnkernels.conv2d_backward_bias(g), first)
    ones = torch.ones(1, device="cuda").expand(4, 8, 5, 5)
    torch.testing.assert_close(torch.ops.cnnkernels.conv2d_backward_bias(ones), torch.full((8,), 100.0, device="cuda"))


def test_backward_bias_cuda_opcheck():
    g = torch.randn(2, 6, 5, 7, device="cuda")
    torch.library.opcheck(torch.ops.cnnkernels.conv2d_backward_bias.default, (g,))


def test_conv2d_on_cuda_tensors_has_no_silent_fallback():
    x = torch.randn(1, 2, 5, 5, device="cuda")
    w = torch.randn(3, 2, 3, 3, device="cuda")
    with pytest.raises(cnnkernels.BackendError):
        cnnkernels.functional.conv2d(x, w)
