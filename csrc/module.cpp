// The Python module cnnkernels._C. Importing it loads this shared library, which runs the
// TORCH_LIBRARY registrations; the module itself only reports how the library was built.
#include <Python.h>

#ifndef CNNKERNELS_CUDA_ARCHS
#define CNNKERNELS_CUDA_ARCHS ""
#endif

static struct PyModuleDef cnnkernels_module = {
    PyModuleDef_HEAD_INIT, "_C", "cnnkernels compiled operators (build information only).", -1,
    nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&cnnkernels_module);
  if (m == nullptr) return nullptr;
#ifdef CNNKERNELS_WITH_CUDA
  const int with_cuda = 1;
#else
  const int with_cuda = 0;
#endif
  // The CPU kernels are compiled with the same flags as this file. Without OpenMP,
  // at::parallel_for (a header template) compiles to a serial loop and every CPU kernel runs on
  // one thread whatever torch.get_num_threads() says.
#ifdef _OPENMP
  const int cpu_parallel = 1;
#else
  const int cpu_parallel = 0;
#endif
  if (PyModule_AddObject(m, "with_cuda", PyBool_FromLong(with_cuda)) < 0 ||
      PyModule_AddObject(m, "cpu_parallel", PyBool_FromLong(cpu_parallel)) < 0 ||
      PyModule_AddStringConstant(m, "cuda_archs", CNNKERNELS_CUDA_ARCHS) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
