// Normalisation CUDA kernels. Includes no torch header (see norm_kernel.h).
//
// Batch norm and group norm share one set of kernels; they differ only in which elements form a
// statistics group and in how a (sample, channel) pair finds its statistics: stat = n * nstride
// + c / cpg (batch norm: nstride 0, cpg 1, i.e. stat = c; group norm: nstride G, cpg C/G).
//
// Forward, training:  reduce (per-block partial Welford triples over a split of every group that
// the shape alone determines) -> finalize (one warp per group Chan-merges its partials in a fixed
// order, writes mean/rstd and the new running statistics) -> apply (one fused elementwise pass:
// normalise, affine, residual, activation, vectorised 16-byte loads and stores).
// Backward: reduce (partial sums of dz and dz*xhat, dz recomputed from x) -> per-(n, c) totals
// over the partials -> per-group and per-channel combinations (fixed order) -> one fused
// elementwise pass for dx (and grad_residual = dz).
//
// Two data paths:
//  * "rows" (channels_last, and any layout with L == 1): the tensor is a row-major (rows, C)
//    matrix. A block is a (lanes x ytile) tile: each thread owns V consecutive channels (one
//    16-byte vector) and walks the rows of its block's chunk with stride ytile, so a warp reads
//    contiguous memory. The per-channel parameters live in registers for the whole chunk.
//    Rows are split into segments (group norm: one per sample) and each segment into chunks.
//  * "runs" (NCHW): every reduction group is a sequence of M elements made of contiguous runs of
//    P elements (batch norm: the N planes of a channel; group norm: one contiguous run), split
//    into chunks of E elements; the elementwise passes are flat grid-stride loops.
// Every partition depends on the shape (and dtype) only, never on the device or on pointer
// alignment (a misaligned tensor is read element by element in the same order), so results
// are bitwise reproducible; no float atomics anywhere.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cnnkernels/common.h"
#include "cnnkernels/cuda_types.cuh"
#include "cnnkernels/norm.h"
#include "norm_kernel.h"

