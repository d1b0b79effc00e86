import os

# Every buffer the C++ operators allocate starts as NaN during the tests (csrc/host/alloc.h),
# so a kernel that reads an element it never wrote cannot pass by luck.
os.environ["CNNKERNELS_POISON_ALLOCATIONS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. This must be set
# before triton is first imported (cnnkernels imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU the Triton launchers would autotune every new shape of the grid; the tests run each
# configuration explicitly instead (test_conv_triton.py), and one test switches tuning back on.
os.environ.setdefault("CNNKERNELS_TRITON_AUTOTUNE", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
