// The emulator's runtime (see emulator.h): the block scheduler, warp operations, WMMA products,
// the few CUDA runtime functions the sources call, the alignment-fault hook, and a Python module
// exposing errors, launch statistics and conv_kernel.cu's test hooks.
#include "emulator.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <csetjmp>
#include <cstdarg>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace emu {

Thread* current = nullptr;
uint3 block_idx;
dim3 block_dim, grid_dim;
int64_t conv_index32_limit = int64_t{1} << 31;  // conv_kernel.cu's defaults
int conv_force_tile = 0;
int64_t pool_index32_limit = int64_t{1} << 31;  // pool_kernel.cu's default

namespace {

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Exited };

// One 16-byte cp.async: its destination and the bytes it will write there.
struct AsyncCopy {
  unsigned char* dst;
  unsigned char bytes[16];
};
// A thread's copies in flight: those not yet committed, and the committed groups, oldest first.
struct AsyncCopies {
  std::vector<AsyncCopy> open;
  std::deque<std::vector<AsyncCopy>> groups;
  long commits = 0;
  size_t in_flight() const {
    size_t n = open.size();
    for (const auto& g : groups) n += g.size();
    return n;
  }
};

// A thread's fiber. Fibers are made once and reused by every block: fiber_main loops over
// "run the kernel body, exit". Switches use _setjmp/_longjmp (no signal-mask system calls);
// ucontext only enters a fresh fiber's stack. build.py compiles with -U_FORTIFY_SOURCE, whose
// longjmp check rejects jumps between stacks.
struct Fiber {
  Thread thread;
  State state = State::Exited;
  const char* file = nullptr;  // the barrier it waits at
  int line = 0;
  unsigned mask = 0;  // of the warp operation it waits at
  bool started = false;
  jmp_buf context;
  ucontext_t entry;
  char* stack = nullptr;
  AsyncCopies copies;  // reset for every block
};

constexpr size_t kStackBytes = 256 * 1024;

std::mutex launch_mutex;  // one launch at a time: blocks share the statics that stand for __shared__
std::vector<std::unique_ptr<Fiber>> fibers;
Fiber* running = nullptr;
jmp_buf scheduler;
void (*kernel_body)(void*) = nullptr;
void* kernel_params = nullptr;
unsigned block_threads = 0;
const char* kernel = "";
// The block's dynamic shared memory (its size: the launch's), 128-byte aligned like a GPU's.
std::vector<unsigned char> dynamic_shared_memory;
size_t dynamic_shared_offset = 0;

// Errors: the launch being aborted, the value cudaGetLastError() returns next (the first error
// since it was last called), and the messages of the errors no cudaGetLastError() has returned.
bool aborted = false;
cudaError_t last_error = cudaSuccess;
std::string last_message;
std::vector<std::string> unreported;
size_t last_error_entry = 0;  // last_error's message in `unreported`

std::map<std::string, long> launch_counts;
long blocks_run = 0, block_barriers = 0, warp_barriers = 0, mma_products = 0;

// Per warp: two exchange buffers, used alternately by successive exchanges (a lane can be at most
// one exchange ahead of the slowest lane of its warp, so the other buffer is never still in use).
struct ExchangeSlots {
  unsigned char value[2][32][8];
};
std::vector<ExchangeSlots> exchange_slots;

// The first lane to reach a warp's n-th mma_sync computes it; the others check their inputs
// against it and reuse the result (a 16x16x16 product per lane would dominate the run time).
struct Product {
  float a[16][16], b[16][16], c[16][16], d[16][16];
  unsigned uses;
};
std::map<std::pair<unsigned, long>, Product> products;

std::string where() {
  char buf[160];
  std::snprintf(buf, sizeof buf, " [block (%u,%u,%u), thread (%u,%u,%u)]", block_idx.x, block_idx.y, block_idx.z,
                current->idx.x, current->idx.y, current->idx.z);
  return buf;
}

void record_error(cudaError_t code, const std::string& message) {
  const std::string full = "CUDA emulator: " + message;
  if (last_error == cudaSuccess) {  // like CUDA, the first error sticks until it is read
    last_error = code;
    last_message = full;
    last_error_entry = unreported.size();
  }
  unreported.push_back(full);
  std::fprintf(stderr, "%s\n", full.c_str());
}

// Ends the running launch from the scheduler.
void abort_launch(const std::string& message) {
  record_error(cudaErrorLaunchFailure, message + " in " + kernel);
  aborted = true;
}

