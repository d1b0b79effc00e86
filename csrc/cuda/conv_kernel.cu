// conv2d CUDA kernels. Includes no torch header (see conv_kernel.h).
//
// The three convolutions are implicit GEMMs: a tile kernel multiplies a rows x depth operand A
// by a depth x cols operand B, and a "problem" object says what A, B and C are in terms of the
// tensors, so that nothing is ever materialised (no im2col, no zero-inserted gradient):
//   forward          A = input patches (pixels x (r, s, c)), B = weight, C = output
//   backward-input   per stride phase: A = grad_output at the phase's useful taps
//                    (pixels x (tap, k)), B = weight (channels swapped), C = grad_input
//   backward-weight  per tap and reduction chunk: A = grad_output^T (k x pixels),
//                    B = input at the tap (pixels x c), C = a partial weight gradient; with
//                    few channels per group, per group: B = input (pixels x (c, tap))
//
// Index math is hoisted out of the element loads. Every operand element is
//     ptr[row.off + k.off], read when 0 <= row.h + k.h < h_ext and 0 <= row.w + k.w < w_ext
// (zero otherwise), where `row` describes a tile row (B is handled as its transpose, cols x
// depth, so its "rows" are the GEMM columns) and `k` a reduction index. A block decomposes its
// tile's rows once (image, window origin, phase pixel...) and each depth slice's reduction
// indices once (tap, channel...), into shared memory; the loads are then an add and two
// unsigned compares. Offsets are 32-bit when the host proves every offset and coordinate fits
// (IndexBounds below) and 64-bit otherwise.
//
// Loads run in one of two directions: along k (consecutive threads take consecutive reduction
// indices) or along the rows. Each operand has a vector mode, 16 bytes per load, for the
// direction that is unit-stride in channels_last (host-checked: unit stride, extent and the
// other strides of dimensions longer than 1 multiples of the vector, 16-byte aligned base), and
// a scalar mode in the direction that coalesces for NCHW. (An NCHW operand whose channels per
// group fill whole runs arrives as a channels_last copy the host made, so the scalar mode is
// left to other channel counts, unaligned or odd views and fp64.) The depth loop is pipelined through
// shared-memory stages: on tensor cores with 16-byte loads for both operands, cp.async keeps the
// next three slices in flight while one is multiplied (four stages); otherwise the next slice
// waits in registers while the current one is multiplied (two stages).
//
// Two tile engines: SIMT in the accumulator type for fp32/fp64, and tensor cores (WMMA, fp32
// accumulate) for fp16/bf16; each has a large tile and a small one the host picks for
// problems too small to fill the GPU with large tiles, and WMMA a narrow one for few columns.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "cnnkernels/async_copy.cuh"
#include "cnnkernels/common.h"
#include "cnnkernels/conv.h"
#include "cnnkernels/cuda_types.cuh"
#include "conv_kernel.h"

// Test hooks: the host-emulator builds lower the 32-bit limit and pin the tile size to reach
// every path on small problems. The defaults are what ships.
#ifndef CNNK_CONV_INDEX32_LIMIT
#define CNNK_CONV_INDEX32_LIMIT (int64_t{1} << 31)
#endif
#ifndef CNNK_CONV_FORCE_TILE  // 0: by problem size, 1: large, 2: small, 3: narrow
#define CNNK_CONV_FORCE_TILE 0
#endif

namespace cnnkernels {
namespace {

// ---- descriptors ---------------------------------------------------------------------------

template <typename Index>
struct Desc {
  Index off, h, w;
};

// Rows past the end of the tile's operand and reduction indices past the depth carry an h that
// no valid partner can bring into [0, h_ext): the host keeps real coordinates below 2^28 in
// magnitude (2^60 for 64-bit), so row sentinel + real, real + depth sentinel and the sum of
// both all land at or above 2^29 when read as unsigned.
template <typename Index>
struct Sentinel {
  using U = std::make_unsigned_t<Index>;
  static constexpr Index kRow = static_cast<Index>(U{1} << (8 * sizeof(Index) - 1));
  static constexpr Index kDepth = static_cast<Index>(U{1} << (8 * sizeof(Index) - 2));
};

template <typename Index>
__device__ __forceinline__ bool in_bounds(const Desc<Index>& row, const Desc<Index>& k, Index h_ext, Index w_ext) {
  using U = std::make_unsigned_t<Index>;
  return U(row.h) + U(k.h) < U(h_ext) && U(row.w) + U(k.w) < U(w_ext);
}

template <typename T, typename Index>
struct Operand {
  const T* ptr;
  Index h_ext, w_ext;  // 1, 1 for operands without spatial bounds (weight, grad_output rows)
};

// The direction in which one thread's vector and consecutive threads run.
enum class Run { K, Rows };

// ---- the three problems --------------------------------------------------------------------
// Each provides rows(), cols(), depth() for the instance chosen by select(); for A and B the
// operand (pointer, bounds) and the row and reduction descriptors; for C the offset of a row's
// column 0, the column stride and finish() (bias). Run directions: vector mode / scalar mode.

template <typename T, typename IndexT>
struct ForwardProblem {
  using Elem = T;
  using Index = IndexT;
  using Out = T;
  static constexpr Run kAVecRun = Run::K, kAScalarRun = Run::Rows;  // channels_last / NCHW pixels
  static constexpr Run kBVecRun = Run::K, kBScalarRun = Run::K;     // weight (k, r, s, c) / (r, s) innermost
  Conv2dParams p;
  Conv2dTensors t;
  Index g = 0;

  template <typename X>
  __device__ static Index I(X v) {
    return static_cast<Index>(v);
  }
  __device__ void select(int64_t instance, int64_t) { g = I(instance); }
  __device__ Index rows() const { return I(p.batch) * I(p.out_h) * I(p.out_w); }
  __device__ Index cols() const { return I(p.out_per_group()); }
  __device__ Index depth() const { return I(p.kernel_h) * I(p.kernel_w) * I(p.in_per_group()); }

  __device__ Operand<T, Index> a() const { return {static_cast<const T*>(t.input), I(p.in_h), I(p.in_w)}; }
  // Row m = (n, oh, ow): the window's top-left input coordinate.
  __device__ Desc<Index> a_row(Index m) const {
    const int64_t* st = t.input_stride;
    const Index ow = m % I(p.out_w), oh = (m / I(p.out_w)) % I(p.out_h), n = m / (I(p.out_w) * I(p.out_h));
    const Index h = oh * I(p.stride_h) - I(p.pad_top), w = ow * I(p.stride_w) - I(p.pad_left);
    return {n * I(st[0]) + g * I(p.in_per_group()) * I(st[1]) + h * I(st[2]) + w * I(st[3]), h, w};
  }
  // Reduction index k = (r*S + s)*Cg + c: channels innermost, so channels_last loads coalesce.
  __device__ Desc<Index> a_k(Index k) const {
    const int64_t* st = t.input_stride;
    const Index c = k % I(p.in_per_group()), rs = k / I(p.in_per_group());
    const Index dh = (rs / I(p.kernel_w)) * I(p.dilation_h), dw = (rs % I(p.kernel_w)) * I(p.dilation_w);
    return {c * I(st[1]) + dh * I(st[2]) + dw * I(st[3]), dh, dw};
  }
  __device__ Operand<T, Index> b() const { return {static_cast<const T*>(t.weight), 1, 1}; }
  __device__ Desc<Index> b_row(Index n) const {
    return {(g * I(p.out_per_group()) + n) * I(t.weight_stride[0]), 0, 0};
  }
  __device__ Desc<Index> b_k(Index k) const {
    const int64_t* st = t.weight_stride;
    const Index c = k % I(p.in_per_group()), rs = k / I(p.in_per_group());
    return {c * I(st[1]) + (rs / I(p.kernel_w)) * I(st[2]) + (rs % I(p.kernel_w)) * I(st[3]), 0, 0};
  }
  __device__ Out* out() const { return static_cast<T*>(t.output); }
  __device__ Index out_row(Index m) const {
    const int64_t* st = t.output_stride;
    const Index ow = m % I(p.out_w), oh = (m / I(p.out_w)) % I(p.out_h), n = m / (I(p.out_w) * I(p.out_h));
    return n * I(st[0]) + g * I(p.out_per_group()) * I(st[1]) + oh * I(st[2]) + ow * I(st[3]);
  }
  __device__ Index out_col_stride() const { return I(t.output_stride[1]); }
  __device__ acc_t<T> finish(Index n, acc_t<T> v) const {
    if (t.bias != nullptr) v += to_acc(static_cast<const T*>(t.bias)[g * I(p.out_per_group()) + n]);
    return v;
  }
};

template <typename T, typename IndexT>
struct BackwardInputProblem {
  using Elem = T;
  using Index = IndexT;
  using Out = T;
  static constexpr Run kAVecRun = Run::K, kAScalarRun = Run::Rows;        // grad_output k / pixels
  static constexpr Run kBVecRun = Run::Rows, kBScalarRun = Run::Rows;     // weight c innermost / c stride R*S
  Conv2dParams p;
  Conv2dTensors t;
  Index g = 0;
  Index ih0 = 0, iw0 = 0, hp = 0, wp = 0;  // the phase's first input row/column and extent
  TapProgression<> taps_h{}, taps_w{};
  Index ntaps_h = 0, ntaps_w = 0;