namespace cnnkernels {
namespace {

constexpr int kThreads = 256;
// How many blocks a reduction aims for (about one resident wave on an H100 / A100). Only the
// shape decides how many chunks a group is split into; this is the knob.
constexpr int64_t kTargetBlocks = 1024;
constexpr int kWarp = 32;
// Grid-stride loops launch at most this many blocks.
constexpr int64_t kMaxBlocks = int64_t{1} << 16;

// Elements per 16-byte vector.
template <typename T>
struct VecWidth {
  static constexpr int value = 16 / static_cast<int>(sizeof(T));
};

template <typename T, int V>
struct alignas(16) Pack {
  T v[V];
};

template <bool kVec, typename T, int V>
__device__ __forceinline__ void load_full(const T* p, acc_t<T> (&out)[V]) {
  if constexpr (kVec) {
    const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = to_acc(pk.v[v]);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = to_acc(p[v]);
  }
}

template <typename T, int V>
__device__ __forceinline__ void load_part(const T* p, int n, acc_t<T> (&out)[V]) {
#pragma unroll
  for (int v = 0; v < V; ++v) out[v] = v < n ? to_acc(p[v]) : acc_t<T>(0);
}

template <bool kVec, typename T, int V>
__device__ __forceinline__ void store_full(T* p, const acc_t<T> (&in)[V]) {
  if constexpr (kVec) {
    Pack<T, V> pk;
#pragma unroll
    for (int v = 0; v < V; ++v) pk.v[v] = from_acc<T>(in[v]);
    *reinterpret_cast<Pack<T, V>*>(p) = pk;
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) p[v] = from_acc<T>(in[v]);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_part(T* p, int n, const acc_t<T> (&in)[V]) {
#pragma unroll
  for (int v = 0; v < V; ++v) {
    if (v < n) p[v] = from_acc<T>(in[v]);
  }
}

// The V elements at p, or only the first n < V of them (the rest read as zeros).
template <bool kVec, typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, int n, acc_t<T> (&out)[V]) {
  if (n == V) {
    load_full<kVec>(p, out);
  } else {
    load_part(p, n, out);
  }
}

// load_vec of p + o for an optional operand: zeros where p is null.
template <bool kVec, typename T, typename Offset, int V>
__device__ __forceinline__ void load_vec_or_zero(const T* p, Offset o, int n, acc_t<T> (&out)[V]) {
  if (p == nullptr) {
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = acc_t<T>(0);
  } else if (n == V) {
    load_full<kVec>(p + o, out);
  } else {
    load_part(p + o, n, out);
  }
}

// The V elements at p, or only the first n < V of them.
template <bool kVec, typename T, int V>
__device__ __forceinline__ void store_vec(T* p, int n, const acc_t<T> (&in)[V]) {
  if (n == V) {
    store_full<kVec>(p, in);
  } else {
    store_part(p, n, in);
  }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---- partitions ------------------------------------------------------------------------------

// The "rows" path: segs segments of seg_rows rows of a (rows, C) matrix.
struct RowsPlan {
  int64_t C = 0;
  int lanes = 1;  // threads along the channels (each V channels)
  int ytile = kThreads;
  int64_t ctiles = 0;
  int64_t segs = 0, seg_rows = 0;
  int64_t chunks = 0, chunk_rows = 0;  // chunks per segment
  int64_t blocks() const { return segs * chunks; }
  int64_t partials() const { return segs * chunks * C; }
};

RowsPlan make_rows_plan(int V, int64_t C, int64_t segs, int64_t seg_rows) {
  RowsPlan p;
  p.C = C;
  const int64_t units = ceil_div<int64_t>(C, V);
  while (p.lanes < kWarp && p.lanes < units) p.lanes *= 2;
  p.ytile = kThreads / p.lanes;
  p.ctiles = ceil_div<int64_t>(C, int64_t{p.lanes} * V);
  p.segs = segs;
  p.seg_rows = seg_rows;
  const int64_t max_chunks = std::max<int64_t>(1, ceil_div<int64_t>(seg_rows, int64_t{p.ytile} * 4));
  const int64_t want = std::max<int64_t>(1, ceil_div<int64_t>(kTargetBlocks, std::max<int64_t>(1, p.ctiles * segs)));
  int64_t chunks = std::min(want, max_chunks);
  p.chunk_rows = std::max<int64_t>(p.ytile, round_up<int64_t>(ceil_div<int64_t>(seg_rows, chunks), p.ytile));
  p.chunks = std::max<int64_t>(1, ceil_div<int64_t>(seg_rows, p.chunk_rows));
  return p;
}

dim3 rows_grid(const RowsPlan& p) { return dim3(static_cast<unsigned>(p.blocks()), static_cast<unsigned>(p.ctiles)); }
dim3 rows_block(const RowsPlan& p) { return dim3(p.lanes, p.ytile); }

// What one thread of a rows-path block covers. Block x is chunk k of segment seg (x = seg *
// chunks + k): the rows [r0, r1), which the thread walks from r0 + threadIdx.y with stride
// step (= ytile); block y and threadIdx.x give the nc channels from c0 it owns (nc <= V, 0 past
// the last channel).
struct RowsTile {
  int64_t seg, c0, r0, r1, step;
  int nc;
};

template <int V>
__device__ __forceinline__ RowsTile rows_tile(const RowsPlan& pl) {
  RowsTile t;
  const int64_t k = blockIdx.x % pl.chunks;
  t.seg = blockIdx.x / pl.chunks;
  t.c0 = (int64_t{blockIdx.y} * pl.lanes + threadIdx.x) * V;
  t.nc = static_cast<int>(std::min<int64_t>(std::max<int64_t>(pl.C - t.c0, 0), V));
  t.r0 = t.seg * pl.seg_rows + k * pl.chunk_rows;
  t.r1 = std::min(t.r0 + pl.chunk_rows, (t.seg + 1) * pl.seg_rows);
  t.step = pl.ytile;
  return t;
}

// Fixed-order tree over the rows of a rows-path tile: afterwards the threads of row 0 hold, for
// each of their V channels, the sums over the tile of the K accumulators in acc. red is
// K x V x kThreads shared memory.
template <int K, int V, typename A>
__device__ __forceinline__ void rows_tile_sum(const RowsPlan& pl, A (&acc)[K][V], A (&red)[K][V][kThreads]) {
  const int ly = threadIdx.y;
  const int t = ly * pl.lanes + threadIdx.x;
#pragma unroll
  for (int i = 0; i < K; ++i) {
#pragma unroll
    for (int v = 0; v < V; ++v) red[i][v][t] = acc[i][v];
  }
  for (int s = pl.ytile / 2; s > 0; s >>= 1) {
    __syncthreads();
    if (ly < s) {
      const int o = t + s * pl.lanes;
#pragma unroll
      for (int v = 0; v < V; ++v) {
#pragma unroll
        for (int i = 0; i < K; ++i) {
          acc[i][v] += red[i][v][o];
          red[i][v][t] = acc[i][v];
        }
      }
    }
  }
}

// A per-channel partial of block x, written by row 0 of the tile: out[x*C + c0 + v], v < nc.
template <int V, typename A>
__device__ __forceinline__ void store_tile_partial(A* out, const RowsPlan& pl, const RowsTile& t, const A (&val)[V]) {
  const int64_t base = int64_t{blockIdx.x} * pl.C + t.c0;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    if (v < t.nc) out[base + v] = val[v];
  }
}

// The "runs" path: S groups of M elements; element e of group s lies at
// s*base_stride + (e / P)*run_stride + e % P. Chunks of E elements (a multiple of V).
struct RunsPlan {
  int64_t S = 0, M = 0, P = 1, run_stride = 0, base_stride = 0;
  int threads = kThreads;
  int64_t chunks = 0, E = 0;
  bool small = true;  // offsets fit 32-bit arithmetic
  int64_t partials() const { return S * chunks; }
};

RunsPlan make_runs_plan(int V, int64_t S, int64_t M, int64_t P, int64_t run_stride, int64_t base_stride) {
  RunsPlan p;
  p.S = S;
  p.M = M;
  p.P = std::max<int64_t>(P, 1);
  p.run_stride = run_stride;
  p.base_stride = base_stride;
  p.threads = M >= 2048 ? kThreads : 64;
  const int64_t max_chunks = std::max<int64_t>(1, ceil_div<int64_t>(M, int64_t{p.threads} * V * 4));
  const int64_t want = std::max<int64_t>(1, ceil_div<int64_t>(kTargetBlocks, std::max<int64_t>(1, S)));
  const int64_t chunks = std::min(want, max_chunks);
  p.E = std::max<int64_t>(V, round_up<int64_t>(ceil_div<int64_t>(M, chunks), V));
  p.chunks = std::max<int64_t>(1, ceil_div<int64_t>(M, p.E));
  p.small = M + int64_t{p.threads} * V * 2 < (int64_t{1} << 31);
  return p;
}

struct RunsIndex {
  int64_t P, run_stride;
  bool small;
  __device__ __forceinline__ int64_t operator()(int64_t e) const {
    if (small) {
      const uint32_t ue = static_cast<uint32_t>(e), up = static_cast<uint32_t>(P);
      const uint32_t q = ue / up;
      return int64_t{q} * run_stride + (ue - q * up);
    }
    const int64_t q = e / P;
    return q * run_stride + (e - q * P);
  }
};

// What one block of the runs path covers. Block x is chunk k of group s (x = s * chunks + k):
// the elements [e0, e1) of the group, element e at off + at(e). A thread takes the V elements
// from e0 + threadIdx.x * V, then every step-th (step = blockDim.x * V).
struct RunsChunk {
  int64_t s, off, e0, e1, step;
  RunsIndex at;
};

template <int V>
__device__ __forceinline__ RunsChunk runs_chunk(const RunsPlan& pl) {
  RunsChunk r;
  const int64_t k = blockIdx.x % pl.chunks;
  r.s = blockIdx.x / pl.chunks;
  r.off = r.s * pl.base_stride;
  r.e0 = k * pl.E;
  r.e1 = std::min(r.e0 + pl.E, pl.M);
  r.step = int64_t{blockDim.x} * V;
  r.at = RunsIndex{pl.P, pl.run_stride, pl.small};
  return r;
}

// Which statistics a (sample, channel) pair uses.
struct StatIndex {
  int64_t nstride;  // batch norm 0, group norm G
  int64_t cpg;      // channels per group (batch norm 1)
  __device__ __forceinline__ int64_t operator()(int64_t n, int64_t c) const { return n * nstride + c / cpg; }
};

// Per-channel (and per-statistic) parameters of the elementwise passes, acc_t.
template <typename A>
struct NormParams {
  const A* mean;
  const A* rstd;
  const A* weight;  // nullable
  const A* bias;    // nullable
  const A* sum_dy;       // backward, per statistic: sum w*dz
  const A* sum_dy_xhat;  // backward, per statistic: sum w*dz*xhat
  A inv_count;
  StatIndex stat;
  Activation act;
  bool training;
};

template <typename A>
struct ChannelParams {
  A mean, rstd, w, b, sdy, sdyx;
};

template <typename A>
__device__ __forceinline__ ChannelParams<A> channel_params(const NormParams<A>& q, int64_t n, int64_t c,
                                                          bool backward) {
  ChannelParams<A> r;
  const int64_t s = q.stat(n, c);
  r.mean = q.mean[s];
  r.rstd = q.rstd[s];
  r.w = q.weight != nullptr ? q.weight[c] : A(1);
  r.b = q.bias != nullptr ? q.bias[c] : A(0);
  r.sdy = A(0);
  r.sdyx = A(0);
  if (backward && q.training) {
    r.sdy = q.sum_dy[s];
    r.sdyx = q.sum_dy_xhat[s];
  }
  return r;
}

// The parameters of the V channels from c0 of sample n; those past the nc valid ones repeat
// channel c0 (loaded, never used).
template <int V, typename A>
__device__ __forceinline__ void channel_params_vec(const NormParams<A>& q, int64_t n, int64_t c0, int nc,
                                                   bool backward, ChannelParams<A> (&cp)[V]) {
#pragma unroll
  for (int v = 0; v < V; ++v) cp[v] = channel_params(q, n, c0 + (v < nc ? v : 0), backward);
}

// Forward value of one element.
template <typename A>
__device__ __forceinline__ A forward_value(const ChannelParams<A>& p, A x, A res, Activation act) {
  const A z = (x - p.mean) * p.rstd * p.w + p.b + res;
  return activation_forward(act, z);
}

// dz of one element (and its xhat).
template <typename A>
__device__ __forceinline__ A grad_at_z(const ChannelParams<A>& p, A x, A dy, A res, Activation act, A& xhat) {
  xhat = (x - p.mean) * p.rstd;
  if (act == Activation::None) return dy;
  const A z = xhat * p.w + p.b + res;
  return activation_backward(act, dy, z);
}

template <typename A>
__device__ __forceinline__ A grad_input_value(const ChannelParams<A>& p, A dz, A xhat, A inv_count, bool training) {
  if (!training) return p.rstd * p.w * dz;
  return norm_input_grad(p.w * dz, xhat, p.rstd, p.sdy, p.sdyx, inv_count);
}

// ---- Welford helpers ---------------------------------------------------------------------------

// V running statistics that saw the same number of values (one division per step).
template <typename A, int V>
__device__ __forceinline__ void welford_step(A& count, A (&mean)[V], A (&m2)[V], const A (&x)[V]) {
  count += A(1);
  const A inv = A(1) / count;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const A d = x[v] - mean[v];
    mean[v] += d * inv;
    m2[v] += d * (x[v] - mean[v]);
  }
}

template <typename A>
__device__ __forceinline__ Welford<A> shfl_down_welford(const Welford<A>& w, int offset) {
  Welford<A> r;
  r.count = __shfl_down_sync(0xffffffffu, w.count, offset);
  r.mean = __shfl_down_sync(0xffffffffu, w.mean, offset);
  r.m2 = __shfl_down_sync(0xffffffffu, w.m2, offset);
  return r;
}

// ---- rows path: statistics -------------------------------------------------------------------

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    rows_welford_kernel(const T* __restrict__ x, RowsPlan pl, acc_t<T>* __restrict__ pc, acc_t<T>* __restrict__ pm,
                        acc_t<T>* __restrict__ pm2) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  __shared__ A s_cnt[kThreads];
  __shared__ A s_mean[V][kThreads];
  __shared__ A s_m2[V][kThreads];

  const int lx = threadIdx.x, ly = threadIdx.y;
  const RowsTile tile = rows_tile<V>(pl);
  const int64_t r1 = tile.r1, step = tile.step;
  const int nc = tile.nc;