void park() {
  if (!_setjmp(running->context)) _longjmp(scheduler, 1);
}

void fiber_main() {
  for (;;) {
    kernel_body(kernel_params);
    if (const size_t n = running->copies.in_flight(); n != 0)
      fail("a thread exits with %zu cp.async copies in flight (never waited for)", n);
    running->state = State::Exited;
    park();
  }
}

// Runs fiber f until it parks, exits or fails. Its own frame holds the scheduler's jmp_buf.
[[gnu::noinline]] void resume(Fiber* f) {
  running = f;
  current = &f->thread;
  if (!_setjmp(scheduler)) {
    if (!f->started) {
      f->started = true;
      getcontext(&f->entry);
      f->entry.uc_stack.ss_sp = f->stack;
      f->entry.uc_stack.ss_size = kStackBytes;
      f->entry.uc_link = nullptr;
      makecontext(&f->entry, fiber_main, 0);
      setcontext(&f->entry);
    }
    _longjmp(f->context, 1);
  }
}

void make_fibers(unsigned n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (fibers.size() < n) {
    auto f = std::make_unique<Fiber>();
    // A guard page below each stack turns an overflow into a fault instead of corruption.
    void* mem = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
      std::perror("CUDA emulator: fiber stack");
      std::abort();
    }
    mprotect(mem, page, PROT_NONE);
    f->stack = static_cast<char*>(mem) + page;
    fibers.push_back(std::move(f));
  }
}

std::string site(const Fiber& f) { return std::string(f.file) + ":" + std::to_string(f.line); }
std::string thread_name(const Fiber& f) {
  return "(" + std::to_string(f.thread.idx.x) + "," + std::to_string(f.thread.idx.y) + "," +
         std::to_string(f.thread.idx.z) + ")";
}

// Releases every warp whose lanes all wait at the same warp operation. Returns whether any was
// released; aborts the launch when a warp can never complete its operation.
bool release_warps() {
  bool released = false;
  for (unsigned first = 0; first < block_threads; first += 32) {
    const unsigned lanes = std::min(32u, block_threads - first);
    Fiber* waiting = nullptr;
    for (unsigned l = 0; l < lanes && waiting == nullptr; ++l)
      if (fibers[first + l]->state == State::AtWarpBarrier) waiting = fibers[first + l].get();
    if (waiting == nullptr) continue;
    const unsigned warp = first / 32;
    for (unsigned l = 0; l < 32; ++l) {
      const bool named = (waiting->mask >> l) & 1u;
      if (l >= lanes) {
        if (named) {
          abort_launch("the warp operation at " + site(*waiting) + " names lane " + std::to_string(l) +
                       " in its mask, but warp " + std::to_string(warp) + " has " + std::to_string(lanes) + " threads");
          return false;
        }
        continue;
      }
      const Fiber& f = *fibers[first + l];
      if (f.state == State::AtWarpBarrier && (f.mask != waiting->mask || f.file != waiting->file || f.line != waiting->line)) {
        abort_launch("lanes of warp " + std::to_string(warp) + " wait at different warp operations: " + site(*waiting) +
                     " and " + site(f));
        return false;
      }
      if (named && f.state == State::Exited) {
        abort_launch("lane " + std::to_string(l) + " of warp " + std::to_string(warp) +
                     " exited before the warp operation at " + site(*waiting) + " that names it in its mask");
        return false;
      }
      if (named && f.state == State::AtBlockBarrier) {
        abort_launch("lane " + std::to_string(l) + " of warp " + std::to_string(warp) + " waits at __syncthreads() " +
                     site(f) + " while its warp waits at " + site(*waiting));
        return false;
      }
    }
    for (unsigned l = 0; l < lanes; ++l)
      if (fibers[first + l]->state == State::AtWarpBarrier) fibers[first + l]->state = State::Runnable;
    ++warp_barriers;
    released = true;
  }
  return released;
}

