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
# torch's convolutions (and our Triton kernels, which follow the same switch) run fp32 through
# TF32 tensor cores by default; the tests compare fp32 against torch's CPU result at fp32
# tolerances, so they turn TF32 off. test_conv_triton.py checks the TF32 path on its own.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def pytest_runtest_logreport(report):
    """With CNNKERNELS_FAILURE_LOG set, each failure's traceback is appended to that file as it
    happens (scripts/gpu_check.sh sets it): a run stopped by a time limit keeps the tracebacks
    that pytest prints only at the end. Under pytest-xdist the controller writes (it receives
    every worker's reports, and one for a worker that crashed)."""
    path = os.environ.get("CNNKERNELS_FAILURE_LOG")
    if not path or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")


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