  A count = A(0), mean[V], m2[V];
#pragma unroll
  for (int v = 0; v < V; ++v) mean[v] = m2[v] = A(0);

  const T* p = x + tile.c0;
  if (nc == V) {
    int64_t r = tile.r0 + ly;
    for (; r + 3 * step < r1; r += 4 * step) {
      A a0[V], a1[V], a2[V], a3[V];
      load_full<kVec>(p + r * pl.C, a0);
      load_full<kVec>(p + (r + step) * pl.C, a1);
      load_full<kVec>(p + (r + 2 * step) * pl.C, a2);
      load_full<kVec>(p + (r + 3 * step) * pl.C, a3);
      welford_step(count, mean, m2, a0);
      welford_step(count, mean, m2, a1);
      welford_step(count, mean, m2, a2);
      welford_step(count, mean, m2, a3);
    }
    for (; r < r1; r += step) {
      A a0[V];
      load_full<kVec>(p + r * pl.C, a0);
      welford_step(count, mean, m2, a0);
    }
  } else if (nc > 0) {
    for (int64_t r = tile.r0 + ly; r < r1; r += step) {
      A a0[V];
      load_part(p + r * pl.C, nc, a0);
      welford_step(count, mean, m2, a0);
    }
  }

  // Fixed-order tree over the rows of the tile.
  const int t = ly * pl.lanes + lx;
  s_cnt[t] = count;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    s_mean[v][t] = mean[v];
    s_m2[v][t] = m2[v];
  }
  for (int s = pl.ytile / 2; s > 0; s >>= 1) {
    __syncthreads();
    if (ly < s) {
      const int o = t + s * pl.lanes;
      const A cb = s_cnt[o];
      A merged_count = count;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        Welford<A> a, b;
        a.count = count;
        a.mean = mean[v];
        a.m2 = m2[v];
        b.count = cb;
        b.mean = s_mean[v][o];
        b.m2 = s_m2[v][o];
        const Welford<A> r = welford_merge(a, b);
        mean[v] = r.mean;
        m2[v] = r.m2;
        merged_count = r.count;
      }
      count = merged_count;
      s_cnt[t] = count;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        s_mean[v][t] = mean[v];
        s_m2[v][t] = m2[v];
      }
    }
  }
  if (ly == 0) {
    A counts[V];
#pragma unroll
    for (int v = 0; v < V; ++v) counts[v] = count;
    store_tile_partial(pc, pl, tile, counts);
    store_tile_partial(pm, pl, tile, mean);
    store_tile_partial(pm2, pl, tile, m2);
  }
}

// ---- runs path: statistics -------------------------------------------------------------------

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    runs_welford_kernel(const T* __restrict__ x, RunsPlan pl, acc_t<T>* __restrict__ pc, acc_t<T>* __restrict__ pm,
                        acc_t<T>* __restrict__ pm2) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  __shared__ A s_cnt[kThreads];
  __shared__ A s_mean[kThreads];
  __shared__ A s_m2[kThreads];

  const int tid = threadIdx.x, nt = blockDim.x;
  const RunsChunk ch = runs_chunk<V>(pl);
  const T* base = x + ch.off;
  const RunsIndex at = ch.at;
  const int64_t e1 = ch.e1, step = ch.step;

  A count = A(0), mean[V], m2[V];
#pragma unroll
  for (int v = 0; v < V; ++v) mean[v] = m2[v] = A(0);
  Welford<A> tail;

  int64_t e = ch.e0 + int64_t{tid} * V;
  if constexpr (kVec) {
    // Two vectors in flight per thread.
    for (; e + step + V <= e1; e += 2 * step) {
      A a0[V], a1[V];
      load_full<true>(base + at(e), a0);
      load_full<true>(base + at(e + step), a1);
      welford_step(count, mean, m2, a0);
      welford_step(count, mean, m2, a1);
    }
  }
  for (; e < e1; e += step) {
    const int n = static_cast<int>(std::min<int64_t>(V, e1 - e));
    if (n == V) {
      A a0[V];
      if constexpr (kVec) {
        load_full<true>(base + at(e), a0);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) a0[v] = to_acc(base[at(e + v)]);
      }
      welford_step(count, mean, m2, a0);
    } else {
      for (int v = 0; v < n; ++v) welford_add(tail, to_acc(base[at(e + v)]));
    }
  }
  Welford<A> w;
  w.count = count;
  w.mean = mean[0];
  w.m2 = m2[0];
#pragma unroll
  for (int v = 1; v < V; ++v) {
    Welford<A> b;
    b.count = count;
    b.mean = mean[v];
    b.m2 = m2[v];
    w = welford_merge(w, b);
  }
  w = welford_merge(w, tail);

  s_cnt[tid] = w.count;
  s_mean[tid] = w.mean;
  s_m2[tid] = w.m2;
  for (int h = nt / 2; h > 0; h >>= 1) {
    __syncthreads();
    if (tid < h) {
      Welford<A> b;
      b.count = s_cnt[tid + h];
      b.mean = s_mean[tid + h];
      b.m2 = s_m2[tid + h];
      w = welford_merge(w, b);
      s_cnt[tid] = w.count;
      s_mean[tid] = w.mean;
      s_m2[tid] = w.m2;
    }
  }
  if (tid == 0) {
    pc[blockIdx.x] = w.count;
    pm[blockIdx.x] = w.mean;
    pm2[blockIdx.x] = w.m2;
  }
}

// ---- finalize statistics -----------------------------------------------------------------------

// Where the partials of statistic s lie: item i (0 <= i < items) at
// (s / sdiv)*sa + (s % sdiv)*sb + (i / inner)*outer_stride + (i % inner)*inner_stride.
struct MergeGeom {
  int64_t stats, sdiv, sa, sb, items, inner, outer_stride, inner_stride;
  __device__ __forceinline__ int64_t offset(int64_t s, int64_t i) const {
    return (s / sdiv) * sa + (s % sdiv) * sb + (i / inner) * outer_stride + (i % inner) * inner_stride;
  }
};

template <typename A>
__global__ void __launch_bounds__(kThreads)
    finalize_stats_kernel(const A* __restrict__ pc, const A* __restrict__ pm, const A* __restrict__ pm2, MergeGeom g,
                          A eps, A* __restrict__ mean_out, A* __restrict__ rstd_out, const A* __restrict__ running_mean,
                          const A* __restrict__ running_var, A* __restrict__ new_mean, A* __restrict__ new_var,
                          A momentum) {
  const int64_t s = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (s >= g.stats) return;  // whole warps leave together
  Welford<A> w;
  for (int64_t i = lane; i < g.items; i += kWarp) {
    const int64_t o = g.offset(s, i);
    Welford<A> b;
    b.count = pc[o];
    b.mean = pm[o];
    b.m2 = pm2[o];
    w = welford_merge(w, b);
  }
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const Welford<A> b = shfl_down_welford(w, off);
    w = welford_merge(w, b);
  }
  if (lane == 0) {
    const A var = welford_variance(w);
    mean_out[s] = w.mean;
    rstd_out[s] = rstd_from_variance(var, eps);
    if (new_mean != nullptr) {
      new_mean[s] = running_update(running_mean[s], w.mean, momentum);
      new_var[s] = running_update(running_var[s], unbiased_variance(var, w.count), momentum);
    }
  }
}

template <typename A>
__global__ void eval_stats_kernel(const A* __restrict__ running_mean, const A* __restrict__ running_var, int64_t C,
                                  A eps, A* __restrict__ mean_out, A* __restrict__ rstd_out) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= C) return;
  mean_out[c] = running_mean[c];
  rstd_out[c] = rstd_from_variance(running_var[c], eps);
}

// ---- rows path: elementwise passes -------------------------------------------------------------

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    rows_forward_kernel(const T* __restrict__ x, const T* __restrict__ residual, T* __restrict__ y, RowsPlan pl,
                        NormParams<acc_t<T>> q) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  const RowsTile tile = rows_tile<V>(pl);
  const int nc = tile.nc;
  if (nc == 0) return;

  ChannelParams<A> cp[V];
  channel_params_vec(q, tile.seg, tile.c0, nc, false, cp);

  const Activation act = q.act;
  for (int64_t r = tile.r0 + threadIdx.y; r < tile.r1; r += tile.step) {
    const int64_t o = r * pl.C + tile.c0;
    A xv[V], rv[V], out[V];
    // One branch on nc around both loads: two separate load_vec branches make ptxas spill the
    // 16-bit instantiations.
    if (nc == V) {
      load_full<kVec>(x + o, xv);
      load_vec_or_zero<kVec>(residual, o, V, rv);
    } else {
      load_part(x + o, nc, xv);
      load_vec_or_zero<kVec>(residual, o, nc, rv);
    }
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = forward_value(cp[v], xv[v], rv[v], act);
    store_vec<kVec>(y + o, nc, out);
  }
}