// Runs one block to completion. Returns false when the launch was aborted.
bool run_block() {
  products.clear();
  for (unsigned i = 0; i < block_threads; ++i) {
    Fiber& f = *fibers[i];
    f.state = State::Runnable;
    f.thread = Thread{uint3{i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)},
                      i / 32, i % 32, 0, 0};
  }
  ++blocks_run;
  std::fill(dynamic_shared_memory.begin(), dynamic_shared_memory.end(), 0xff);
  for (unsigned i = 0; i < block_threads; ++i) fibers[i]->copies = AsyncCopies{};
  for (long pass = 0;; ++pass) {
    const bool descending = pass % 2 == 1;
    for (unsigned i = 0; i < block_threads; ++i) {
      Fiber* f = fibers[descending ? block_threads - 1 - i : i].get();
      if (f->state != State::Runnable) continue;
      resume(f);
      if (aborted) return false;
    }
    current = nullptr;
    if (release_warps()) continue;
    if (aborted) return false;
    // Nothing runnable and no warp operation pending: a block barrier, or the end of the block.
    const Fiber* waiting = nullptr;
    const Fiber* exited = nullptr;
    unsigned n_waiting = 0;
    for (unsigned i = 0; i < block_threads; ++i) {
      const Fiber& f = *fibers[i];
      if (f.state == State::AtBlockBarrier) {
        if (waiting != nullptr && (f.file != waiting->file || f.line != waiting->line)) {
          abort_launch("threads of a block wait at different __syncthreads(): " + site(*waiting) + " (thread " +
                       thread_name(*waiting) + ") and " + site(f) + " (thread " + thread_name(f) + ")");
          return false;
        }
        waiting = &f;
        ++n_waiting;
      } else {
        exited = &f;
      }
    }
    if (waiting == nullptr) return true;
    if (exited != nullptr) {
      abort_launch("__syncthreads() at " + site(*waiting) + " reached by " + std::to_string(n_waiting) + " of the " +
                   std::to_string(block_threads) + " threads of block (" + std::to_string(block_idx.x) + "," +
                   std::to_string(block_idx.y) + "," + std::to_string(block_idx.z) + "); the others exited (e.g. " +
                   thread_name(*exited) + ")");
      return false;
    }
    for (unsigned i = 0; i < block_threads; ++i) fibers[i]->state = State::Runnable;
    ++block_barriers;
  }
}

// "KERNEL launched by FUNCTION", FUNCTION read off launch()'s "[with Kernel = FUNCTION::<lambda...".
std::string launch_name(const char* kernel, const char* launcher) {
  std::string s = launcher;
  const size_t from = s.find("Kernel = "), to = s.find("::<lambda");
  if (from == std::string::npos || to == std::string::npos || to < from) return kernel;
  return std::string(kernel) + " launched by " + s.substr(from + 9, to - from - 9);
}

}  // namespace

void fail(const char* fmt, ...) {
  char buf[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  if (running == nullptr || current == nullptr) {  // host code: recorded, execution goes on
    record_error(cudaErrorLaunchFailure, buf);
    return;
  }
  abort_launch(buf + where());
  _longjmp(scheduler, 1);  // abandons this fiber; run_grid restarts every fiber next launch
}

void async_copy16(void* dst, const void* src, bool valid) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0))
    fail("a cp.async from %p to %p: both addresses must be 16-byte aligned", src, dst);
  AsyncCopy copy{static_cast<unsigned char*>(dst), {}};
  if (valid) std::memcpy(copy.bytes, src, 16);
  AsyncCopies& copies = running->copies;
  if (copies.commits % 2 == 1) {
    std::memcpy(copy.dst, copy.bytes, 16);
  } else {
    copies.open.push_back(copy);
  }
}

void async_commit() {
  AsyncCopies& copies = running->copies;
  copies.groups.push_back(std::move(copies.open));
  copies.open.clear();
  ++copies.commits;
}

void async_wait(int pending) {
  AsyncCopies& copies = running->copies;
  while (copies.groups.size() > static_cast<size_t>(pending)) {
    for (const AsyncCopy& c : copies.groups.front()) std::memcpy(c.dst, c.bytes, 16);
    copies.groups.pop_front();
  }
}

void* dynamic_shared() {
  if (dynamic_shared_memory.empty()) fail("extern __shared__ memory used by a launch that asked for none");
  return dynamic_shared_memory.data() + dynamic_shared_offset;
}

void sync_block(const char* file, int line) {
  Fiber* f = running;
  f->state = State::AtBlockBarrier;
  f->file = file;
  f->line = line;
  park();
}

void sync_warp(unsigned mask, const char* file, int line) {
  Fiber* f = running;
  if (!((mask >> f->thread.lane) & 1u)) fail("a warp operation at %s:%d with mask 0x%08x excludes its own lane", file, line, mask);
  f->state = State::AtWarpBarrier;
  f->file = file;
  f->line = line;
  f->mask = mask;
  park();
}