  template <typename X>
  __device__ static Index I(X v) {
    return static_cast<Index>(v);
  }
  // Instance = (group, phase_h, phase_w), phase = (i + pad) mod stride.
  __device__ void select(int64_t instance, int64_t) {
    const int64_t phases = p.stride_h * p.stride_w;
    g = I(instance / phases);
    const int64_t phase_h = (instance % phases) / p.stride_w, phase_w = instance % p.stride_w;
    const int64_t h0 = (phase_h - p.pad_top % p.stride_h + p.stride_h) % p.stride_h;
    const int64_t w0 = (phase_w - p.pad_left % p.stride_w + p.stride_w) % p.stride_w;
    ih0 = I(h0);
    iw0 = I(w0);
    hp = I(h0 < p.in_h ? ceil_div(p.in_h - h0, p.stride_h) : 0);
    wp = I(w0 < p.in_w ? ceil_div(p.in_w - w0, p.stride_w) : 0);
    taps_h = backward_input_taps(phase_h, p.kernel_h, p.stride_h, p.dilation_h);
    taps_w = backward_input_taps(phase_w, p.kernel_w, p.stride_w, p.dilation_w);
    ntaps_h = I(taps_h.first < p.kernel_h ? ceil_div(p.kernel_h - taps_h.first, taps_h.step) : 0);
    ntaps_w = I(taps_w.first < p.kernel_w ? ceil_div(p.kernel_w - taps_w.first, taps_w.step) : 0);
  }
  __device__ Index rows() const { return I(p.batch) * hp * wp; }
  __device__ Index cols() const { return I(p.in_per_group()); }
  // Only the useful taps: a phase whose taps all miss has depth 0 and stores zeros.
  __device__ Index depth() const { return ntaps_h * ntaps_w * I(p.out_per_group()); }

  __device__ Operand<T, Index> a() const { return {static_cast<const T*>(t.output), I(p.out_h), I(p.out_w)}; }
  // Row m = (n, i, j): input pixel (ih0 + i*stride_h, iw0 + j*stride_w) of the phase. Through a
  // useful tap it reads output row i + (ih0 + pad_top - r*dilation_h) / stride_h, an exact
  // division (the phase is chosen so): the row part is (i, j), the tap part the quotients.
  __device__ Desc<Index> a_row(Index m) const {
    const int64_t* st = t.output_stride;
    const Index j = m % wp, i = (m / wp) % hp, n = m / (wp * hp);
    return {n * I(st[0]) + g * I(p.out_per_group()) * I(st[1]) + i * I(st[2]) + j * I(st[3]), i, j};
  }
  // Reduction index k = (th*ntaps_w + tw)*Kg + kk.
  __device__ Desc<Index> a_k(Index k) const {
    const int64_t* st = t.output_stride;
    const Index Kg = I(p.out_per_group()), kk = k % Kg, tw = (k / Kg) % ntaps_w, th = k / (Kg * ntaps_w);
    const Index r = I(taps_h.first) + th * I(taps_h.step), s = I(taps_w.first) + tw * I(taps_w.step);
    const Index dh = (ih0 + I(p.pad_top) - r * I(p.dilation_h)) / I(p.stride_h);
    const Index dw = (iw0 + I(p.pad_left) - s * I(p.dilation_w)) / I(p.stride_w);
    return {kk * I(st[1]) + dh * I(st[2]) + dw * I(st[3]), dh, dw};
  }
  __device__ Operand<T, Index> b() const { return {static_cast<const T*>(t.weight), 1, 1}; }
  __device__ Desc<Index> b_row(Index c) const {
    return {g * I(p.out_per_group()) * I(t.weight_stride[0]) + c * I(t.weight_stride[1]), 0, 0};
  }
  __device__ Desc<Index> b_k(Index k) const {
    const int64_t* st = t.weight_stride;
    const Index Kg = I(p.out_per_group()), kk = k % Kg, tw = (k / Kg) % ntaps_w, th = k / (Kg * ntaps_w);
    const Index r = I(taps_h.first) + th * I(taps_h.step), s = I(taps_w.first) + tw * I(taps_w.step);
    return {kk * I(st[0]) + r * I(st[2]) + s * I(st[3]), 0, 0};
  }
  __device__ Out* out() const { return static_cast<T*>(t.input); }
  __device__ Index out_row(Index m) const {
    const int64_t* st = t.input_stride;
    const Index j = m % wp, i = (m / wp) % hp, n = m / (wp * hp);
    return n * I(st[0]) + g * I(p.in_per_group()) * I(st[1]) + (ih0 + i * I(p.stride_h)) * I(st[2]) +
           (iw0 + j * I(p.stride_w)) * I(st[3]);
  }
  __device__ Index out_col_stride() const { return I(t.input_stride[1]); }
  __device__ acc_t<T> finish(Index, acc_t<T> v) const { return v; }
};

template <typename T, typename IndexT>
struct BackwardWeightProblem {
  using Elem = T;
  using Index = IndexT;
  using Out = acc_t<T>;
  static constexpr Run kAVecRun = Run::Rows, kAScalarRun = Run::K;  // grad_output k innermost / pixels
  static constexpr Run kBVecRun = Run::Rows, kBScalarRun = Run::K;  // input c innermost / pixels
  Conv2dParams p;
  Conv2dTensors t;
  int64_t chunk = 0;
  // Columns are (channel, tap) pairs, taps innermost (backward_weight_taps_in_columns): then an
  // instance is a group and r = s = 0; otherwise columns are channels and an instance one tap.
  bool taps_in_columns = false;
  Index g = 0, r = 0, s = 0, split = 0, m_begin = 0, m_count = 0;

