"""conv2d on a CUDA GPU (marker `cuda`; skipped where no GPU is present), beyond the shared
argument grid of test_conv.py (which runs on the GPU targets too): network-sized layers in
half precision, the bias reduction, 64-bit indexing, device handling."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import cnnkernels
import cnnkernels.functional as F
from cnnkernels.ops import conv as conv_ops

pytestmark = pytest.mark.cuda

GPU_BACKENDS = [b for b in ("cuda", "triton") if b in conv_ops.IMPLEMENTED]


@pytest.fixture(autouse=True)
def _exact_fp32():
    # Compare fp32 without TF32 on either side (our triton backend follows cudnn.allow_tf32).
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_extension_has_its_cuda_kernels():
    assert cnnkernels.build_info()["cuda"], "cnnkernels._C was built without CUDA on a machine with a GPU"
    assert "cuda" in GPU_BACKENDS


# (N, C, H, W, K, kernel, stride, padding[, groups]): ResNet-50, VGG-16 and MobileNet layers at
# small batch. The stem's 3 channels and the depthwise layer's 1 per group take the narrow tiles
# and backward-weight's (channel, tap) columns.
NETWORK_LAYERS = {
    "resnet-stem-7x7/2": (4, 3, 224, 224, 64, 7, 2, 3),
    "resnet-1x1-reduce": (4, 256, 56, 56, 64, 1, 1, 0),
    "resnet-3x3": (4, 128, 28, 28, 128, 3, 1, 1),
    "resnet-3x3/2": (4, 256, 28, 28, 256, 3, 2, 1),
    "resnet-1x1/2-projection": (4, 1024, 14, 14, 2048, 1, 2, 0),
    "vgg-conv1_2": (2, 64, 224, 224, 64, 3, 1, 1),
    "vgg-conv5_3": (4, 512, 14, 14, 512, 3, 1, 1),
    "mobilenet-depthwise-3x3/2": (4, 256, 28, 28, 256, 3, 2, 1, 256),
}


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("layer", list(NETWORK_LAYERS))
def test_network_layers(layer, dtype, backend):
    n, c, h, w, k, r, s, p, *groups = NETWORK_LAYERS[layer]
    groups = groups[0] if groups else 1
    fmt = torch.contiguous_format if dtype == torch.float32 else torch.channels_last
    x = torch.randn(n, c, h, w, device="cuda", dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    cg = c // groups
    wt = (torch.randn(k, cg, r, r, device="cuda", dtype=dtype) / (cg * r * r) ** 0.5).requires_grad_()
    b = torch.randn(k, device="cuda", dtype=dtype).requires_grad_()
    out = F.conv2d(x, wt, b, stride=s, padding=p, groups=groups, backend=backend)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, wt, b), g)
    # Reference: torch in fp32 on the same rounded inputs.
    xr, wr, br = (t.detach().float().requires_grad_() for t in (x, wt, b))
    ref = TF.conv2d(xr, wr, br, stride=s, padding=p, groups=groups)
    ref_grads = torch.autograd.grad(ref, (xr, wr, br), g.float())
    assert out.is_contiguous(memory_format=fmt)
    rel = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}[dtype]
    for ours, theirs in zip((out, *grads), (ref, *ref_grads)):
        scale = theirs.abs().max().item() + 1e-6
        err = (ours.float() - theirs).abs().max().item()
        assert err <= rel * scale, (err, scale)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_weight_and_bias_gradients_are_deterministic(backend):
    ops = conv_ops.BACKEND_OPS[backend]
    x = torch.randn(32, 64, 28, 28, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    g = torch.randn(32, 64, 28, 28, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    conv = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    first = ops.backward_weight(g, x, [64, 64, 3, 3], *conv), ops.backward_bias(g)
    for _ in range(3):
        assert torch.equal(ops.backward_weight(g, x, [64, 64, 3, 3], *conv), first[0])
        assert torch.equal(ops.backward_bias(g), first[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (32, 256, 14, 14), (3, 1, 1, 1), (1, 70, 3, 1)])
def test_backward_bias_cuda_matches_torch(shape, channels_last, dtype):
    g = torch.randn(shape, device="cuda", dtype=dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    out = torch.ops.cnnkernels.conv2d_backward_bias(g)
    ref = g.double().sum(dim=(0, 2, 3))
    assert out.dtype == dtype
    tol = {torch.float64: 1e-10, torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * max(1.0, shape[0] * shape[2] * shape[3] / 100))


def test_backward_bias_cuda_handles_expanded_gradients():
    ones = torch.ones(1, device="cuda").expand(4, 8, 5, 5)
    torch.testing.assert_close(torch.ops.cnnkernels.conv2d_backward_bias(ones), torch.full((8,), 100.0, device="cuda"))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_more_than_2_pow_31_elements(backend):
    # 46341^2 > 2^31: pixel indices and offsets must be 64-bit.
    side = 46341
    x = torch.randn(1, 1, side, side, device="cuda", dtype=torch.float16)
    w = torch.randn(1, 1, 3, 3, device="cuda", dtype=torch.float16)
    ops = conv_ops.BACKEND_OPS[backend]
    conv = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    out = ops.forward(x, w, None, *conv)
    ref = TF.conv2d(x, w, padding=1)
    # The end of the tensor is where 32-bit offsets would have wrapped.
    torch.testing.assert_close(out[..., -64:, :], ref[..., -64:, :], rtol=1e-2, atol=1e-2)
    del ref
    dx = ops.backward_input(out, w, list(x.shape), *conv)
    ref_dx = torch.ops.aten.convolution_backward(out, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                 [True, False, False])[0]
    torch.testing.assert_close(dx[..., -64:, :], ref_dx[..., -64:, :], rtol=2e-2, atol=2e-2)


def test_cpu_backend_refuses_cuda_tensors():
    x = torch.randn(1, 2, 5, 5, device="cuda")
    w = torch.randn(3, 2, 3, 3, device="cuda")
    with pytest.raises(cnnkernels.BackendError, match="cpu backend runs on CPU tensors"):
        F.conv2d(x, w, backend="cpu")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_runs_on_the_tensors_device_and_current_stream(backend):
    x = torch.randn(2, 8, 16, 16, device="cuda")
    w = torch.randn(8, 8, 3, 3, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = F.conv2d(x, w, padding=1, backend=backend)
    stream.synchronize()
    torch.testing.assert_close(out, TF.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