const void* warp_exchange(unsigned mask, int src, const void* value, size_t size, const char* file, int line) {
  Thread& t = running->thread;
  auto& slots = exchange_slots[t.warp].value[t.exchanges % 2];
  std::memcpy(slots[t.lane], value, size);
  sync_warp(mask, file, line);
  if (!((mask >> src) & 1u)) fail("a shuffle at %s:%d reads lane %d, outside its mask 0x%08x", file, line, src, mask);
  ++t.exchanges;
  return slots[src];
}

void run_grid(const LaunchConfig& cfg, const char* kernel_text, const char* launcher, void (*body)(void*),
              void* params) {
  const std::lock_guard<std::mutex> lock(launch_mutex);
  const std::string kernel_str = launch_name(kernel_text, launcher);
  ++launch_counts[kernel_str];
  const dim3 g = cfg.grid, b = cfg.block;
  const uint64_t threads = uint64_t{b.x} * b.y * b.z;
  char config[200];
  std::snprintf(config, sizeof config, "grid (%u,%u,%u), block (%u,%u,%u)", g.x, g.y, g.z, b.x, b.y, b.z);
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0 || threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64 ||
      g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) {
    record_error(cudaErrorInvalidConfiguration,
                 std::string("invalid launch configuration ") + config + " for " + kernel_str);
    return;
  }
  if (cfg.shared_bytes > kMaxDynamicSharedBytes) {
    record_error(cudaErrorInvalidValue, "a launch asks for " + std::to_string(cfg.shared_bytes) +
                                            " bytes of dynamic shared memory, past the device's " +
                                            std::to_string(kMaxDynamicSharedBytes) + " (" + kernel_str + ")");
    return;
  }
  dynamic_shared_memory.assign(cfg.shared_bytes == 0 ? 0 : cfg.shared_bytes + 128, 0);  // run_block poisons it
  dynamic_shared_offset = (128 - reinterpret_cast<uintptr_t>(dynamic_shared_memory.data()) % 128) % 128;
  make_fibers(static_cast<unsigned>(threads));
  exchange_slots.resize((threads + 31) / 32);
  kernel = kernel_str.c_str();
  kernel_body = body;
  kernel_params = params;
  block_threads = static_cast<unsigned>(threads);
  grid_dim = g;
  block_dim = b;
  for (unsigned z = 0; z < g.z && !aborted; ++z)
    for (unsigned y = 0; y < g.y && !aborted; ++y)
      for (unsigned x = 0; x < g.x && !aborted; ++x) {
        block_idx = uint3{x, y, z};
        run_block();
      }
  if (aborted) {  // fibers abandoned mid-kernel start afresh
    for (auto& f : fibers) f->started = false;
    aborted = false;
  }
  running = nullptr;
  current = nullptr;
  kernel = "";
}

}  // namespace emu

namespace nvcuda::wmma::detail {

void check_matrix_pointer(const void* p, unsigned ldm, size_t element_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * element_bytes) % 16 != 0)
    emu::fail("%s: pointer %p with ldm %u (%zu-byte elements); WMMA needs a 32-byte aligned pointer and ldm a "
              "multiple of 16 bytes",
              what, p, ldm, element_bytes);
}

void mma(float (&d)[16][16], const float (&a)[16][16], const float (&b)[16][16], const float (&c)[16][16]) {
  using emu::products;
  emu::Thread& t = *emu::current;
  const unsigned lanes = std::min(32u, emu::block_threads - 32 * t.warp);
  const std::pair<unsigned, long> key{t.warp, t.mma_calls++};
  auto it = products.find(key);
  if (it == products.end()) {
    emu::Product& p = products[key];
    std::memcpy(p.a, a, sizeof a);
    std::memcpy(p.b, b, sizeof b);
    std::memcpy(p.c, c, sizeof c);
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) {
        float s = c[i][j];
        for (int k = 0; k < 16; ++k) s += a[i][k] * b[k][j];
        p.d[i][j] = s;
      }
    p.uses = 0;
    it = products.find(key);
    ++emu::mma_products;
  } else if (std::memcmp(it->second.a, a, sizeof a) != 0 || std::memcmp(it->second.b, b, sizeof b) != 0 ||
             std::memcmp(it->second.c, c, sizeof c) != 0) {
    emu::fail("lanes of warp %u passed different fragments to mma_sync call %ld (their loads saw different "
              "shared memory: a missing barrier?)",
              t.warp, key.second);
  }
  std::memcpy(d, it->second.d, sizeof d);
  if (++it->second.uses == lanes) products.erase(it);
}

}  // namespace nvcuda::wmma::detail