// Partial sums of dz and dz*xhat per (segment, chunk, channel).
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    rows_grad_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ residual,
                          RowsPlan pl, NormParams<acc_t<T>> q, acc_t<T>* __restrict__ part_dz,
                          acc_t<T>* __restrict__ part_dzx) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  __shared__ A s_sums[2][V][kThreads];

  const RowsTile tile = rows_tile<V>(pl);
  const int nc = tile.nc;

  A sums[2][V];  // dz, dz*xhat
#pragma unroll
  for (int v = 0; v < V; ++v) sums[0][v] = sums[1][v] = A(0);

  if (nc > 0) {
    ChannelParams<A> cp[V];
    channel_params_vec(q, tile.seg, tile.c0, nc, false, cp);
    const Activation act = q.act;
    const T* res = act != Activation::None ? residual : nullptr;
    for (int64_t r = tile.r0 + threadIdx.y; r < tile.r1; r += tile.step) {
      const int64_t o = r * pl.C + tile.c0;
      A xv[V], gv[V], rv[V];
      load_vec<kVec>(x + o, nc, xv);
      load_vec<kVec>(dy + o, nc, gv);
      load_vec_or_zero<kVec>(res, o, nc, rv);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        A xhat;
        const A dz = grad_at_z(cp[v], xv[v], gv[v], rv[v], act, xhat);
        sums[0][v] += dz;
        sums[1][v] += dz * xhat;
      }
    }
  }

  rows_tile_sum(pl, sums, s_sums);
  if (threadIdx.y == 0) {
    store_tile_partial(part_dz, pl, tile, sums[0]);
    store_tile_partial(part_dzx, pl, tile, sums[1]);
  }
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    rows_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ residual,
                         T* __restrict__ dx, T* __restrict__ dres, RowsPlan pl, NormParams<acc_t<T>> q) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  const RowsTile tile = rows_tile<V>(pl);
  const int nc = tile.nc;
  if (nc == 0) return;

  ChannelParams<A> cp[V];
  channel_params_vec(q, tile.seg, tile.c0, nc, true, cp);
  const Activation act = q.act;
  const T* res = act != Activation::None ? residual : nullptr;
  for (int64_t r = tile.r0 + threadIdx.y; r < tile.r1; r += tile.step) {
    const int64_t o = r * pl.C + tile.c0;
    A xv[V], gv[V], rv[V], dzv[V], dxv[V];
    load_vec<kVec>(x + o, nc, xv);
    load_vec<kVec>(dy + o, nc, gv);
    load_vec_or_zero<kVec>(res, o, nc, rv);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      A xhat;
      dzv[v] = grad_at_z(cp[v], xv[v], gv[v], rv[v], act, xhat);
      dxv[v] = grad_input_value(cp[v], dzv[v], xhat, q.inv_count, q.training);
    }
    store_vec<kVec>(dx + o, nc, dxv);
    if (dres != nullptr) store_vec<kVec>(dres + o, nc, dzv);
  }
}

// ---- runs path: gradient sums ------------------------------------------------------------------
// Every group of the runs path lies inside one channel (batch norm: channel s; group norm's
// backward: the plane s = n*C + c), so its parameters are uniform over the block.

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    runs_grad_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ residual,
                          RunsPlan pl, int64_t C, NormParams<acc_t<T>> q, acc_t<T>* __restrict__ part_dz,
                          acc_t<T>* __restrict__ part_dzx) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  __shared__ A s_dz[kThreads];
  __shared__ A s_dzx[kThreads];

  const int tid = threadIdx.x, nt = blockDim.x;
  const RunsChunk ch = runs_chunk<V>(pl);
  const int64_t off = ch.off, e1 = ch.e1;
  const RunsIndex at = ch.at;
  const ChannelParams<A> cp = channel_params(q, ch.s / C, ch.s % C, false);
  const Activation act = q.act;
  const bool need_res = residual != nullptr && act != Activation::None;

  A sdz = A(0), sdzx = A(0);
  for (int64_t e = ch.e0 + int64_t{tid} * V; e < e1; e += ch.step) {
    const int n = static_cast<int>(std::min<int64_t>(V, e1 - e));
    A xv[V], gv[V], rv[V];
    if (kVec && n == V) {
      const int64_t o = off + at(e);
      load_full<true>(x + o, xv);
      load_full<true>(dy + o, gv);
      load_vec_or_zero<true>(need_res ? residual : nullptr, o, V, rv);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        if (v < n) {
          const int64_t o = off + at(e + v);
          xv[v] = to_acc(x[o]);
          gv[v] = to_acc(dy[o]);
          rv[v] = need_res ? to_acc(residual[o]) : A(0);
        }
      }
    }
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (v < n) {
        A xhat;
        const A dz = grad_at_z(cp, xv[v], gv[v], rv[v], act, xhat);
        sdz += dz;
        sdzx += dz * xhat;
      }
    }
  }
  s_dz[tid] = sdz;
  s_dzx[tid] = sdzx;
  for (int h = nt / 2; h > 0; h >>= 1) {
    __syncthreads();
    if (tid < h) {
      sdz += s_dz[tid + h];
      sdzx += s_dzx[tid + h];
      s_dz[tid] = sdz;
      s_dzx[tid] = sdzx;
    }
  }
  if (tid == 0) {
    part_dz[blockIdx.x] = sdz;
    part_dzx[blockIdx.x] = sdzx;
  }
}

// ---- flat elementwise passes (NCHW) --------------------------------------------------------------
// kMode 0: one element per unit; 1: V elements of one plane (L % V == 0); 2: V consecutive
// channels of one (n, l) (L == 1, C % V == 0).
template <typename Index>
struct FlatGeom {
  Index C, L, units;
};

template <typename T, int kMode, typename Index>
__device__ __forceinline__ void flat_unit_channels(const FlatGeom<Index>& g, Index e, int64_t& n, int64_t& c) {
  if constexpr (kMode == 2) {
    const Index q = e / g.C;
    n = q;
    c = e - q * g.C;
  } else {
    const Index p = e / g.L;
    const Index q = p / g.C;
    n = q;
    c = p - q * g.C;
  }
}

template <typename T, int kMode, typename Index>
__global__ void __launch_bounds__(kThreads)
    flat_forward_kernel(const T* __restrict__ x, const T* __restrict__ residual, T* __restrict__ y, FlatGeom<Index> g,
                        NormParams<acc_t<T>> q) {
  using A = acc_t<T>;
  constexpr int V = kMode == 0 ? 1 : VecWidth<T>::value;
  const Activation act = q.act;
  for (Index u = Index(blockIdx.x) * kThreads + threadIdx.x; u < g.units; u += Index(gridDim.x) * kThreads) {
    const Index e = u * V;
    int64_t n, c;
    flat_unit_channels<T, kMode>(g, e, n, c);
    A xv[V], rv[V], out[V];
    load_full<kMode != 0>(x + e, xv);
    load_vec_or_zero<kMode != 0>(residual, e, V, rv);
    if constexpr (kMode == 2) {
#pragma unroll
      for (int v = 0; v < V; ++v) out[v] = forward_value(channel_params(q, n, c + v, false), xv[v], rv[v], act);
    } else {
      const ChannelParams<A> cp = channel_params(q, n, c, false);
#pragma unroll
      for (int v = 0; v < V; ++v) out[v] = forward_value(cp, xv[v], rv[v], act);
    }
    store_full<kMode != 0>(y + e, out);
  }
}

