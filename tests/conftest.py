import os

# Every buffer the C++ operators allocate starts as NaN during the tests (csrc/host/alloc.h),
# so a kernel that reads an element it never wrote cannot pass by luck.
os.environ["CNNKERNELS_POISON_ALLOCATIONS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


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