  template <typename X>
  __device__ static Index I(X v) {
    return static_cast<Index>(v);
  }
  // The taps a column spans: all of them, or the instance's one.
  __device__ Index column_taps() const { return taps_in_columns ? I(p.kernel_h) * I(p.kernel_w) : Index{1}; }
  // Instance = (group, r, s), or the group; the third grid dimension picks the chunk of pixels.
  __device__ void select(int64_t instance, int64_t split_index) {
    const int64_t taps = taps_in_columns ? 1 : p.kernel_h * p.kernel_w;
    s = taps_in_columns ? 0 : I(instance % p.kernel_w);
    r = taps_in_columns ? 0 : I((instance / p.kernel_w) % p.kernel_h);
    g = I(instance / taps);
    split = I(split_index);
    const int64_t pixels = p.batch * p.out_h * p.out_w, begin = split_index * chunk;
    m_begin = I(begin);
    m_count = I(begin < pixels ? (pixels - begin < chunk ? pixels - begin : chunk) : 0);
  }
  __device__ Index rows() const { return I(p.out_per_group()); }
  __device__ Index cols() const { return I(p.in_per_group()) * column_taps(); }
  __device__ Index depth() const { return m_count; }

  __device__ Operand<T, Index> a() const { return {static_cast<const T*>(t.output), 1, 1}; }
  __device__ Desc<Index> a_row(Index k) const {
    return {(g * I(p.out_per_group()) + k) * I(t.output_stride[1]), 0, 0};
  }
  // Reduction index j = the output pixel m_begin + j = (n, oh, ow).
  struct Pixel {
    Index n, oh, ow;
  };
  __device__ Pixel pixel(Index j) const {
    const Index m = m_begin + j;
    return {m / (I(p.out_w) * I(p.out_h)), (m / I(p.out_w)) % I(p.out_h), m % I(p.out_w)};
  }
  __device__ Desc<Index> a_k(Index j) const {
    const int64_t* st = t.output_stride;
    const Pixel px = pixel(j);
    return {px.n * I(st[0]) + px.oh * I(st[2]) + px.ow * I(st[3]), 0, 0};
  }
  __device__ Operand<T, Index> b() const { return {static_cast<const T*>(t.input), I(p.in_h), I(p.in_w)}; }
  // Column j = c * column_taps() + (tap r*S + s when taps are in the columns).
  __device__ Desc<Index> b_row(Index j) const {
    const int64_t* st = t.input_stride;
    const Index c = j / column_taps(), tap = j % column_taps();
    const Index dh = (tap / I(p.kernel_w)) * I(p.dilation_h), dw = (tap % I(p.kernel_w)) * I(p.dilation_w);
    return {(g * I(p.in_per_group()) + c) * I(st[1]) + dh * I(st[2]) + dw * I(st[3]), dh, dw};
  }
  // The pixel's input coordinate through the tap (r, s) (the column adds its own tap when taps
  // are in the columns).
  __device__ Desc<Index> b_k(Index j) const {
    const int64_t* st = t.input_stride;
    const Pixel px = pixel(j);
    const Index ih = px.oh * I(p.stride_h) - I(p.pad_top) + r * I(p.dilation_h);
    const Index iw = px.ow * I(p.stride_w) - I(p.pad_left) + s * I(p.dilation_w);
    return {px.n * I(st[0]) + ih * I(st[2]) + iw * I(st[3]), ih, iw};
  }
  // partials[split][K][Cg][R][S]
  __device__ Out* out() const { return static_cast<Out*>(t.partials); }
  __device__ Index out_row(Index k) const {
    const Index Cg = I(p.in_per_group()), R = I(p.kernel_h), S = I(p.kernel_w);
    const Index weight_numel = I(p.out_channels) * Cg * R * S;
    return split * weight_numel + (g * I(p.out_per_group()) + k) * Cg * R * S + r * S + s;
  }
  // Consecutive channels are R*S apart in [Cg][R][S]; consecutive (channel, tap) columns adjacent.
  __device__ Index out_col_stride() const { return I(p.kernel_h) * I(p.kernel_w) / column_taps(); }
  __device__ acc_t<T> finish(Index, acc_t<T> v) const { return v; }
};

// ---- global -> shared ----------------------------------------------------------------------

// Moves one operand's slice, kRows x kDepth, into a shared stage laid out k-major
// (stage[i*kLd + kk]) or rows-major (stage[kk*kLd + i]). Element e of the slice's runs of kV
// goes to thread e % kThreads, and consecutive runs follow kRun, so consecutive threads touch
// consecutive addresses in the direction that is contiguous in memory.
template <typename T, typename Index, Run kRun, int kV, int kRows, int kDepth, int kThreads, bool kKMajor, int kLd>
struct Loader {
  static constexpr int kRunsPerLine = (kRun == Run::K ? kDepth : kRows) / kV;
  static constexpr int kPerThread = kRows * kDepth / (kV * kThreads);
  static_assert(kPerThread * kV * kThreads == kRows * kDepth, "the threads split the slice evenly");
  using Vec = std::conditional_t<kV == 1, T, uint4>;
  static_assert(kV == 1 || sizeof(T) * kV == sizeof(uint4), "vector runs are 16 bytes");
  Vec regs[kPerThread];

  __device__ static void coords(int j, int& i, int& kk) {
    const int e = threadIdx.x + j * kThreads;
    if (kRun == Run::K) {
      i = e / kRunsPerLine;
      kk = (e % kRunsPerLine) * kV;
    } else {
      kk = e / kRunsPerLine;
      i = (e % kRunsPerLine) * kV;
    }
  }
  __device__ static int at(int i, int kk) { return kKMajor ? i * kLd + kk : kk * kLd + i; }

  // Register-staged: load now, store() after the current slice's math.
  __device__ void load(const Operand<T, Index>& op, const Desc<Index>* rows, const Desc<Index>* ks) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      int i, kk;
      coords(j, i, kk);
      const Desc<Index> row = rows[i], k = ks[kk];
      if (in_bounds(row, k, op.h_ext, op.w_ext)) {
        regs[j] = *reinterpret_cast<const Vec*>(op.ptr + (row.off + k.off));
      } else if constexpr (kV == 1) {
        regs[j] = zero<T>();
      } else {
        regs[j] = uint4{0, 0, 0, 0};
      }
    }
  }
  __device__ void store(T* stage) const {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      int i, kk;
      coords(j, i, kk);
      if constexpr (kV == 1) {
        stage[at(i, kk)] = regs[j];
      } else if constexpr ((kRun == Run::K) == kKMajor) {  // the run is contiguous in the stage
        *reinterpret_cast<uint4*>(stage + at(i, kk)) = regs[j];
      } else {  // transposed into the stage (the SIMT engine keeps every operand rows-major)
        const T* e = reinterpret_cast<const T*>(&regs[j]);
#pragma unroll
        for (int v = 0; v < kV; ++v) stage[kRun == Run::K ? at(i, kk + v) : at(i + v, kk)] = e[v];
      }
    }
  }
  // Straight into the stage, without registers (vector runs contiguous in the stage only).
  __device__ static void copy_async(const Operand<T, Index>& op, const Desc<Index>* rows, const Desc<Index>* ks,
                                    T* stage) {
    static_assert(kV > 1 && (kRun == Run::K) == kKMajor, "cp.async moves whole 16-byte runs, contiguous in the stage");
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      int i, kk;
      coords(j, i, kk);
      const Desc<Index> row = rows[i], k = ks[kk];
      const bool valid = in_bounds(row, k, op.h_ext, op.w_ext);
      cp_async16(stage + at(i, kk), valid ? op.ptr + (row.off + k.off) : op.ptr, valid);
    }
  }
};

template <typename Out, typename Acc>
__device__ __forceinline__ Out to_out(Acc v) {
  if constexpr (std::is_same_v<Out, Acc>) {
    return v;
  } else {
    return from_acc<Out>(v);
  }
}

// ---- tile engines --------------------------------------------------------------------------
// An engine fixes the tile (BM x BN, depth slice BK, threads), the shared layout of each
// operand stage, the math on a stage and the epilogue.