template <typename T, int kMode, typename Index>
__global__ void __launch_bounds__(kThreads)
    flat_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ residual,
                         T* __restrict__ dx, T* __restrict__ dres, FlatGeom<Index> g, NormParams<acc_t<T>> q) {
  using A = acc_t<T>;
  constexpr int V = kMode == 0 ? 1 : VecWidth<T>::value;
  const Activation act = q.act;
  const bool need_res = residual != nullptr && act != Activation::None;
  for (Index u = Index(blockIdx.x) * kThreads + threadIdx.x; u < g.units; u += Index(gridDim.x) * kThreads) {
    const Index e = u * V;
    int64_t n, c;
    flat_unit_channels<T, kMode>(g, e, n, c);
    A xv[V], gv[V], rv[V], dzv[V], dxv[V];
    load_full<kMode != 0>(x + e, xv);
    load_full<kMode != 0>(dy + e, gv);
    if (need_res) {
      load_full<kMode != 0>(residual + e, rv);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) rv[v] = A(0);
    }
    if constexpr (kMode == 2) {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const ChannelParams<A> cp = channel_params(q, n, c + v, true);
        A xhat;
        dzv[v] = grad_at_z(cp, xv[v], gv[v], rv[v], act, xhat);
        dxv[v] = grad_input_value(cp, dzv[v], xhat, q.inv_count, q.training);
      }
    } else {
      const ChannelParams<A> cp = channel_params(q, n, c, true);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        A xhat;
        dzv[v] = grad_at_z(cp, xv[v], gv[v], rv[v], act, xhat);
        dxv[v] = grad_input_value(cp, dzv[v], xhat, q.inv_count, q.training);
      }
    }
    store_full<kMode != 0>(dx + e, dxv);
    if (dres != nullptr) store_full<kMode != 0>(dres + e, dzv);
  }
}

// ---- backward combination ----------------------------------------------------------------------

// Per (n, c) totals over the chunks: item = n*C + c, chunk k at
// (item / C)*ia + (item % C)*ib + k*kstride.
template <typename A>
__global__ void __launch_bounds__(kThreads)
    grad_totals_kernel(const A* __restrict__ part_dz, const A* __restrict__ part_dzx, int64_t items, int64_t C,
                       int64_t chunks, int64_t ia, int64_t ib, int64_t kstride, A* __restrict__ nc_dz,
                       A* __restrict__ nc_dzx) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= items) return;
  const int64_t base = (i / C) * ia + (i % C) * ib;
  A a = A(0), b = A(0);
  for (int64_t k = 0; k < chunks; ++k) {
    a += part_dz[base + k * kstride];
    b += part_dzx[base + k * kstride];
  }
  nc_dz[i] = a;
  nc_dzx[i] = b;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Warp tasks [0, N*G): statistic (n, g): sum_dy = sum_c w_c*nc_dz[n, c], sum_dy_xhat likewise.
// Warp tasks [N*G, N*G + C): channel c: grad_bias = sum_n nc_dz[n, c], grad_weight likewise.
template <typename A>
__global__ void __launch_bounds__(kThreads)
    grad_combine_kernel(const A* __restrict__ nc_dz, const A* __restrict__ nc_dzx, const A* __restrict__ weight,
                        int64_t N, int64_t G, int64_t cpg, A* __restrict__ sum_dy, A* __restrict__ sum_dy_xhat,
                        A* __restrict__ grad_weight, A* __restrict__ grad_bias) {
  const int64_t task = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t C = G * cpg;
  if (task < N * G) {
    const int64_t n = task / G, g = task % G;
    A a = A(0), b = A(0);
    for (int64_t j = lane; j < cpg; j += kWarp) {
      const int64_t c = g * cpg + j;
      const A w = weight != nullptr ? weight[c] : A(1);
      a += w * nc_dz[n * C + c];
      b += w * nc_dzx[n * C + c];
    }
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0) {
      sum_dy[task] = a;
      sum_dy_xhat[task] = b;
    }
  } else if (task < N * G + C) {
    const int64_t c = task - N * G;
    A a = A(0), b = A(0);
    for (int64_t n = lane; n < N; n += kWarp) {
      a += nc_dz[n * C + c];
      b += nc_dzx[n * C + c];
    }
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0) {
      grad_bias[c] = a;
      grad_weight[c] = b;
    }
  }
}

// ---- launch helpers ----------------------------------------------------------------------------

unsigned warp_blocks(int64_t warps) { return static_cast<unsigned>(ceil_div<int64_t>(warps * kWarp, kThreads)); }
unsigned thread_blocks(int64_t n) { return static_cast<unsigned>(ceil_div<int64_t>(n, kThreads)); }

// Which data path a batch/group norm call takes, and its partition.
struct NormPlan {
  bool rows = false;  // rows path for the reductions
  bool rows_apply = false;
  RowsPlan rp;      // reductions (rows path) and the rows elementwise passes
  RunsPlan np;      // reductions (runs path)
  int64_t stats = 0;  // C (batch norm) or N*G
  int64_t cpg = 1;
  int64_t count = 0;  // elements per statistic
};

template <typename T>
NormPlan plan_forward(const NormGeometry& g) {
  constexpr int V = VecWidth<T>::value;
  NormPlan p;
  const int64_t N = g.batch, C = g.channels, L = g.inner;
  const bool row_major = g.channels_last || L == 1;
  if (g.groups == 0) {
    p.stats = C;
    p.cpg = 1;
    p.count = N * L;
    p.rows = p.rows_apply = row_major;
    if (row_major) {
      p.rp = make_rows_plan(V, C, 1, N * L);
    } else {
      p.np = make_runs_plan(V, C, N * L, L, C * L, L);
    }
  } else {
    const int64_t G = g.groups, cpg = C / G;
    p.stats = N * G;
    p.cpg = cpg;
    p.count = cpg * L;
    // A group of a channels_last tensor is a (L, C/G) block of a (N*L, C) matrix: the rows path
    // with one segment per sample. With L == 1 (layer norm) a group is one contiguous run.
    p.rows = p.rows_apply = g.channels_last && L > 1;
    if (p.rows) {
      p.rp = make_rows_plan(V, C, N, L);
    } else {
      p.np = make_runs_plan(V, N * G, cpg * L, cpg * L, 0, cpg * L);
    }
  }
  return p;
}

template <typename T>
NormPlan plan_backward(const NormGeometry& g) {
  constexpr int V = VecWidth<T>::value;
  NormPlan p = plan_forward<T>(g);
  if (g.groups != 0) {
    const int64_t N = g.batch, C = g.channels, L = g.inner;
    // Per-(n, c) sums: rows path with one segment per sample, or runs over the planes.
    p.rows = g.channels_last || L == 1;
    if (p.rows) {
      p.rp = make_rows_plan(V, C, N, L);
    } else {
      p.np = make_runs_plan(V, N * C, L, L, 0, L);
    }
    p.rows_apply = g.channels_last && L > 1;
    if (p.rows_apply) p.rp = make_rows_plan(V, C, N, L);
  }
  return p;
}

template <typename A>
NormParams<A> norm_params(const NormGeometry& g, const NormPlan& p, const void* mean, const void* rstd,
                          const void* weight, const void* bias, Activation act, bool training) {
  NormParams<A> q;
  q.mean = static_cast<const A*>(mean);
  q.rstd = static_cast<const A*>(rstd);
  q.weight = static_cast<const A*>(weight);
  q.bias = static_cast<const A*>(bias);
  q.sum_dy = nullptr;
  q.sum_dy_xhat = nullptr;
  q.inv_count = p.count > 0 ? A(1) / static_cast<A>(p.count) : A(0);
  q.stat.nstride = g.groups == 0 ? 0 : g.groups;
  q.stat.cpg = p.cpg;
  q.act = act;
  q.training = training;
  return q;
}

// The flat NCHW elementwise pass: picks the unit (vector within a plane, vector across channels
// for L == 1, or single elements) and the index width.
template <typename T, template <typename, int, typename> class Launch, class... Args>
cudaError_t launch_flat(const NormGeometry& g, bool aligned, cudaStream_t stream, Args... args) {
  constexpr int V = VecWidth<T>::value;
  const int64_t numel = g.batch * g.channels * g.inner;
  int mode = 0;
  if (aligned && g.inner % V == 0) {
    mode = 1;
  } else if (aligned && g.inner == 1 && g.channels % V == 0) {
    mode = 2;
  }
  const int64_t units = mode == 0 ? numel : numel / V;
  const auto blocks = static_cast<unsigned>(std::min(ceil_div<int64_t>(units, kThreads), kMaxBlocks));
  auto go = [&](auto index_tag) {
    using Index = decltype(index_tag);
    FlatGeom<Index> fg{static_cast<Index>(g.channels), static_cast<Index>(g.inner), static_cast<Index>(units)};
    if (mode == 1) {
      Launch<T, 1, Index>::run(blocks, stream, fg, args...);
    } else if (mode == 2) {
      Launch<T, 2, Index>::run(blocks, stream, fg, args...);
    } else {
      Launch<T, 0, Index>::run(blocks, stream, fg, args...);
    }
  };
  // 32-bit indices while every element offset (plus a grid stride) fits.
  if (numel + int64_t{kMaxBlocks} * kThreads * V < (int64_t{1} << 32)) {
    go(uint32_t{});
  } else {
    go(uint64_t{});
  }
  return cudaGetLastError();
}

