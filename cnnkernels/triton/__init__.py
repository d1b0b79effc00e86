"""Triton kernels, one module per operator family.

Import this package only when triton is importable (cnnkernels.ops checks). With
TRITON_INTERPRET=1 set before triton is first imported, the kernels run on CPU tensors in
Triton's interpreter, with a fixed configuration instead of autotuning.
"""