// A WMMA fragment from a shared-memory stage. For __half, wmma::load_matrix_sync issues PTX's
// wmma.load with the .shared state space, one ldmatrix per fragment in SASS; for __nv_bfloat16,
// CUDA 13.0's mma.h issues the generic form, which nvcc lowers to four 32-bit generic loads per
// fragment (the large tile's sm_90 SASS had 48 LD.E per slice where fp16 has 12 LDSM). Naming the
// state space gives bf16 the single ldmatrix too. (The host emulator takes the portable call.)
#define CNNK_WMMA_LOAD_SHARED_BF16(matrix, layout)                                                       \
  asm volatile("wmma.load." matrix ".sync.aligned." layout ".m16n16k16.shared.bf16 {%0, %1, %2, %3}, [%4], %5;\n" \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                                           \
               : "r"(address), "r"(ldm)                                                                   \
               : "memory")
template <class Use, typename T, class Layout>
__device__ __forceinline__ void load_stage_fragment(nvcuda::wmma::fragment<Use, 16, 16, 16, T, Layout>& f, const T* p,
                                                    unsigned ldm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    unsigned* r = reinterpret_cast<unsigned*>(f.x);  // 8 elements: the instruction's 4 registers
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(p));
    constexpr bool kRow = std::is_same_v<Layout, nvcuda::wmma::row_major>;
    if constexpr (std::is_same_v<Use, nvcuda::wmma::matrix_a>) {
      if constexpr (kRow) {
        CNNK_WMMA_LOAD_SHARED_BF16("a", "row");
      } else {
        CNNK_WMMA_LOAD_SHARED_BF16("a", "col");
      }
    } else if constexpr (kRow) {
      CNNK_WMMA_LOAD_SHARED_BF16("b", "row");
    } else {
      CNNK_WMMA_LOAD_SHARED_BF16("b", "col");
    }
    return;
  }
#endif
  nvcuda::wmma::load_matrix_sync(f, p, ldm);
}
#undef CNNK_WMMA_LOAD_SHARED_BF16

// Tensor cores: kWarpsM x kWarpsN warps, each computing a (BM/kWarpsM) x (BN/kWarpsN) block as
// 16x16x16 WMMA fragments with fp32 accumulators. A stage is laid out along its operand's run
// (so cp.async writes 16-byte runs straight in) and read with the matching fragment layout;
// rows are padded by 8 elements (16 bytes: keeps fragment pointers 32-byte aligned and moves
// consecutive rows to different banks).
template <typename T, int kBM, int kBN, int kWarpsM, int kWarpsN>
struct WmmaEngine {
  static constexpr int BM = kBM, BN = kBN, BK = 32, kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kFragsM = BM / kWarpsM / 16, kFragsN = BN / kWarpsN / 16;
  static constexpr int kPad = 8;
  static constexpr bool kAsync = true;
  // Stages when both operands are copied by cp.async: three slices in flight while one is
  // multiplied, to keep global memory's latency behind the MMAs. The large tile's four stages
  // take 80 KB of shared memory (dynamic: past the 48 KB a block gets without opting in).
  static constexpr int kAsyncStages = 4;
  // Blocks per SM that ptxas must fit in registers (__launch_bounds__). With both operands on
  // cp.async, two: the large tile's 256 threads then get 128 registers each, which they fit in
  // without spilling (124-126; uncapped they take 136-148, and one block fills an SM's 64K
  // registers; sm_90, nvcc 13.0). An operand staged through registers needs more and spills at
  // 128, so there one.
  static constexpr int kMinBlocks = 1;
  static constexpr int kAsyncMinBlocks = 2;
  __host__ __device__ static constexpr bool k_major(Run run) { return run == Run::K; }
  __host__ __device__ static constexpr int ld(Run run, int rows) { return run == Run::K ? BK + kPad : rows + kPad; }
  __host__ __device__ static constexpr int stage_elems(Run run, int rows) {
    return run == Run::K ? rows * (BK + kPad) : BK * (rows + kPad);
  }
  static constexpr int kScratchLd = 16 + 4;  // epilogue: one 16x16 fp32 fragment per warp
  static constexpr int kEpilogueBytes = kThreads / 32 * 16 * kScratchLd * 4;

  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[kFragsM][kFragsN];

  __device__ void init() {
#pragma unroll
    for (int i = 0; i < kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  template <Run kARun, Run kBRun>
  __device__ void compute(const T* As, const T* Bs) {
    namespace wmma = nvcuda::wmma;
    // A k-major is row_major (m, k) at [m*ld + k]; B k-major is its transpose stored (n, k),
    // i.e. col_major (k, n) at [n*ld + k]; the rows-major stages are the other way round.
    using ALayout = std::conditional_t<kARun == Run::K, wmma::row_major, wmma::col_major>;
    using BLayout = std::conditional_t<kBRun == Run::K, wmma::col_major, wmma::row_major>;
    constexpr int lda = ld(kARun, BM), ldb = ld(kBRun, BN);
    const int warp = threadIdx.x / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      // All of B's fragments, then A's one at a time: one A fragment live instead of kFragsM.
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb[kFragsN];
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) {
        const int n = (wn * kFragsN + j) * 16;
        load_stage_fragment(fb[j], kBRun == Run::K ? Bs + n * ldb + ks : Bs + ks * ldb + n, ldb);
      }
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
        const int m = (wm * kFragsM + i) * 16;
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> fa;
        load_stage_fragment(fa, kARun == Run::K ? As + m * lda + ks : As + ks * lda + m, lda);
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
      }
    }
  }

  // Each warp passes its fragments one at a time through a private 16x16 scratch. Where the
  // output's columns are contiguous (column stride 1), a lane writes 8 consecutive columns of one
  // row: one or two 16-byte stores when the address allows, so a shallow GEMM (a 1x1 layer on 64
  // channels is two slices) does not spend most of its time storing element by element.
  // Otherwise (NCHW) lanes run down the rows, one element each, to coalesce along them.
  template <class P, typename Index>
  __device__ void epilogue(const P& prob, void* smem, const Index* out_rows, Index m0, Index n0, Index rows,
                           Index cols) {
    namespace wmma = nvcuda::wmma;
    using Out = typename P::Out;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
    float* scratch = static_cast<float*>(smem) + warp * 16 * kScratchLd;
    const Index col_stride = prob.out_col_stride();
    Out* out = prob.out();
#pragma unroll
    for (int i = 0; i < kFragsM; ++i)
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) {
        wmma::store_matrix_sync(scratch, acc[i][j], kScratchLd, wmma::mem_row_major);
        __syncwarp();
        const int tm0 = (wm * kFragsM + i) * 16, tn0 = (wn * kFragsN + j) * 16;
        if (col_stride == 1) {
          const int r = lane / 2, c = lane % 2 * kRun;
          const Index m = m0 + tm0 + r, n = n0 + tn0 + c;
          if (m < rows) store_run(prob, out + out_rows[tm0 + r] + n, scratch + r * kScratchLd + c, n, cols);
        } else {
#pragma unroll 1  // unrolled, the stores' predicates and addresses crowd out the accumulators
          for (int x = 0; x < 8; ++x) {
            const int r = lane % 16, c = lane / 16 + 2 * x;
            const Index m = m0 + tm0 + r, n = n0 + tn0 + c;
            if (m < rows && n < cols) {
              out[out_rows[tm0 + r] + n * col_stride] = to_out<Out>(prob.finish(n, scratch[r * kScratchLd + c]));
            }
          }
        }
        __syncwarp();
      }
  }

  // Columns n.. n + kRun - 1 of one output row, from 8 consecutive scratch values (16-byte aligned
  // in the scratch: its rows are 80 bytes, the run starts at column 0 or 8).
  static constexpr int kRun = 8;
  template <class P, typename Index>
  __device__ static void store_run(const P& prob, typename P::Out* dst, const float* src, Index n, Index cols) {
    using Out = typename P::Out;
    const float4 lo = reinterpret_cast<const float4*>(src)[0], hi = reinterpret_cast<const float4*>(src)[1];
    const float v[kRun] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    alignas(16) Out run[kRun];
#pragma unroll
    for (int e = 0; e < kRun; ++e) run[e] = n + e < cols ? to_out<Out>(prob.finish(n + e, v[e])) : Out{};
    if (n + kRun <= cols && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
#pragma unroll
      for (int k = 0; k < static_cast<int>(sizeof(run) / 16); ++k) {
        reinterpret_cast<uint4*>(dst)[k] = reinterpret_cast<const uint4*>(run)[k];
      }
    } else {
#pragma unroll
      for (int e = 0; e < kRun; ++e)
        if (n + e < cols) dst[e] = run[e];
    }
  }
};