template <typename T, int kMode, typename Index>
struct FlatForward {
  static void run(unsigned blocks, cudaStream_t stream, const FlatGeom<Index>& fg, const T* x, const T* res, T* y,
                  const NormParams<acc_t<T>>& q) {
    flat_forward_kernel<T, kMode, Index><<<blocks, kThreads, 0, stream>>>(x, res, y, fg, q);
  }
};

template <typename T, int kMode, typename Index>
struct FlatBackward {
  static void run(unsigned blocks, cudaStream_t stream, const FlatGeom<Index>& fg, const T* dy, const T* x,
                  const T* res, T* dx, T* dres, const NormParams<acc_t<T>>& q) {
    flat_backward_kernel<T, kMode, Index><<<blocks, kThreads, 0, stream>>>(dy, x, res, dx, dres, fg, q);
  }
};

template <typename T>
int64_t forward_workspace(const NormGeometry& g) {
  const NormPlan p = plan_forward<T>(g);
  return 3 * (p.rows ? p.rp.partials() : p.np.partials());
}

template <typename T>
int64_t backward_workspace(const NormGeometry& g) {
  const NormPlan p = plan_backward<T>(g);
  const int64_t N = g.groups == 0 ? 1 : g.batch;
  return 2 * (p.rows ? p.rp.partials() : p.np.partials()) + 2 * N * g.channels + 2 * p.stats;
}

template <typename T>
cudaError_t norm_forward(const NormForwardArgs& a, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  const NormGeometry& g = a.g;
  const NormPlan p = plan_forward<T>(g);
  const T* x = static_cast<const T*>(a.input);
  const T* res = static_cast<const T*>(a.residual);
  T* y = static_cast<T*>(a.output);
  A* mean = static_cast<A*>(a.save_mean);
  A* rstd = static_cast<A*>(a.save_rstd);
  const A eps = static_cast<A>(a.eps);
  const bool batch_stats = g.groups != 0 || a.training;

  if (batch_stats) {
    A* ws = static_cast<A*>(a.workspace);
    const int64_t np = p.rows ? p.rp.partials() : p.np.partials();
    A* pc = ws;
    A* pm = ws + np;
    A* pm2 = ws + 2 * np;
    MergeGeom mg{};
    mg.stats = p.stats;
    if (p.rows) {
      const bool vec = aligned16(x) && g.channels % V == 0;
      if (vec) {
        rows_welford_kernel<T, true><<<rows_grid(p.rp), rows_block(p.rp), 0, stream>>>(x, p.rp, pc, pm, pm2);
      } else {
        rows_welford_kernel<T, false><<<rows_grid(p.rp), rows_block(p.rp), 0, stream>>>(x, p.rp, pc, pm, pm2);
      }
      if (g.groups == 0) {  // partial [k][C]
        mg.sdiv = p.stats;
        mg.sa = 0;
        mg.sb = 1;
        mg.items = p.rp.chunks;
        mg.inner = 1;
        mg.outer_stride = g.channels;
        mg.inner_stride = 0;
      } else {  // partial [(n*K + k)][C]; group (n, g): K chunks x cpg channels
        mg.sdiv = g.groups;
        mg.sa = p.rp.chunks * g.channels;
        mg.sb = p.cpg;
        mg.items = p.rp.chunks * p.cpg;
        mg.inner = p.cpg;
        mg.outer_stride = g.channels;
        mg.inner_stride = 1;
      }
    } else {
      const bool vec = aligned16(x) && p.np.P % V == 0;
      const auto blocks = static_cast<unsigned>(p.np.partials());
      if (vec) {
        runs_welford_kernel<T, true><<<blocks, p.np.threads, 0, stream>>>(x, p.np, pc, pm, pm2);
      } else {
        runs_welford_kernel<T, false><<<blocks, p.np.threads, 0, stream>>>(x, p.np, pc, pm, pm2);
      }
      // partial [s][k]
      mg.sdiv = p.stats;
      mg.sa = 0;
      mg.sb = p.np.chunks;
      mg.items = p.np.chunks;
      mg.inner = 1;
      mg.outer_stride = 1;
      mg.inner_stride = 0;
    }
    finalize_stats_kernel<A><<<warp_blocks(p.stats), kThreads, 0, stream>>>(
        pc, pm, pm2, mg, eps, mean, rstd, static_cast<const A*>(a.running_mean), static_cast<const A*>(a.running_var),
        static_cast<A*>(a.new_running_mean), static_cast<A*>(a.new_running_var), static_cast<A>(a.momentum));
  } else {
    eval_stats_kernel<A><<<thread_blocks(g.channels), kThreads, 0, stream>>>(
        static_cast<const A*>(a.running_mean), static_cast<const A*>(a.running_var), g.channels, eps, mean, rstd);
  }

  const NormParams<A> q = norm_params<A>(g, p, mean, rstd, a.weight, a.bias, a.activation, batch_stats);
  const bool aligned = aligned16(x) && aligned16(res) && aligned16(y);
  if (p.rows_apply) {
    if (aligned && g.channels % V == 0) {
      rows_forward_kernel<T, true><<<rows_grid(p.rp), rows_block(p.rp), 0, stream>>>(x, res, y, p.rp, q);
    } else {
      rows_forward_kernel<T, false><<<rows_grid(p.rp), rows_block(p.rp), 0, stream>>>(x, res, y, p.rp, q);
    }
    return cudaGetLastError();
  }
  return launch_flat<T, FlatForward>(g, aligned, stream, x, res, y, q);
}

template <typename T>
cudaError_t norm_backward(const NormBackwardArgs& a, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  const NormGeometry& g = a.g;
  const NormPlan p = plan_backward<T>(g);
  const T* dy = static_cast<const T*>(a.grad_output);
  const T* x = static_cast<const T*>(a.input);
  const T* res = static_cast<const T*>(a.residual);
  T* dx = static_cast<T*>(a.grad_input);
  T* dres = static_cast<T*>(a.grad_residual);
  const bool training = g.groups != 0 || a.training;
  NormParams<A> q = norm_params<A>(g, p, a.save_mean, a.save_rstd, a.weight, a.bias, a.activation, training);

  const int64_t C = g.channels;
  const int64_t N = g.groups == 0 ? 1 : g.batch;
  const int64_t G = g.groups == 0 ? C : g.groups;
  const int64_t np = p.rows ? p.rp.partials() : p.np.partials();
  A* ws = static_cast<A*>(a.workspace);
  A* part_dz = ws;
  A* part_dzx = ws + np;
  A* nc_dz = ws + 2 * np;
  A* nc_dzx = nc_dz + N * C;
  A* sum_dy = nc_dzx + N * C;
  A* sum_dy_xhat = sum_dy + p.stats;

  int64_t chunks, ia, ib, kstride;
  if (p.rows) {
    const bool vec = aligned16(x) && aligned16(dy) && aligned16(res) && C % V == 0;
    if (vec) {
      rows_grad_sums_kernel<T, true>
          <<<rows_grid(p.rp), rows_block(p.rp), 0, stream>>>(dy, x, res, p.rp, q, part_dz, part_dzx);
    } else {
      rows_grad_sums_kernel<T, false>
          <<<rows_grid(p.rp), rows_block(p.rp), 0, stream>>>(dy, x, res, p.rp, q, part_dz, part_dzx);
    }
    // partial [(seg*K + k)][C]; batch norm has one segment
    chunks = p.rp.chunks;
    ia = chunks * C;
    ib = 1;
    kstride = C;
  } else {
    const bool vec = aligned16(x) && aligned16(dy) && aligned16(res) && p.np.P % V == 0;
    const auto blocks = static_cast<unsigned>(p.np.partials());
    if (vec) {
      runs_grad_sums_kernel<T, true>
          <<<blocks, p.np.threads, 0, stream>>>(dy, x, res, p.np, C, q, part_dz, part_dzx);
    } else {
      runs_grad_sums_kernel<T, false>
          <<<blocks, p.np.threads, 0, stream>>>(dy, x, res, p.np, C, q, part_dz, part_dzx);
    }
    // partial [s][k], s = n*C + c (batch norm: s = c)
    chunks = p.np.chunks;
    ia = C * chunks;
    ib = chunks;
    kstride = 1;
  }
  grad_totals_kernel<A><<<thread_blocks(N * C), kThreads, 0, stream>>>(part_dz, part_dzx, N * C, C, chunks, ia, ib,
                                                                        kstride, nc_dz, nc_dzx);
  grad_combine_kernel<A><<<warp_blocks(N * G + C), kThreads, 0, stream>>>(
      nc_dz, nc_dzx, static_cast<const A*>(a.weight), N, G, C / G, sum_dy, sum_dy_xhat,
      static_cast<A*>(a.grad_weight), static_cast<A*>(a.grad_bias));

  q.sum_dy = sum_dy;
  q.sum_dy_xhat = sum_dy_xhat;
  const bool aligned = aligned16(x) && aligned16(dy) && aligned16(res) && aligned16(dx) && aligned16(dres);
  if (p.rows_apply) {
    if (aligned && C % V == 0) {
      rows_backward_kernel<T, true><<<rows_grid(p.rp), rows_block(p.rp), 0, stream>>>(dy, x, res, dx, dres, p.rp, q);
    } else {
      rows_backward_kernel<T, false><<<rows_grid(p.rp), rows_block(p.rp), 0, stream>>>(dy, x, res, dx, dres, p.rp, q);
    }
    return cudaGetLastError();
  }
  return launch_flat<T, FlatBackward>(g, aligned, stream, dy, x, res, dx, dres, q);
}