// ---- the CUDA runtime functions the sources call ---------------------------------------------

cudaError_t CUDARTAPI cudaGetLastError(void) {
  const cudaError_t e = emu::last_error;
  if (e != cudaSuccess) emu::unreported.erase(emu::unreported.begin() + static_cast<long>(emu::last_error_entry));
  emu::last_error = cudaSuccess;
  return e;
}

// One device, device 0.
cudaError_t CUDARTAPI cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

// Checks the value of the one attribute the sources set; the grant itself is not tied to later
// launches (see kMaxDynamicSharedBytes).
cudaError_t CUDARTAPI cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr || attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > emu::kMaxDynamicSharedBytes) {
    emu::fail("cudaFuncSetAttribute(%p, %d, %d): the emulator knows MaxDynamicSharedMemorySize up to %zu bytes", func,
              static_cast<int>(attr), value, emu::kMaxDynamicSharedBytes);
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

const char* CUDARTAPI cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    default: break;
  }
  if (!emu::last_message.empty()) return emu::last_message.c_str();
  return error == cudaErrorInvalidConfiguration ? "invalid configuration argument" : "unspecified launch failure";
}

// ---- misaligned accesses -----------------------------------------------------------------------
// build.py compiles with -fsanitize=alignment -fsanitize-recover=alignment and links no sanitizer
// runtime: g++ then calls this handler, UBSan's documented ABI, for every misaligned typed access
// (a 16-byte uint4 or Pack<T, V> load from an address that is not a multiple of 16, say), and
// the emulator turns it into a launch failure naming the source line.
namespace {
struct SourceLocation {
  const char* file;
  uint32_t line, column;
};
struct TypeDescriptor {
  uint16_t kind, info;
  char name[1];
};
struct TypeMismatchData {
  SourceLocation location;
  const TypeDescriptor* type;
  unsigned char log_alignment;
  unsigned char check_kind;
};
}  // namespace

extern "C" void __ubsan_handle_type_mismatch_v1(TypeMismatchData* data, uintptr_t pointer) {
  static const char* const kinds[] = {"load of", "store to", "reference to", "member access within",
                                      "member call on"};
  emu::fail("misaligned %s %s at %p (it needs %u-byte alignment), %s:%u",
            data->check_kind < 5 ? kinds[data->check_kind] : "access to", data->type->name,
            reinterpret_cast<void*>(pointer), 1u << data->log_alignment, data->location.file, data->location.line);
}

// ---- Python --------------------------------------------------------------------------------------

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CUDA kernels on the host (tests/cuda_emulator): errors, statistics, test hooks.";
  m.def("take_unreported_errors", [] {
    std::vector<std::string> out;
    out.swap(emu::unreported);
    emu::last_error = cudaSuccess;
    emu::last_message.clear();
    return out;
  }, "The errors recorded since the last call that no cudaGetLastError() returned to the host code; clears them.");
  m.def("launches", [] { return emu::launch_counts; }, "Launches so far per kernel (with template arguments).");
  m.def("stats", [] {
    return std::map<std::string, long>{{"blocks", emu::blocks_run},
                                       {"block_barriers", emu::block_barriers},
                                       {"warp_barriers", emu::warp_barriers},
                                       {"mma_products", emu::mma_products}};
  });
  m.def("reset_stats", [] {
    emu::launch_counts.clear();
    emu::blocks_run = emu::block_barriers = emu::warp_barriers = emu::mma_products = 0;
  });
  m.def("set_conv_test_hooks", [](int64_t index32_limit, int force_tile) {
    emu::conv_index32_limit = index32_limit;
    emu::conv_force_tile = force_tile;
  }, pybind11::arg("index32_limit") = int64_t{1} << 31, pybind11::arg("force_tile") = 0,
     "conv_kernel.cu's CNNK_CONV_INDEX32_LIMIT and CNNK_CONV_FORCE_TILE (0: by size, 1: large, 2: small, "
     "3: narrow).");
  m.def("set_pool_test_hooks", [](int64_t index32_limit) { emu::pool_index32_limit = index32_limit; },
        pybind11::arg("index32_limit") = int64_t{1} << 31, "pool_kernel.cu's CNNK_POOL_INDEX32_LIMIT.");
}