// SIMT: 256 threads as 16 x 16, each accumulating a (BM/16) x (BN/16) block in the accumulator
// type, made of 4 x 4 pieces spread BM/2 (BN/2) apart when there are two, so a warp's shared
// reads are 16-byte vectors over consecutive addresses. Both stages are rows-major
// ([k][row], padded by 4: 16-byte aligned rows, k-runs transposed in with at most 2-way bank
// conflicts) and filled from registers.
template <typename T, int kBM, int kBN, int kBK>
struct SimtEngine {
  static constexpr int BM = kBM, BN = kBN, BK = kBK, kThreads = 256;
  static constexpr int TM = BM / 16, TN = BN / 16;
  static_assert(TM % 4 == 0 && TN % 4 == 0, "4 x 4 pieces");
  static constexpr int kPad = 4;
  static constexpr bool kAsync = false;
  // fp32: two blocks per SM (<= 128 registers, what the 8 x 8 accumulators fit in); fp64: one,
  // or ptxas squeezes its 4 x 4 doubles into 128 registers and spills.
  static constexpr int kMinBlocks = sizeof(T) == 8 ? 1 : 2;
  __host__ __device__ static constexpr bool k_major(Run) { return false; }
  __host__ __device__ static constexpr int ld(Run, int rows) { return rows + kPad; }
  __host__ __device__ static constexpr int stage_elems(Run, int rows) { return BK * (rows + kPad); }
  static constexpr int kEpilogueBytes = 0;

  T acc[TM][TN];

  __device__ static int row_of(int i) { return (i / 4) * (BM / (TM / 4)) + (threadIdx.x / 16) * 4 + i % 4; }
  __device__ static int col_of(int j) { return (j / 4) * (BN / (TN / 4)) + (threadIdx.x % 16) * 4 + j % 4; }

  __device__ void init() {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
  }

  template <Run, Run>
  __device__ void compute(const T* As, const T* Bs) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[kk * (BM + kPad) + row_of(i)];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[kk * (BN + kPad) + col_of(j)];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
  }

  template <class P, typename Index>
  __device__ void epilogue(const P& prob, void*, const Index* out_rows, Index m0, Index n0, Index rows, Index cols) {
    const Index col_stride = prob.out_col_stride();
    auto* out = prob.out();
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const Index m = m0 + row_of(i), n = n0 + col_of(j);
        if (m < rows && n < cols) {
          out[out_rows[row_of(i)] + n * col_stride] = to_out<typename P::Out>(prob.finish(n, acc[i][j]));
        }
      }
  }
};

// ---- the tile kernel -----------------------------------------------------------------------
// Grid: x = (row tile, column tile), y = problem instance (counted from first_instance: see
// launch_gemm), z = reduction split.

// A tile kernel's pipeline: each operand's run direction, how it reaches shared memory, and the
// stages. cp.async (tensor cores, 16-byte runs) lets both operands run the engine's kAsyncStages
// deep; an operand staged through registers holds only the next slice, so that takes two.
template <class Engine, class Problem, bool kAVec, bool kBVec>
struct Pipeline {
  using T = typename Problem::Elem;
  static constexpr Run kARun = kAVec ? Problem::kAVecRun : Problem::kAScalarRun;
  static constexpr Run kBRun = kBVec ? Problem::kBVecRun : Problem::kBScalarRun;
  static constexpr bool kAAsync = kAVec && Engine::kAsync, kBAsync = kBVec && Engine::kAsync;
  static constexpr int kStages = [] {
    if constexpr (kAAsync && kBAsync) {
      return Engine::kAsyncStages;
    } else {
      return 2;
    }
  }();
  static_assert(kStages >= 2, "one stage in the math, at least one filling");
  // Blocks per SM for the kernel's __launch_bounds__: the engine's figure for this pipeline.
  static constexpr int kMinBlocks = [] {
    if constexpr (kAAsync && kBAsync) {
      return Engine::kAsyncMinBlocks;
    } else {
      return Engine::kMinBlocks;
    }
  }();
  static constexpr int kAStage = Engine::stage_elems(kARun, Engine::BM);
  static constexpr int kBStage = Engine::stage_elems(kBRun, Engine::BN);
  static constexpr int kStageBytes = kStages * (kAStage + kBStage) * static_cast<int>(sizeof(T));
  // Dynamic shared memory: the stages, which the epilogue reuses.
  static constexpr int kBytes = kStageBytes > Engine::kEpilogueBytes ? kStageBytes : Engine::kEpilogueBytes;
};