// ---- RMS norm ----------------------------------------------------------------------------------
// One row per group of `tpr` threads (a power of two, sized so each thread handles a few
// vectors), 256 / tpr rows per block; the row's sum is a fixed-order shared-memory tree.

constexpr int kMaxRowThreads = 1024;

struct RmsPlan {
  int tpr = 32, rpb = 8;
  int64_t units = 0;
};

template <typename T>
RmsPlan rms_plan(int64_t dim) {
  constexpr int V = VecWidth<T>::value;
  RmsPlan p;
  p.units = ceil_div<int64_t>(dim, V);
  while (p.tpr < kMaxRowThreads && int64_t{p.tpr} * 4 < p.units) p.tpr *= 2;
  p.rpb = std::max(1, kThreads / p.tpr);
  return p;
}

// Loads unit u of a row (V elements, fewer at the row's end).
template <bool kVec, typename T, int V>
__device__ __forceinline__ int load_unit(const T* row, int64_t dim, int64_t u, acc_t<T> (&out)[V]) {
  const int64_t e = u * V;
  const int n = static_cast<int>(std::min<int64_t>(V, dim - e));
  load_vec<kVec>(row + e, n, out);
  return n;
}

template <typename A>
__device__ __forceinline__ A row_tree_sum(A v, A* red, int tx, int ty, int tpr) {
  const int t = ty * tpr + tx;
  red[t] = v;
  for (int h = tpr / 2; h > 0; h >>= 1) {
    __syncthreads();
    if (tx < h) {
      v += red[t + h];
      red[t] = v;
    }
  }
  __syncthreads();
  const A total = red[ty * tpr];
  return total;
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kMaxRowThreads)
    rms_forward_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ weight, T* __restrict__ y,
                       acc_t<T>* __restrict__ rstd, int64_t rows, int64_t dim, RmsPlan pl, acc_t<T> eps) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  __shared__ A red[kMaxRowThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row = int64_t{blockIdx.x} * pl.rpb + ty;
  const bool valid = row < rows;
  const T* xr = x + (valid ? row : 0) * dim;
  A ss = A(0);
  if (valid) {
    for (int64_t u = tx; u < pl.units; u += pl.tpr) {
      A v[V];
      const int n = load_unit<kVec>(xr, dim, u, v);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        if (j < n) ss += v[j] * v[j];
      }
    }
  }
  ss = row_tree_sum(ss, red, tx, ty, pl.tpr);
  if (!valid) return;
  const A rs = rstd_from_variance(ss / static_cast<A>(dim), eps);
  if (tx == 0) rstd[row] = rs;
  T* yr = y + row * dim;
  for (int64_t u = tx; u < pl.units; u += pl.tpr) {
    A v[V];
    const int n = load_unit<kVec>(xr, dim, u, v);
    const int64_t e = u * V;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const A w = (weight != nullptr && j < n) ? weight[e + j] : A(1);
      v[j] = v[j] * rs * w;
    }
    store_vec<kVec>(yr + e, n, v);
  }
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kMaxRowThreads)
    rms_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const acc_t<T>* __restrict__ weight,
                        const acc_t<T>* __restrict__ rstd, T* __restrict__ dx, int64_t rows, int64_t dim, RmsPlan pl) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  __shared__ A red[kMaxRowThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row = int64_t{blockIdx.x} * pl.rpb + ty;
  const bool valid = row < rows;
  const int64_t off = (valid ? row : 0) * dim;
  const A rs = valid ? rstd[row] : A(0);
  A s = A(0);
  if (valid) {
    for (int64_t u = tx; u < pl.units; u += pl.tpr) {
      A xv[V], gv[V];
      const int n = load_unit<kVec>(x + off, dim, u, xv);
      load_unit<kVec>(dy + off, dim, u, gv);
      const int64_t e = u * V;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        if (j < n) {
          const A w = weight != nullptr ? weight[e + j] : A(1);
          s += (w * gv[j]) * (xv[j] * rs);
        }
      }
    }
  }
  s = row_tree_sum(s, red, tx, ty, pl.tpr);
  if (!valid) return;
  const A inv_dim = A(1) / static_cast<A>(dim);
  for (int64_t u = tx; u < pl.units; u += pl.tpr) {
    A xv[V], gv[V];
    const int n = load_unit<kVec>(x + off, dim, u, xv);
    load_unit<kVec>(dy + off, dim, u, gv);
    const int64_t e = u * V;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const A w = (weight != nullptr && j < n) ? weight[e + j] : A(1);
      xv[j] = norm_input_grad(w * gv[j], xv[j] * rs, rs, A(0), s, inv_dim);
    }
    store_vec<kVec>(dx + off + e, n, xv);
  }
}

// grad_weight partials: the rows path over the (rows, dim) matrix, per-lane sums of dy*x*rstd.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    rms_weight_partials_kernel(const T* __restrict__ dy, const T* __restrict__ x, const acc_t<T>* __restrict__ rstd,
                               RowsPlan pl, acc_t<T>* __restrict__ part) {
  using A = acc_t<T>;
  constexpr int V = VecWidth<T>::value;
  __shared__ A s_sum[1][V][kThreads];
  // One segment: block x is chunk x.
  const RowsTile tile = rows_tile<V>(pl);
  const int nc = tile.nc;
  A acc[1][V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[0][v] = A(0);
  if (nc > 0) {
    for (int64_t r = tile.r0 + threadIdx.y; r < tile.r1; r += tile.step) {
      const int64_t o = r * pl.C + tile.c0;
      const A rs = rstd[r];
      A xv[V], gv[V];
      load_vec<kVec>(x + o, nc, xv);
      load_vec<kVec>(dy + o, nc, gv);
#pragma unroll
      for (int v = 0; v < V; ++v) acc[0][v] += gv[v] * (xv[v] * rs);
    }
  }
  rows_tile_sum(pl, acc, s_sum);
  if (threadIdx.y == 0) store_tile_partial(part, pl, tile, acc[0]);
}

template <typename A>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const A* __restrict__ part, int64_t chunks, int64_t dim, A* __restrict__ out) {
  const int64_t d = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  A s = A(0);
  for (int64_t k = 0; k < chunks; ++k) s += part[k * dim + d];
  out[d] = s;
}

// ---- local response norm -----------------------------------------------------------------------
// One thread per element, the channel window gathered from the input (L1/L2 serve the
// neighbours' reads). The linear index follows the memory order, so warps are coalesced.

template <typename T>
struct LrnView {
  int64_t C, L;
  bool channels_last;
  // Offset of (n, 0, l) and the channel stride.
  __device__ __forceinline__ void locate(int64_t i, int64_t& base, int64_t& c, int64_t& cstride) const {
    if (channels_last) {
      c = i % C;
      base = i - c;
      cstride = 1;
    } else {
      const int64_t l = i % L;
      const int64_t q = i / L;
      c = q % C;
      base = (q - c) * L + l;
      cstride = L;
    }
  }
};