template <class Engine, class Problem, bool kAVec, bool kBVec>
__global__ void __launch_bounds__(Engine::kThreads, (Pipeline<Engine, Problem, kAVec, kBVec>::kMinBlocks))
    conv_gemm_kernel(Problem prob, int64_t first_instance) {
  using T = typename Problem::Elem;
  using Index = typename Problem::Index;
  using Pipe = Pipeline<Engine, Problem, kAVec, kBVec>;
  constexpr int BM = Engine::BM, BN = Engine::BN, BK = Engine::BK, kThreads = Engine::kThreads;
  constexpr int kVec = 16 / sizeof(T), kStages = Pipe::kStages;
  constexpr Run kARun = Pipe::kARun, kBRun = Pipe::kBRun;
  using ALoader = Loader<T, Index, kARun, kAVec ? kVec : 1, BM, BK, kThreads, Engine::k_major(kARun),
                         Engine::ld(kARun, BM)>;
  using BLoader = Loader<T, Index, kBRun, kBVec ? kVec : 1, BN, BK, kThreads, Engine::k_major(kBRun),
                         Engine::ld(kBRun, BN)>;
  static_assert(BK <= kThreads / 2, "two thread groups decompose the reduction indices");

  prob.select(first_instance + blockIdx.y, blockIdx.z);
  const Index rows = prob.rows(), cols = prob.cols(), depth = prob.depth();
  const Index tiles_n = ceil_div<Index>(cols, BN);
  const Index m0 = static_cast<Index>(blockIdx.x) / tiles_n * BM, n0 = static_cast<Index>(blockIdx.x) % tiles_n * BN;
  if (m0 >= rows) return;  // instances differ in rows (stride phases); the grid fits the largest

  extern __shared__ __align__(128) unsigned char conv_stages[];
  T* const a_stage = reinterpret_cast<T*>(conv_stages);
  T* const b_stage = a_stage + kStages * Pipe::kAStage;
  __shared__ Desc<Index> a_rows[BM], b_rows[BN], a_ks[kStages][BK], b_ks[kStages][BK];
  __shared__ Index out_rows[BM];

  for (int i = threadIdx.x; i < BM; i += kThreads) {
    const Index m = m0 + i;
    a_rows[i] = m < rows ? prob.a_row(m) : Desc<Index>{0, Sentinel<Index>::kRow, 0};
    out_rows[i] = m < rows ? prob.out_row(m) : 0;
  }
  for (int i = threadIdx.x; i < BN; i += kThreads) {
    const Index n = n0 + i;
    b_rows[i] = n < cols ? prob.b_row(n) : Desc<Index>{0, Sentinel<Index>::kRow, 0};
  }
  // Slice j (BK reduction indices) passes through index buffer and stage j % kStages.
  const Index slices = ceil_div<Index>(depth, BK);
  // The slice's reduction indices: A's by threads [0, BK), B's by [BK, 2 BK).
  auto decompose = [&](Index slice) {
    const int tid = threadIdx.x;
    if (slice < slices && tid < 2 * BK) {
      const int kk = tid % BK, buf = static_cast<int>(slice % kStages);
      const Index k = slice * BK + kk;
      const Desc<Index> none{0, Sentinel<Index>::kDepth, 0};
      if (tid < BK) {
        a_ks[buf][kk] = k < depth ? prob.a_k(k) : none;
      } else {
        b_ks[buf][kk] = k < depth ? prob.b_k(k) : none;
      }
    }
  };
  const Operand<T, Index> a_op = prob.a(), b_op = prob.b();
  ALoader a_load;
  BLoader b_load;
  // Starts moving the slice towards its stage; commits one cp.async group per call, empty past
  // the last slice, so that group j is always slice j.
  auto fetch = [&](Index slice) {
    if (slice < slices) {
      const int buf = static_cast<int>(slice % kStages);
      if constexpr (Pipe::kAAsync) {
        ALoader::copy_async(a_op, a_rows, a_ks[buf], a_stage + buf * Pipe::kAStage);
      } else {
        a_load.load(a_op, a_rows, a_ks[buf]);
      }
      if constexpr (Pipe::kBAsync) {
        BLoader::copy_async(b_op, b_rows, b_ks[buf], b_stage + buf * Pipe::kBStage);
      } else {
        b_load.load(b_op, b_rows, b_ks[buf]);
      }
    }
    cp_async_commit();
  };
  // Completes the register-staged part of a fetch (two stages: registers hold one slice).
  static_assert(kStages == 2 || (Pipe::kAAsync && Pipe::kBAsync), "register staging holds a single slice");
  auto park = [&](Index slice) {
    const int buf = static_cast<int>(slice % kStages);
    if constexpr (!Pipe::kAAsync) {
      if (slice < slices) a_load.store(a_stage + buf * Pipe::kAStage);
    }
    if constexpr (!Pipe::kBAsync) {
      if (slice < slices) b_load.store(b_stage + buf * Pipe::kBStage);
    }
  };

  Engine engine;
  engine.init();
  for (int j = 0; j < kStages; ++j) decompose(j);
  __syncthreads();
  for (int j = 0; j + 1 < kStages; ++j) fetch(j);
  park(0);
  // One barrier per slice. After iteration s's: slice s is in its stage (each thread waited for
  // its own copies: kStages - 1 + s groups are committed, and all but the newest kStages - 2
  // have landed); every thread is done with stage s - 1 (multiplied last iteration), which the
  // fetch of slice s + kStages - 1 refills; that slice's indices (decomposed last iteration)
  // are visible; and index buffer s % kStages, last read by slice s's fetch, takes slice
  // s + kStages.
  for (Index s = 0; s < slices; ++s) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    fetch(s + kStages - 1);
    decompose(s + kStages);
    const int cur = static_cast<int>(s % kStages);
    engine.template compute<kARun, kBRun>(a_stage + cur * Pipe::kAStage, b_stage + cur * Pipe::kBStage);
    park(s + kStages - 1);
  }
  __syncthreads();  // the epilogue may reuse the stages
  engine.epilogue(prob, conv_stages, out_rows, m0, n0, rows, cols);
}

// ---- host side -----------------------------------------------------------------------------

// Large and small tiles, and a narrow one for GEMMs of at most kNarrowTileCols columns (an RGB
// stem's 3 input channels in backward-input, a grouped layer's few channels per group), which
// on a 64-column tile would leave most of each MMA's columns masked off.
constexpr int64_t kNarrowTileCols = 16;
template <typename T>
struct Engines {  // fp16 / bf16
  using Large = WmmaEngine<T, 128, 128, 2, 4>;
  using Small = WmmaEngine<T, 64, 64, 2, 2>;
  using Narrow = WmmaEngine<T, 64, kNarrowTileCols, 2, 1>;
};
template <>
struct Engines<float> {  // the SIMT engine's 16 x 16 thread grid takes at least 64 columns
  using Large = SimtEngine<float, 128, 128, 8>;
  using Small = SimtEngine<float, 64, 64, 16>;
  using Narrow = Small;
};
template <>
struct Engines<double> {  // 8 x 8 doubles per thread would not leave registers to spare
  using Large = SimtEngine<double, 64, 64, 16>;
  using Small = SimtEngine<double, 64, 64, 16>;
  using Narrow = Small;
};
static_assert(Engines<float>::Large::BM == kGemmTileRows && Engines<float>::Large::BN == kGemmTileCols &&
                  Engines<__half>::Large::BM == kGemmTileRows && Engines<__half>::Large::BN == kGemmTileCols,
              "the host sizes reduction splits by the large tile");

constexpr int64_t kMaxGridY = 65535;  // the largest grid.y (and grid.z)
constexpr int kDefaultDynamicSharedBytes = 48 * 1024;  // what a launch may take without opting in
// Large tiles move half the operand bytes per flop of small ones but come 4x fewer; below about
// two blocks per SM (an H100 has 132) the small tile keeps the GPU busier.
constexpr int64_t kLargeTileMinBlocks = 256;

struct GemmPlan {
  bool index64;       // some offset or coordinate may not fit the 32-bit path
  bool a_vec, b_vec;  // 16-byte loads for A / B
};

struct GemmShape {
  int64_t max_rows, cols, instances, splits;
};

enum class Tile { kLarge, kSmall, kNarrow };

Tile pick_tile(const GemmShape& s) {
  if (CNNK_CONV_FORCE_TILE != 0) {
    return CNNK_CONV_FORCE_TILE == 1 ? Tile::kLarge : CNNK_CONV_FORCE_TILE == 2 ? Tile::kSmall : Tile::kNarrow;
  }
  if (s.cols <= kNarrowTileCols) return Tile::kNarrow;
  const int64_t blocks = ceil_div(s.max_rows, kGemmTileRows) * ceil_div(s.cols, kGemmTileCols) * s.instances * s.splits;
  const bool large = s.max_rows > kGemmTileRows / 2 && s.cols > kGemmTileCols / 2 && blocks >= kLargeTileMinBlocks;
  return large ? Tile::kLarge : Tile::kSmall;
}

// Whether an operand takes 16-byte runs along its channels (dimension 1): they are unit-stride,
// the channels per group fill whole runs (channel_runs_fit) and every other stride is a multiple
// of the run (so runs never straddle a channel block or start misaligned) and the base is
// 16-byte aligned. A dimension of extent 1 is only ever indexed at 0, so its stride does not
// count: torch gives a 1x1 kernel's weight the strides (C, 1, 1, 1) in either layout.
template <typename T>
bool vectorisable(const void* base, int64_t channels_per_group, const int64_t stride[4], int64_t extent0,
                  int64_t extent2, int64_t extent3) {
  constexpr int64_t v = kVectorBytes / sizeof(T);
  if (!channel_runs_fit(sizeof(T), channels_per_group)) return false;
  if (stride[1] != 1 || reinterpret_cast<uintptr_t>(base) % kVectorBytes != 0) return false;
  const int64_t others[3][2] = {{extent0, stride[0]}, {extent2, stride[2]}, {extent3, stride[3]}};
  for (const auto& [extent, st] : others)
    if (extent > 1 && st % v != 0) return false;
  return true;
}

// The 32-bit path holds when every offset the kernels form fits: per tensor, the sum over its
// dimensions of |stride| times the largest coordinate reached (spatial ones with padding,
// dilated taps and phase offsets included), the partials, the GEMM extents with a tile's
// overhang; and spatial coordinates stay below 2^28 (see Sentinel).
bool needs_index64(const Conv2dParams& p, const Conv2dTensors& t, int64_t splits, int64_t chunk) {
  const int64_t limit = CNNK_CONV_INDEX32_LIMIT;
  const int64_t span_h = p.in_h + p.out_h * p.stride_h + p.kernel_h * p.dilation_h + p.pad_top + p.stride_h;
  const int64_t span_w = p.in_w + p.out_w * p.stride_w + p.kernel_w * p.dilation_w + p.pad_left + p.stride_w;
  if (span_h >= (int64_t{1} << 28) || span_w >= (int64_t{1} << 28)) return true;
  auto reach = [](const int64_t st[4], int64_t e0, int64_t e1, int64_t e2, int64_t e3) {
    auto a = [](int64_t x) { return x < 0 ? -x : x; };
    return e0 * a(st[0]) + e1 * a(st[1]) + e2 * a(st[2]) + e3 * a(st[3]);
  };
  const int64_t channels = p.in_channels > p.out_channels ? p.in_channels : p.out_channels;
  const int64_t weight_numel = p.out_channels * p.in_per_group() * p.kernel_h * p.kernel_w;
  const int64_t extents[] = {
      reach(t.input_stride, p.batch, p.in_channels, span_h, span_w),
      reach(t.output_stride, p.batch, p.out_channels, span_h, span_w),
      reach(t.weight_stride, p.out_channels, p.in_per_group(), p.kernel_h, p.kernel_w),
      splits * weight_numel,
      splits * chunk,
      p.batch * span_h * span_w + kGemmTileRows,
      p.kernel_h * p.kernel_w * channels + kGemmTileRows,
  };
  for (const int64_t e : extents)
    if (e >= limit) return true;
  return false;
}

template <class Engine, class P, bool kAVec, bool kBVec>
cudaError_t launch_gemm(const P& prob, const GemmShape& s, cudaStream_t stream) {
  const int64_t tiles = ceil_div<int64_t>(s.max_rows, Engine::BM) * ceil_div<int64_t>(s.cols, Engine::BN);
  if (tiles > 0x7fffffff || s.splits > kMaxGridY) return cudaErrorInvalidConfiguration;
  using Pipe = Pipeline<Engine, P, kAVec, kBVec>;
  if constexpr (Pipe::kBytes > kDefaultDynamicSharedBytes) {
    // A kernel opts in to more, once per device (the attribute belongs to the device's context):
    // a driver call saved on every later launch. Devices past 64 opt in on every launch.
    static std::atomic<uint64_t> opted_in{0};
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
    if ((opted_in.load(std::memory_order_relaxed) & bit) == 0) {
      void (*const kernel)(P, int64_t) = conv_gemm_kernel<Engine, P, kAVec, kBVec>;
      err = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 Pipe::kBytes);
      if (err != cudaSuccess) return err;
      opted_in.fetch_or(bit, std::memory_order_relaxed);
    }
  }
  // grid.y holds at most 65535 instances; more (a depthwise backward-weight has groups*R*S, e.g.
  // 1536*7*7) take one launch per slice of instances.
  for (int64_t first = 0; first < s.instances; first += kMaxGridY) {
    const int64_t count = s.instances - first < kMaxGridY ? s.instances - first : kMaxGridY;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(count), static_cast<unsigned>(s.splits));
    conv_gemm_kernel<Engine, P, kAVec, kBVec><<<grid, Engine::kThreads, Pipe::kBytes, stream>>>(prob, first);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <class Engine, class P>
cudaError_t launch_vectorised(const P& prob, const GemmPlan& plan, const GemmShape& s, cudaStream_t stream) {
  if constexpr (sizeof(typename P::Elem) < 8) {  // see vectorisable()
    if (plan.a_vec && plan.b_vec) return launch_gemm<Engine, P, true, true>(prob, s, stream);
    if (plan.a_vec) return launch_gemm<Engine, P, true, false>(prob, s, stream);
    if (plan.b_vec) return launch_gemm<Engine, P, false, true>(prob, s, stream);
  }
  return launch_gemm<Engine, P, false, false>(prob, s, stream);
}

// make(Index{}) builds the problem with that offset type. The 64-bit path (tensors beyond 2^31
// elements) runs the small tile with scalar loads only: it keeps the kernel count down and
// its descriptors in static shared memory.
template <typename T, class Make>
cudaError_t run_gemm(Make make, GemmPlan plan, const GemmShape& s, cudaStream_t stream) {
  if (s.max_rows == 0 || s.cols == 0 || s.instances == 0 || s.splits == 0) return cudaSuccess;
  if (plan.index64) {
    return launch_gemm<typename Engines<T>::Small, decltype(make(int64_t{})), false, false>(make(int64_t{}), s,
                                                                                           stream);
  }
  const auto prob = make(int32_t{});
  switch (pick_tile(s)) {
    case Tile::kLarge:
      return launch_vectorised<typename Engines<T>::Large>(prob, plan, s, stream);
    case Tile::kNarrow:
      return launch_vectorised<typename Engines<T>::Narrow>(prob, plan, s, stream);
    default:
      return launch_vectorised<typename Engines<T>::Small>(prob, plan, s, stream);
  }
}

template <typename T>
cudaError_t forward(const Conv2dParams& p, const Conv2dTensors& t, cudaStream_t stream) {
  const int64_t* x = t.input_stride;
  const int64_t* w = t.weight_stride;
  GemmPlan plan;
  plan.index64 = needs_index64(p, t, 1, 0);
  plan.a_vec = vectorisable<T>(t.input, p.in_per_group(), x, p.batch, p.in_h, p.in_w);
  plan.b_vec = vectorisable<T>(t.weight, p.in_per_group(), w, p.out_channels, p.kernel_h, p.kernel_w);
  const GemmShape shape{p.batch * p.out_h * p.out_w, p.out_per_group(), p.groups, 1};
  return run_gemm<T>([&](auto index) { return ForwardProblem<T, decltype(index)>{p, t}; }, plan, shape, stream);
}

template <typename T>
cudaError_t backward_input(const Conv2dParams& p, const Conv2dTensors& t, cudaStream_t stream) {
  const int64_t* go = t.output_stride;
  const int64_t* w = t.weight_stride;
  GemmPlan plan;
  plan.index64 = needs_index64(p, t, 1, 0);
  plan.a_vec = vectorisable<T>(t.output, p.out_per_group(), go, p.batch, p.out_h, p.out_w);
  plan.b_vec = vectorisable<T>(t.weight, p.in_per_group(), w, p.out_channels, p.kernel_h, p.kernel_w);
  const int64_t largest_phase = p.batch * ceil_div(p.in_h, p.stride_h) * ceil_div(p.in_w, p.stride_w);
  const GemmShape shape{largest_phase, p.in_per_group(), p.groups * p.stride_h * p.stride_w, 1};
  return run_gemm<T>([&](auto index) { return BackwardInputProblem<T, decltype(index)>{p, t}; }, plan, shape,
                     stream);
}