template <typename T>
__device__ __forceinline__ acc_t<T> lrn_denominator_at(const T* col, int64_t c, int64_t C, int64_t cstride,
                                                      int64_t size, acc_t<T> alpha_over_size, acc_t<T> k) {
  using A = acc_t<T>;
  const int64_t lo = std::max<int64_t>(lrn_window_first(c, size), 0);
  const int64_t hi = std::min<int64_t>(lrn_window_last(c, size), C - 1);
  A sum = A(0);
  for (int64_t j = lo; j <= hi; ++j) {
    const A v = to_acc(col[j * cstride]);
    sum += v * v;
  }
  return lrn_denominator(sum, alpha_over_size, k);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    lrn_forward_kernel(const T* __restrict__ x, T* __restrict__ y, LrnView<T> vw, int64_t numel, int64_t size,
                       acc_t<T> alpha_over_size, acc_t<T> beta, acc_t<T> k) {
  using A = acc_t<T>;
  for (int64_t i = int64_t{blockIdx.x} * kThreads + threadIdx.x; i < numel; i += int64_t{gridDim.x} * kThreads) {
    int64_t base, c, cs;
    vw.locate(i, base, c, cs);
    const A d = lrn_denominator_at(x + base, c, vw.C, cs, size, alpha_over_size, k);
    y[i] = from_acc<T>(to_acc(x[i]) * std::pow(d, -beta));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    lrn_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, LrnView<T> vw,
                        int64_t numel, int64_t size, acc_t<T> alpha_over_size, acc_t<T> beta, acc_t<T> k) {
  using A = acc_t<T>;
  for (int64_t i = int64_t{blockIdx.x} * kThreads + threadIdx.x; i < numel; i += int64_t{gridDim.x} * kThreads) {
    int64_t base, j, cs;
    vw.locate(i, base, j, cs);
    const T* col = x + base;
    const T* gcol = dy + base;
    const A dj = lrn_denominator_at(col, j, vw.C, cs, size, alpha_over_size, k);
    const int64_t lo = std::max<int64_t>(lrn_users_first(j, size), 0);
    const int64_t hi = std::min<int64_t>(lrn_users_last(j, size), vw.C - 1);
    A sum = A(0);
    for (int64_t c = lo; c <= hi; ++c) {
      const A dc = lrn_denominator_at(col, c, vw.C, cs, size, alpha_over_size, k);
      sum += lrn_backward_term(to_acc(gcol[c * cs]), to_acc(col[c * cs]), dc, beta);
    }
    const A xj = to_acc(col[j * cs]);
    const A g = to_acc(gcol[j * cs]) * std::pow(dj, -beta) - A(2) * beta * alpha_over_size * xj * sum;
    dx[i] = from_acc<T>(g);
  }
}

unsigned grid_stride_blocks(int64_t n) {
  return static_cast<unsigned>(std::min(ceil_div<int64_t>(n, kThreads), kMaxBlocks * 4));
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

int64_t norm_forward_workspace(DType dtype, const NormGeometry& g) {
  int64_t n = 0;
  dispatch_dtype(dtype, [&](auto tag) {
    n = forward_workspace<decltype(tag)>(g);
    return cudaSuccess;
  });
  return n;
}

int64_t norm_backward_workspace(DType dtype, const NormGeometry& g) {
  int64_t n = 0;
  dispatch_dtype(dtype, [&](auto tag) {
    n = backward_workspace<decltype(tag)>(g);
    return cudaSuccess;
  });
  return n;
}

cudaError_t launch_norm_forward(DType dtype, const NormForwardArgs& a, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return norm_forward<decltype(tag)>(a, stream); });
}

cudaError_t launch_norm_backward(DType dtype, const NormBackwardArgs& a, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return norm_backward<decltype(tag)>(a, stream); });
}

int64_t rms_norm_backward_workspace(DType dtype, int64_t rows, int64_t dim) {
  int64_t n = 0;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const RowsPlan p = make_rows_plan(VecWidth<T>::value, dim, 1, rows);
    n = p.partials();
    return cudaSuccess;
  });
  return n;
}

cudaError_t launch_rms_norm(DType dtype, const RmsNormArgs& a, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    constexpr int V = VecWidth<T>::value;
    const RmsPlan pl = rms_plan<T>(a.dim);
    const T* x = static_cast<const T*>(a.input);
    T* y = static_cast<T*>(a.output);
    const bool vec = aligned16(x) && aligned16(y) && a.dim % V == 0;
    const dim3 block(pl.tpr, pl.rpb);
    const auto blocks = static_cast<unsigned>(ceil_div<int64_t>(a.rows, pl.rpb));
    if (vec) {
      rms_forward_kernel<T, true><<<blocks, block, 0, stream>>>(x, static_cast<const A*>(a.weight), y,
                                                               static_cast<A*>(a.rstd), a.rows, a.dim, pl,
                                                               static_cast<A>(a.eps));
    } else {
      rms_forward_kernel<T, false><<<blocks, block, 0, stream>>>(x, static_cast<const A*>(a.weight), y,
                                                                static_cast<A*>(a.rstd), a.rows, a.dim, pl,
                                                                static_cast<A>(a.eps));
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_rms_norm_backward(DType dtype, const RmsNormArgs& a, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    constexpr int V = VecWidth<T>::value;
    const RmsPlan pl = rms_plan<T>(a.dim);
    const T* x = static_cast<const T*>(a.input);
    const T* dy = static_cast<const T*>(a.grad_output);
    T* dx = static_cast<T*>(a.output);
    const A* w = static_cast<const A*>(a.weight);
    const A* rstd = static_cast<const A*>(a.rstd);
    const bool vec = aligned16(x) && aligned16(dy) && aligned16(dx) && a.dim % V == 0;
    const dim3 block(pl.tpr, pl.rpb);
    const auto blocks = static_cast<unsigned>(ceil_div<int64_t>(a.rows, pl.rpb));
    if (vec) {
      rms_backward_kernel<T, true><<<blocks, block, 0, stream>>>(dy, x, w, rstd, dx, a.rows, a.dim, pl);
    } else {
      rms_backward_kernel<T, false><<<blocks, block, 0, stream>>>(dy, x, w, rstd, dx, a.rows, a.dim, pl);
    }
    if (a.grad_weight != nullptr) {
      const RowsPlan rp = make_rows_plan(V, a.dim, 1, a.rows);
      A* part = static_cast<A*>(a.workspace);
      if (aligned16(x) && aligned16(dy) && a.dim % V == 0) {
        rms_weight_partials_kernel<T, true><<<rows_grid(rp), rows_block(rp), 0, stream>>>(dy, x, rstd, rp, part);
      } else {
        rms_weight_partials_kernel<T, false><<<rows_grid(rp), rows_block(rp), 0, stream>>>(dy, x, rstd, rp, part);
      }
      sum_partials_kernel<A><<<thread_blocks(a.dim), kThreads, 0, stream>>>(part, rp.chunks, a.dim,
                                                                              static_cast<A*>(a.grad_weight));
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_local_response_norm(DType dtype, const LrnArgs& a, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const int64_t numel = a.batch * a.channels * a.inner;
    const LrnView<T> vw{a.channels, a.inner, a.channels_last};
    lrn_forward_kernel<T><<<grid_stride_blocks(numel), kThreads, 0, stream>>>(
        static_cast<const T*>(a.input), static_cast<T*>(a.output), vw, numel, a.size,
        static_cast<A>(a.alpha / static_cast<double>(a.size)), static_cast<A>(a.beta), static_cast<A>(a.k));
    return cudaGetLastError();
  });
}

cudaError_t launch_local_response_norm_backward(DType dtype, const LrnArgs& a, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const int64_t numel = a.batch * a.channels * a.inner;
    const LrnView<T> vw{a.channels, a.inner, a.channels_last};
    lrn_backward_kernel<T><<<grid_stride_blocks(numel), kThreads, 0, stream>>>(
        static_cast<const T*>(a.grad_output), static_cast<const T*>(a.input), static_cast<T*>(a.output), vw, numel,
        a.size, static_cast<A>(a.alpha / static_cast<double>(a.size)), static_cast<A>(a.beta), static_cast<A>(a.k));
    return cudaGetLastError();
  });
}

}  // namespace cnnkernels