template <typename T>
cudaError_t backward_weight(const Conv2dParams& p, const Conv2dTensors& t, int64_t splits, int64_t chunk,
                            cudaStream_t stream) {
  const int64_t* go = t.output_stride;
  const int64_t* x = t.input_stride;
  const bool taps_in_columns = backward_weight_taps_in_columns(p);
  const int64_t taps = p.kernel_h * p.kernel_w;
  GemmPlan plan;
  plan.index64 = needs_index64(p, t, splits, chunk);
  plan.a_vec = vectorisable<T>(t.output, p.out_per_group(), go, p.batch, p.out_h, p.out_w);
  // B's vector runs go along the columns: channels, contiguous in channels_last; (channel, tap)
  // pairs are not.
  plan.b_vec = !taps_in_columns && vectorisable<T>(t.input, p.in_per_group(), x, p.batch, p.in_h, p.in_w);
  const GemmShape shape = taps_in_columns ? GemmShape{p.out_per_group(), p.in_per_group() * taps, p.groups, splits}
                                          : GemmShape{p.out_per_group(), p.in_per_group(), p.groups * taps, splits};
  return run_gemm<T>(
      [&](auto index) { return BackwardWeightProblem<T, decltype(index)>{p, t, chunk, taps_in_columns}; }, plan,
      shape, stream);
}

// ---- bias gradient -------------------------------------------------------------------------
// Block (channel tile, split) sums its chunk of pixels for kChannelLanes channels. 256 threads
// = kChannelLanes x kPixelLanes. When channels are innermost in memory (channels_last)
// neighbouring lanes take neighbouring channels, otherwise neighbouring pixels, so loads
// coalesce in both layouts. The lanes of a channel are combined by a fixed shared-memory tree.
constexpr int kBiasThreads = 256;

template <typename T, int kChannelLanes>
__global__ void __launch_bounds__(kBiasThreads)
    bias_grad_partials_kernel(const T* __restrict__ grad, int64_t channels, int64_t pixels_per_image,
                              int64_t pixels, int64_t stride_n, int64_t stride_k, int64_t stride_pq,
                              int64_t chunk, acc_t<T>* __restrict__ partials) {
  constexpr int kPixelLanes = kBiasThreads / kChannelLanes;
  __shared__ acc_t<T> sums[kChannelLanes][kPixelLanes];
  const int ch_lane = kChannelLanes == 32 ? threadIdx.x % 32 : threadIdx.x / kPixelLanes;
  const int pix_lane = kChannelLanes == 32 ? threadIdx.x / 32 : threadIdx.x % kPixelLanes;
  const int64_t k = int64_t{blockIdx.x} * kChannelLanes + ch_lane;
  const int64_t split = blockIdx.y;
  const int64_t m_begin = split * chunk;
  const int64_t m_end = min(pixels, m_begin + chunk);

  acc_t<T> sum = 0;
  if (k < channels) {
    for (int64_t m = m_begin + pix_lane; m < m_end; m += kPixelLanes) {
      const int64_t n = m / pixels_per_image, pq = m - n * pixels_per_image;
      sum += to_acc(grad[n * stride_n + k * stride_k + pq * stride_pq]);
    }
  }
  sums[ch_lane][pix_lane] = sum;
  __syncthreads();
  for (int half = kPixelLanes / 2; half > 0; half /= 2) {
    if (pix_lane < half) sums[ch_lane][pix_lane] += sums[ch_lane][pix_lane + half];
    __syncthreads();
  }
  if (pix_lane == 0 && k < channels) partials[split * channels + k] = sums[ch_lane][0];
}

template <typename T>
cudaError_t bias_grad(const void* grad, int64_t batch, int64_t channels, int64_t pixels_per_image,
                      int64_t stride_n, int64_t stride_k, int64_t stride_pq, int64_t splits, void* partials,
                      cudaStream_t stream) {
  const int64_t pixels = batch * pixels_per_image;
  const int64_t chunk = ceil_div(pixels, splits);
  auto* part = static_cast<acc_t<T>*>(partials);
  const T* g = static_cast<const T*>(grad);
  if (stride_k == 1) {
    constexpr int kLanes = 32;
    const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(channels, kLanes)), static_cast<unsigned>(splits));
    bias_grad_partials_kernel<T, kLanes><<<grid, kBiasThreads, 0, stream>>>(
        g, channels, pixels_per_image, pixels, stride_n, stride_k, stride_pq, chunk, part);
  } else {
    constexpr int kLanes = 8;
    const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(channels, kLanes)), static_cast<unsigned>(splits));
    bias_grad_partials_kernel<T, kLanes><<<grid, kBiasThreads, 0, stream>>>(
        g, channels, pixels_per_image, pixels, stride_n, stride_k, stride_pq, chunk, part);
  }
  return cudaGetLastError();
}

// ---- partial sums --------------------------------------------------------------------------

template <typename T>
__global__ void sum_partials_kernel(const acc_t<T>* __restrict__ partials, int64_t splits, int64_t d1, int64_t d2,
                                    int64_t d3, int64_t numel, T* __restrict__ out, int64_t s0, int64_t s1,
                                    int64_t s2, int64_t s3) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= numel) return;
  acc_t<T> total = 0;
  for (int64_t s = 0; s < splits; ++s) total += partials[s * numel + i];
  const int64_t i3 = i % d3, i2 = (i / d3) % d2, i1 = (i / (d3 * d2)) % d1, i0 = i / (d3 * d2 * d1);
  out[i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3] = from_acc<T>(total);
}

template <typename T>
cudaError_t sum_partials(const void* partials, int64_t splits, const int64_t sizes[4], void* out,
                         const int64_t stride[4], cudaStream_t stream) {
  const int64_t numel = sizes[0] * sizes[1] * sizes[2] * sizes[3];
  if (numel == 0) return cudaSuccess;
  constexpr int threads = 256;
  sum_partials_kernel<T><<<static_cast<unsigned>(ceil_div<int64_t>(numel, threads)), threads, 0, stream>>>(
      static_cast<const acc_t<T>*>(partials), splits, sizes[1], sizes[2], sizes[3], numel, static_cast<T*>(out),
      stride[0], stride[1], stride[2], stride[3]);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_conv2d_forward(DType dtype, const Conv2dParams& p, const Conv2dTensors& t, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return forward<decltype(tag)>(p, t, stream); });
}

cudaError_t launch_conv2d_backward_input(DType dtype, const Conv2dParams& p, const Conv2dTensors& t,
                                         cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return backward_input<decltype(tag)>(p, t, stream); });
}

cudaError_t launch_conv2d_backward_weight(DType dtype, const Conv2dParams& p, const Conv2dTensors& t,
                                          int64_t splits, int64_t chunk, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return backward_weight<decltype(tag)>(p, t, splits, chunk, stream); });
}

cudaError_t launch_conv2d_backward_bias(DType dtype, const void* grad_output, int64_t batch, int64_t channels,
                                        int64_t pixels_per_image, int64_t stride_n, int64_t stride_k,
                                        int64_t stride_pq, int64_t splits, void* partials, void* grad_bias,
                                        cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    cudaError_t err = bias_grad<T>(grad_output, batch, channels, pixels_per_image, stride_n, stride_k, stride_pq,
                                   splits, partials, stream);
    if (err != cudaSuccess) return err;
    const int64_t sizes[4] = {channels, 1, 1, 1};
    const int64_t stride[4] = {1, 0, 0, 0};
    return sum_partials<T>(partials, splits, sizes, grad_bias, stride, stream);
  });
}

cudaError_t launch_sum_partials(DType dtype, const void* partials, int64_t splits, const int64_t sizes[4], void* out,
                                const int64_t out_stride[4], cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return sum_partials<decltype(tag)>(partials, splits, sizes, out, out_stride, stream); });
}

}  // namespace cnnkernels
