// Normalisation on the CPU: batch norm and group norm (layer and instance norm go through
// them) with a fused residual and activation, RMS norm and local response normalisation, each
// with its backward. The per-element math comes from cnnkernels/norm.h, shared with CUDA.
//
// Every kernel reads its (N, C, L) tensor in place, NCHW or channels_last (NclView), and works
// on tiles: rectangles of positions (m = n * L + l) by channels, of about kTileElements
// elements, cut from the regions a result belongs to (a (sample, group of channels) for group
// statistics, the whole tensor for per-channel sums). The tiles depend on the shape
// alone; each accumulates its own acc_t partial in memory order, and the partials are merged in
// tile order (Chan's merge for statistics, plain sums for gradients). Threads only choose which
// tiles they compute, so every result is bitwise the same for any number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cnnkernels/norm.h"
#include "host/alloc.h"
#include "host/norm.h"

namespace cnnkernels {
namespace {

// Elements per tile: enough work per task, small enough for a tile to stay in cache between
// the passes of a two-pass statistic.
constexpr int64_t kTileElements = 16384;
// Per-channel reductions keep one partial per (position tile, channel); bounding the position
// tiles bounds that buffer at kMaxPositionTiles * C partials.
constexpr int64_t kMaxPositionTiles = 256;
// Results (regions or channels) merged per task in the final, cheap merge of partials.
constexpr int64_t kMergeGrain = 256;

// ---- layout and partition --------------------------------------------------------------------

// An (N, C, L) tensor's element offsets: interleaved (channels innermost: channels_last, and any
// layout when L == 1, where NCHW is the same memory) or planar (NCHW with L > 1).
struct NclView {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t inner = 1;
  bool interleaved = true;
  int64_t positions() const { return batch * inner; }
  int64_t channel_stride() const { return interleaved ? 1 : inner; }
  int64_t offset(int64_t n, int64_t c, int64_t l) const {
    return interleaved ? (n * inner + l) * channels + c : (n * channels + c) * inner + l;
  }
};

NclView ncl_view(const NormShape& s) {
  return {s.batch, s.channels, s.inner, s.channels_last || s.inner == 1};
}

// Positions [m0, m1) (m = n * L + l) of channels [c0, c1).
struct Rect {
  int64_t m0, m1, c0, c1;
};

// The coefficients (mean, rstd, weight...) of a run of contiguous elements, read at the run's
// element j: one value for a planar run (all one channel), one per element for an interleaved
// run (a row of consecutive channels). Both have unit stride, so GCC vectorises the run's loop.
template <typename T>
struct Same {
  T value;
  T operator[](int64_t) const { return value; }
};
template <typename T>
struct Each {
  const T* values;
  T operator[](int64_t j) const { return values[j]; }
};

// A planar run's channel: a per-channel table read at it, the same for the whole run.
struct OneChannel {
  int64_t c;
  int64_t channel(int64_t) const { return c; }
  template <typename T>
  Same<T> operator()(const T* table) const { return {table[c]}; }
};

// An interleaved run's channels c0, c0 + 1, ...: a per-channel table read from c0 on.
struct ChannelRow {
  int64_t c0;
  int64_t channel(int64_t j) const { return c0 + j; }
  template <typename T>
  Each<T> operator()(const T* table) const { return {table + c0}; }
};

// Calls fn(offset, len, n, ch) for every run of contiguous elements of r, in memory order: rows of
// r's channels (interleaved, ch a ChannelRow) or a channel's positions within one sample (planar,
// ch a OneChannel). fn is a generic lambda, compiled once per layout, so the layout and the
// division m / L stay out of the per-element loops.
template <class Fn>
void visit_runs(const NclView& v, const Rect& r, const Fn& fn) {
  if (v.interleaved) {
    for (int64_t m = r.m0; m < r.m1; ++m) fn(m * v.channels + r.c0, r.c1 - r.c0, m / v.inner, ChannelRow{r.c0});
    return;
  }
  for (int64_t c = r.c0; c < r.c1; ++c) {
    // The positions of one channel are runs of L contiguous elements, one per sample.
    for (int64_t m = r.m0; m < r.m1;) {
      const int64_t n = m / v.inner, l0 = m - n * v.inner, l1 = std::min(v.inner, l0 + (r.m1 - m));
      fn((n * v.channels + c) * v.inner + l0, l1 - l0, n, OneChannel{c});
      m += l1 - l0;
    }
  }
}

// The split of a positions x channels region into tiles, fixed by the sizes alone.
struct Tiling {
  int64_t m_block = 1, c_block = 1, m_tiles = 0, c_tiles = 0;
  int64_t count() const { return m_tiles * c_tiles; }
  int64_t m_tile(int64_t k) const { return k % m_tiles; }
  // Tile k of `region`: position tile k % m_tiles, channel tile k / m_tiles.
  Rect tile(const Rect& region, int64_t k) const {
    const int64_t m0 = region.m0 + m_tile(k) * m_block, c0 = region.c0 + (k / m_tiles) * c_block;
    return {m0, std::min(region.m1, m0 + m_block), c0, std::min(region.c1, c0 + c_block)};
  }
};

// Tiles of about kTileElements, filled along the layout's contiguous dimension first (channels
// when interleaved, positions when planar), with at most max_m_tiles position tiles.
Tiling make_tiling(const NclView& v, int64_t positions, int64_t channels, int64_t max_m_tiles) {
  Tiling t;
  if (v.interleaved) {
    t.c_block = std::clamp<int64_t>(channels, 1, kTileElements);
    t.m_block = kTileElements / t.c_block;
  } else {
    t.m_block = std::clamp<int64_t>(positions, 1, kTileElements);
    t.c_block = std::clamp<int64_t>(kTileElements / t.m_block, 1, std::max<int64_t>(channels, 1));
  }
  t.m_block = std::max(t.m_block, ceil_div(positions, max_m_tiles));
  t.m_tiles = ceil_div(positions, t.m_block);
  t.c_tiles = ceil_div(channels, t.c_block);
  return t;
}

// The regions a kernel works over, all of one shape and tiling: either the groups of channels
// of each sample (per_sample: the unit of group statistics; `groups` groups of C / groups
// channels), or the whole tensor as one region (the unit of per-channel sums).
struct Partition {
  NclView v;
  int64_t groups = 1;
  bool per_sample = true;
  Tiling tiling;

  int64_t regions() const { return per_sample ? v.batch * groups : 1; }
  int64_t group_size() const { return v.channels / groups; }
  Rect region(int64_t r) const {
    if (!per_sample) return {0, v.positions(), 0, v.channels};
    const int64_t n = r / groups, c0 = (r % groups) * group_size();
    return {n * v.inner, (n + 1) * v.inner, c0, c0 + group_size()};
  }
};

// Regions (n, g), r = n * groups + g.
Partition sample_groups(const NclView& v, int64_t groups) {
  const int64_t channels = v.channels / groups;
  return {v, groups, true, make_tiling(v, v.inner, channels, std::max<int64_t>(v.inner, 1))};
}

// One region, all positions by all channels, cut into few position tiles (per-channel partials).
Partition whole_tensor(const NclView& v) {
  return {v, 1, false, make_tiling(v, v.positions(), v.channels, kMaxPositionTiles)};
}

// Runs fn(r, k, tile) for tile k of every region r, in parallel.
template <class Fn>
void for_each_tile(const Partition& p, const Fn& fn) {
  const int64_t per_region = p.tiling.count();
  if (per_region == 0) return;
  at::parallel_for(0, p.regions() * per_region, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / per_region, k = task % per_region;
      fn(r, k, p.tiling.tile(p.region(r), k));
    }
  });
}

// Runs fn(r, offset, len, n, ch) for every run of contiguous elements (visit_runs), r being its
// region, in parallel.
template <class Fn>
void for_each_run(const Partition& p, const Fn& fn) {
  for_each_tile(p, [&](int64_t r, int64_t, const Rect& tile) {
    visit_runs(p.v, tile, [&](int64_t i, int64_t len, int64_t n, auto ch) { fn(r, i, len, n, ch); });
  });
}

// ---- reductions ------------------------------------------------------------------------------
// The reductions take a run term: term(r, offset, n, ch) gives, for the run at offset (region r,
// sample n, channels ch), the function j -> Sums of its element j. A run is summed with a
// `#pragma omp simd` reduction: GCC keeps a fixed number of lanes and merges them in a fixed
// order, so a run's sum depends on the run (and the build) alone, never on the threads.

template <typename acc>
using Sums = std::array<acc, 2>;

// The sums of term(j) over j in [0, len).
template <typename acc, class Term>
Sums<acc> run_sums(int64_t len, const Term& term) {
  acc s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
  for (int64_t j = 0; j < len; ++j) {
    const Sums<acc> e = term(j);
    s0 += e[0];
    s1 += e[1];
  }
  return {s0, s1};
}

// Adds a run's terms to its channels' entries of sums (indexed by channel): a planar run's
// reduced into its one channel, an interleaved run's element j into channel c0 + j.
template <typename acc, class Term>
void add_run(Sums<acc>* sums, int64_t len, OneChannel ch, const Term& term) {
  const Sums<acc> s = run_sums<acc>(len, term);
  sums[ch.c][0] += s[0];
  sums[ch.c][1] += s[1];
}
template <typename acc, class Term>
void add_run(Sums<acc>* sums, int64_t len, ChannelRow ch, const Term& term) {
  Sums<acc>* row = sums + ch.c0;
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const Sums<acc> e = term(j);
    row[j][0] += e[0];
    row[j][1] += e[1];
  }
}

// Per-region sums of the run terms.
template <typename acc, class Term>
std::vector<Sums<acc>> region_sums(const Partition& p, const Term& term) {
  const int64_t T = p.tiling.count();
  std::vector<Sums<acc>> partial(p.regions() * T);
  for_each_tile(p, [&](int64_t r, int64_t k, const Rect& tile) {
    Sums<acc> s{};
    visit_runs(p.v, tile, [&](int64_t i, int64_t len, int64_t n, auto ch) {
      const Sums<acc> e = run_sums<acc>(len, term(r, i, n, ch));
      s[0] += e[0];
      s[1] += e[1];
    });
    partial[r * T + k] = s;
  });
  std::vector<Sums<acc>> total(p.regions());
  at::parallel_for(0, p.regions(), kMergeGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t k = 0; k < T; ++k)
        for (int q = 0; q < 2; ++q) total[r][q] += partial[r * T + k][q];
  });
  return total;
}

// Per-channel sums of the run terms over every position (p from whole_tensor).
template <typename acc, class Term>
std::vector<Sums<acc>> channel_sums(const Partition& p, const Term& term) {
  const int64_t C = p.v.channels;
  std::vector<Sums<acc>> partial(p.tiling.m_tiles * C);
  for_each_tile(p, [&](int64_t r, int64_t k, const Rect& tile) {
    Sums<acc>* sums = partial.data() + p.tiling.m_tile(k) * C;
    visit_runs(p.v, tile,
               [&](int64_t i, int64_t len, int64_t n, auto ch) { add_run<acc>(sums, len, ch, term(r, i, n, ch)); });
  });
  std::vector<Sums<acc>> total(C);
  at::parallel_for(0, C, kMergeGrain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      for (int64_t t = 0; t < p.tiling.m_tiles; ++t)
        for (int q = 0; q < 2; ++q) total[c][q] += partial[t * C + c][q];
  });
  return total;
}

// Statistics of `count` values from the corrected two-pass algorithm: with a the plain mean of a
// first pass, the second pass sums d = x - a (s1) and d^2 (s2); then mean = a + s1 / count and
// M2 = s2 - s1^2 / count. s1 is small, so this repairs the rounding of the first pass's sum
// (which loses ~log2(count) bits against a large common offset such as 1000 + randn). M2 is
// clamped at 0, which rounding could cross for a constant tile.
template <typename acc>
Welford<acc> corrected_two_pass(acc count, acc a, acc s1, acc s2) {
  Welford<acc> w;
  w.count = count;
  w.mean = a + s1 / count;
  w.m2 = std::max(acc(0), s2 - s1 * s1 / count);
  return w;
}

// The run terms of the two passes: x (the second sum unused), and d = x - a, d^2 for the
// per-element a of a run (Same or Each).
template <typename acc, typename scalar_t>
auto value_term(const scalar_t* x) {
  return [x](int64_t j) { return Sums<acc>{static_cast<acc>(x[j]), acc(0)}; };
}
template <typename acc, typename scalar_t, class A>
auto deviation_term(const scalar_t* x, A a) {
  return [x, a](int64_t j) {
    const acc d = static_cast<acc>(x[j]) - a[j];
    return Sums<acc>{d, d * d};
  };
}

// Statistics of one tile's elements.
template <typename acc, typename scalar_t>
Welford<acc> tile_welford(const NclView& v, const Rect& r, const scalar_t* x) {
  const acc count = static_cast<acc>((r.m1 - r.m0) * (r.c1 - r.c0));
  acc sum = 0;
  visit_runs(v, r, [&](int64_t i, int64_t len, int64_t, auto) { sum += run_sums<acc>(len, value_term<acc>(x + i))[0]; });
  const Same<acc> a{sum / count};
  Sums<acc> d{};
  visit_runs(v, r, [&](int64_t i, int64_t len, int64_t, auto) {
    const Sums<acc> e = run_sums<acc>(len, deviation_term<acc>(x + i, a));
    d[0] += e[0];
    d[1] += e[1];
  });
  return corrected_two_pass(count, a.value, d[0], d[1]);
}

// Statistics of every region (p from sample_groups): its tiles' statistics merged in order.
template <typename acc, typename scalar_t>
std::vector<Welford<acc>> region_welford(const Partition& p, const scalar_t* x) {
  const int64_t T = p.tiling.count();
  std::vector<Welford<acc>> partial(p.regions() * T);
  for_each_tile(p, [&](int64_t r, int64_t k, const Rect& tile) {
    partial[r * T + k] = tile_welford<acc>(p.v, tile, x);
  });
  std::vector<Welford<acc>> total(p.regions());
  at::parallel_for(0, p.regions(), kMergeGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t k = 0; k < T; ++k) total[r] = welford_merge(total[r], partial[r * T + k]);
  });
  return total;
}

// Statistics of every channel over all positions (p from whole_tensor): the corrected two
// passes per tile for each of its channels, then each channel's tiles merged in position order.
template <typename acc, typename scalar_t>
std::vector<Welford<acc>> channel_welford(const Partition& p, const scalar_t* x) {
  const int64_t C = p.v.channels;
  std::vector<Welford<acc>> partial(p.tiling.m_tiles * C);
  for_each_tile(p, [&](int64_t, int64_t k, const Rect& tile) {
    const acc count = static_cast<acc>(tile.m1 - tile.m0);
    std::vector<Sums<acc>> sum(C), d(C);  // by channel: sum of x; sums of x - a and (x - a)^2
    visit_runs(p.v, tile, [&](int64_t i, int64_t len, int64_t, auto ch) {
      add_run<acc>(sum.data(), len, ch, value_term<acc>(x + i));
    });
    std::vector<acc> a(C);
    for (int64_t c = tile.c0; c < tile.c1; ++c) a[c] = sum[c][0] / count;
    visit_runs(p.v, tile, [&](int64_t i, int64_t len, int64_t, auto ch) {
      add_run<acc>(d.data(), len, ch, deviation_term<acc>(x + i, ch(a.data())));
    });
    Welford<acc>* out = partial.data() + p.tiling.m_tile(k) * C;
    for (int64_t c = tile.c0; c < tile.c1; ++c) out[c] = corrected_two_pass(count, a[c], d[c][0], d[c][1]);
  });
  std::vector<Welford<acc>> total(C);
  at::parallel_for(0, C, kMergeGrain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      for (int64_t t = 0; t < p.tiling.m_tiles; ++t) total[c] = welford_merge(total[c], partial[t * C + c]);
  });
  return total;
}

// ---- batch and group norm --------------------------------------------------------------------

// A parameter's `count` values in acc_t (norm_param's vector), or `fill` where it is absent.
template <typename acc>
std::vector<acc> values_or(const at::Tensor& p, int64_t count, acc fill) {
  if (!p.defined()) return std::vector<acc>(count, fill);
  const acc* data = p.const_data_ptr<acc>();
  return std::vector<acc>(data, data + count);
}

template <typename scalar_t>
const scalar_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

// Calls fn(act) with act a std::integral_constant of the activation, so that each kernel's loops
// are compiled once per activation: activation_forward/derivative's switch folds away and the
// loops vectorise.
template <class Fn>
void with_activation(Activation act, const Fn& fn) {
  switch (act) {
    case Activation::ReLU: return fn(std::integral_constant<Activation, Activation::ReLU>{});
    case Activation::SiLU: return fn(std::integral_constant<Activation, Activation::SiLU>{});
    case Activation::GELU: return fn(std::integral_constant<Activation, Activation::GELU>{});
    default: return fn(std::integral_constant<Activation, Activation::None>{});
  }
}

// A value per channel for each sample: (n, c)'s at data[n * n_stride + c]. n_stride is 0 for a
// value per channel alone (batch norm) and C for one per (sample, channel) (group norm's
// per-(sample, group) values, expanded so that a run of channels reads them with unit stride).
template <typename acc>
struct ChannelTable {
  std::vector<acc> data;
  int64_t n_stride = 0;
  const acc* row(int64_t n) const { return data.data() + n * n_stride; }
};

// Group norm's per-(n, g) value(r), r = n * groups + g, for every (n, c).
template <typename acc, class Value>
ChannelTable<acc> expand_groups(const NclView& v, int64_t groups, const Value& value) {
  const int64_t C = v.channels, group_size = C / groups;
  std::vector<acc> data(v.batch * C);
  for (int64_t n = 0; n < v.batch; ++n)
    for (int64_t c = 0; c < C; ++c) data[n * C + c] = value(n * groups + c / group_size);
  return {std::move(data), C};
}

// The elementwise part of batch and group norm:
//   xhat = (x - mean) * rstd,   z = xhat * w_c + b_c (+ residual),   y = act(z),
// and the gradient at z, dz = dy * act'(z), recomputed from x. Act is with_activation's constant.
template <typename scalar_t>
struct Affine {
  using acc = acc_t<scalar_t>;
  const scalar_t* x;
  const scalar_t* residual;  // nullptr when absent
  std::vector<acc> weight;   // per channel; ones when absent
  std::vector<acc> bias;     // per channel; zeros when absent
  Activation act;
  ChannelTable<acc> mean, rstd;  // set by the kernel

  Affine(const at::Tensor& input, const at::Tensor& res, const at::Tensor& w, const at::Tensor& b, Activation a)
      : x(input.const_data_ptr<scalar_t>()),
        residual(data_or_null<scalar_t>(res)),
        weight(values_or<acc>(w, input.size(1), acc(1))),
        bias(values_or<acc>(b, input.size(1), acc(0))),
        act(a) {}

  acc xhat(int64_t i, acc m, acc s) const { return (static_cast<acc>(x[i]) - m) * s; }
  // Res: whether the residual is present, a compile-time constant (a runtime test would keep
  // GCC from vectorising the loops: it may not load residual[i] unconditionally).
  template <class Res>
  acc z(Res, int64_t i, acc xh, acc w, acc b) const {
    const acc affine = xh * w + b;
    if constexpr (Res::value) return affine + static_cast<acc>(residual[i]);
    return affine;
  }

  // Calls fn(act, res): the activation (with_activation) and whether the residual is present, as
  // std::integral_constants, so that the loops are compiled per case without runtime branches.
  template <class Fn>
  void specialised(const Fn& fn) const {
    with_activation(act, [&](auto a) {
      if (residual) return fn(a, std::true_type{});
      fn(a, std::false_type{});
    });
  }

  // y over the whole partition.
  void forward(const Partition& p, scalar_t* y) const {
    specialised([&](auto a, auto res) {
      for_each_run(p, [&](int64_t, int64_t i, int64_t len, int64_t n, auto ch) {
        const auto m = ch(mean.row(n)), s = ch(rstd.row(n)), w = ch(weight.data()), b = ch(bias.data());
#pragma omp simd
        for (int64_t j = 0; j < len; ++j)
          y[i + j] =
              static_cast<scalar_t>(activation_forward(a.value, z(res, i + j, xhat(i + j, m[j], s[j]), w[j], b[j])));
      });
    });
  }

  // The gradient at z of element i, dz = dy * act'(z), its xhat given.
  template <class Act, class Res>
  acc dz(Act a, Res res, const scalar_t* dy, int64_t i, acc xh, acc w, acc b) const {
    return activation_backward(a.value, static_cast<acc>(dy[i]), z(res, i, xh, w, b));
  }

  // For the run at offset i (sample n, channels ch): the function j -> (f dz, f dz xhat) of its
  // element j, with f = w when Weighted, else 1 (the terms of the reductions of the backward).
  template <bool Weighted, class Act, class Res, class Ch>
  auto grad_sums_run(Act a, Res res, const scalar_t* dy, int64_t i, int64_t n, Ch ch) const {
    const auto m = ch(mean.row(n)), s = ch(rstd.row(n)), w = ch(weight.data()), b = ch(bias.data());
    return [=, this](int64_t j) {
      const acc xh = xhat(i + j, m[j], s[j]);
      acc d = dz(a, res, dy, i + j, xh, w[j], b[j]);
      if constexpr (Weighted) d *= w[j];
      return Sums<acc>{d, d * xh};
    };
  }

  // Per-channel sums of dz and dz * xhat (the bias and weight gradients), p from whole_tensor.
  std::vector<Sums<acc>> parameter_sums(const Partition& p, const scalar_t* dy) const {
    std::vector<Sums<acc>> sums;
    specialised([&](auto a, auto res) {
      sums = channel_sums<acc>(p, [&](int64_t, int64_t i, int64_t n, auto ch) {
        return grad_sums_run<false>(a, res, dy, i, n, ch);
      });
    });
    return sums;
  }

  // dx = norm_input_grad(w * dz, xhat, rstd, sum_dy, sum_dy_xhat, inv_count) with the sums read
  // per (n, c); also dz into dres, which is given exactly when the residual is. The loop body
  // keeps to scalars and compile-time tests: an aggregate temporary (a returned pair) or a
  // runtime test of dres kept GCC from vectorising it, and the scalar ReLU branch ran 5x slower.
  void input_grad(const Partition& p, const scalar_t* dy, const ChannelTable<acc>& sum_dy,
                  const ChannelTable<acc>& sum_dy_xhat, acc inv_count, scalar_t* dx, scalar_t* dres) const {
    TORCH_INTERNAL_ASSERT((dres != nullptr) == (residual != nullptr));
    specialised([&](auto a, auto res) {
      for_each_run(p, [&](int64_t, int64_t i, int64_t len, int64_t n, auto ch) {
        const auto m = ch(mean.row(n)), s = ch(rstd.row(n)), w = ch(weight.data()), b = ch(bias.data());
        const auto sd = ch(sum_dy.row(n)), sdx = ch(sum_dy_xhat.row(n));
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const acc xh = xhat(i + j, m[j], s[j]);
          const acc d = dz(a, res, dy, i + j, xh, w[j], b[j]);
          if constexpr (decltype(res)::value) dres[i + j] = static_cast<scalar_t>(d);
          dx[i + j] = static_cast<scalar_t>(norm_input_grad(w[j] * d, xh, s[j], sd[j], sdx[j], inv_count));
        }
      });
    });
  }
};

// Outputs of batch_norm that the kernel fills (acc_t buffers, except out).
struct BatchNormOutputs {
  at::Tensor out, save_mean, save_rstd, new_running_mean, new_running_var;
};

template <typename scalar_t>
void batch_norm_kernel(const NclView& v, Affine<scalar_t>& e, const at::Tensor& running_mean,
                       const at::Tensor& running_var, bool training, double momentum, double eps,
                       BatchNormOutputs& o) {
  using acc = acc_t<scalar_t>;
  const int64_t C = v.channels;
  const Partition p = whole_tensor(v);
  acc* mean = o.save_mean.mutable_data_ptr<acc>();
  acc* rstd = o.save_rstd.mutable_data_ptr<acc>();
  if (training) {
    const std::vector<Welford<acc>> stats = channel_welford<acc>(p, e.x);
    // An empty batch leaves the running statistics as they are (as torch does).
    const acc count = static_cast<acc>(v.positions()), m = static_cast<acc>(momentum);
    for (int64_t c = 0; c < C; ++c) {
      const acc var = welford_variance(stats[c]);
      mean[c] = stats[c].mean;
      rstd[c] = rstd_from_variance(var, static_cast<acc>(eps));
      if (o.new_running_mean.numel() > 0) {
        const acc rm = running_mean.const_data_ptr<acc>()[c];
        o.new_running_mean.mutable_data_ptr<acc>()[c] = count > 0 ? running_update(rm, mean[c], m) : rm;
      }
      if (o.new_running_var.numel() > 0) {
        const acc rv = running_var.const_data_ptr<acc>()[c];
        o.new_running_var.mutable_data_ptr<acc>()[c] =
            count > 0 ? running_update(rv, unbiased_variance(var, count), m) : rv;
      }
    }
  } else {
    const acc* rm = running_mean.const_data_ptr<acc>();
    const acc* rv = running_var.const_data_ptr<acc>();
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = rm[c];
      rstd[c] = rstd_from_variance(rv[c], static_cast<acc>(eps));
    }
  }
  e.mean = {std::vector<acc>(mean, mean + C), 0};
  e.rstd = {std::vector<acc>(rstd, rstd + C), 0};
  e.forward(p, o.out.mutable_data_ptr<scalar_t>());
}

// Per channel: grad_bias = sum dz, grad_weight = sum dz * xhat; then the input gradient with
// the channel's sums of w * dz and w * dz * xhat (training), or rstd * w * dz (evaluation: the
// statistics are constants, pass zero sums).
template <typename scalar_t>
void batch_norm_backward_kernel(const NclView& v, Affine<scalar_t>& e, const scalar_t* dy,
                                const at::Tensor& save_mean, const at::Tensor& save_rstd, bool training,
                                at::Tensor& grad_input, at::Tensor& grad_weight, at::Tensor& grad_bias,
                                at::Tensor& grad_residual) {
  using acc = acc_t<scalar_t>;
  const int64_t C = v.channels;
  const acc* mean = save_mean.const_data_ptr<acc>();
  const acc* rstd = save_rstd.const_data_ptr<acc>();
  e.mean = {std::vector<acc>(mean, mean + C), 0};
  e.rstd = {std::vector<acc>(rstd, rstd + C), 0};
  const Partition p = whole_tensor(v);
  const std::vector<Sums<acc>> sums = e.parameter_sums(p, dy);
  ChannelTable<acc> sum_dy{std::vector<acc>(C, acc(0)), 0}, sum_dy_xhat{std::vector<acc>(C, acc(0)), 0};
  acc* gw = grad_weight.mutable_data_ptr<acc>();
  acc* gb = grad_bias.mutable_data_ptr<acc>();
  for (int64_t c = 0; c < C; ++c) {
    gb[c] = sums[c][0];
    gw[c] = sums[c][1];
    if (training) {
      sum_dy.data[c] = e.weight[c] * sums[c][0];
      sum_dy_xhat.data[c] = e.weight[c] * sums[c][1];
    }
  }
  const acc inv_count = training ? acc(1) / static_cast<acc>(v.positions()) : acc(0);
  scalar_t* dres = grad_residual.numel() > 0 ? grad_residual.mutable_data_ptr<scalar_t>() : nullptr;
  e.input_grad(p, dy, sum_dy, sum_dy_xhat, inv_count, grad_input.mutable_data_ptr<scalar_t>(), dres);
}

template <typename scalar_t>
void group_norm_kernel(const NclView& v, Affine<scalar_t>& e, int64_t groups, double eps, at::Tensor& out,
                       at::Tensor& save_mean, at::Tensor& save_rstd) {
  using acc = acc_t<scalar_t>;
  const Partition p = sample_groups(v, groups);
  const std::vector<Welford<acc>> stats = region_welford<acc>(p, e.x);
  acc* mean = save_mean.mutable_data_ptr<acc>();
  acc* rstd = save_rstd.mutable_data_ptr<acc>();
  for (int64_t r = 0; r < p.regions(); ++r) {
    mean[r] = stats[r].mean;
    rstd[r] = rstd_from_variance(welford_variance(stats[r]), static_cast<acc>(eps));
  }
  e.mean = expand_groups<acc>(v, groups, [&](int64_t r) { return mean[r]; });
  e.rstd = expand_groups<acc>(v, groups, [&](int64_t r) { return rstd[r]; });
  e.forward(p, out.mutable_data_ptr<scalar_t>());
}

// The input gradient needs each (n, g)'s sums of w_c * dz and w_c * dz * xhat; the parameter
// gradients (when a parameter is given) each channel's sums of dz and dz * xhat over every
// sample.
template <typename scalar_t>
void group_norm_backward_kernel(const NclView& v, Affine<scalar_t>& e, const scalar_t* dy, int64_t groups,
                                const at::Tensor& save_mean, const at::Tensor& save_rstd, at::Tensor& grad_input,
                                at::Tensor& grad_weight, at::Tensor& grad_bias) {
  using acc = acc_t<scalar_t>;
  const acc* mean = save_mean.const_data_ptr<acc>();
  const acc* rstd = save_rstd.const_data_ptr<acc>();
  e.mean = expand_groups<acc>(v, groups, [&](int64_t r) { return mean[r]; });
  e.rstd = expand_groups<acc>(v, groups, [&](int64_t r) { return rstd[r]; });
  const Partition p = sample_groups(v, groups);
  std::vector<Sums<acc>> group;
  e.specialised([&](auto a, auto res) {
    group = region_sums<acc>(p, [&](int64_t, int64_t i, int64_t n, auto ch) {
      return e.template grad_sums_run<true>(a, res, dy, i, n, ch);
    });
  });
  if (grad_weight.numel() > 0 || grad_bias.numel() > 0) {
    const std::vector<Sums<acc>> channel = e.parameter_sums(whole_tensor(v), dy);
    for (int64_t c = 0; c < v.channels; ++c) {
      if (grad_bias.numel() > 0) grad_bias.mutable_data_ptr<acc>()[c] = channel[c][0];
      if (grad_weight.numel() > 0) grad_weight.mutable_data_ptr<acc>()[c] = channel[c][1];
    }
  }
  const acc inv_count = acc(1) / static_cast<acc>(p.group_size() * v.inner);
  e.input_grad(p, dy, expand_groups<acc>(v, groups, [&](int64_t r) { return group[r][0]; }),
               expand_groups<acc>(v, groups, [&](int64_t r) { return group[r][1]; }), inv_count,
               grad_input.mutable_data_ptr<scalar_t>(), nullptr);
}

// ---- rms norm --------------------------------------------------------------------------------
// Rows of D contiguous elements: the view (rows, D, 1), a region per row (one group of D).

template <typename scalar_t>
void rms_norm_kernel(const NclView& v, const scalar_t* x, const at::Tensor& weight, double eps, scalar_t* y,
                     acc_t<scalar_t>* rstd) {
  using acc = acc_t<scalar_t>;
  const std::vector<acc> w = values_or<acc>(weight, v.channels, acc(1));
  const Partition p = sample_groups(v, 1);
  const std::vector<Sums<acc>> sum_sq = region_sums<acc>(p, [&](int64_t, int64_t i, int64_t, auto) {
    return [xr = x + i](int64_t j) {
      const acc xv = static_cast<acc>(xr[j]);
      return Sums<acc>{xv * xv, acc(0)};
    };
  });
  for (int64_t r = 0; r < v.batch; ++r) {
    const acc mean_sq = v.channels > 0 ? sum_sq[r][0] / static_cast<acc>(v.channels) : acc(0);
    rstd[r] = rstd_from_variance(mean_sq, static_cast<acc>(eps));
  }
  for_each_run(p, [&](int64_t r, int64_t i, int64_t len, int64_t, auto ch) {
    const auto wr = ch(w.data());
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) y[i + j] = static_cast<scalar_t>(static_cast<acc>(x[i + j]) * rstd[r] * wr[j]);
  });
}

// dx = norm_input_grad(w * dy, x * rstd, rstd, 0, sum_row(w * dy * x * rstd), 1 / D);
// grad_weight[d] = sum over rows of dy * x * rstd.
template <typename scalar_t>
void rms_norm_backward_kernel(const NclView& v, const scalar_t* dy, const scalar_t* x, const at::Tensor& weight,
                              const acc_t<scalar_t>* rstd, scalar_t* dx, at::Tensor& grad_weight) {
  using acc = acc_t<scalar_t>;
  const std::vector<acc> w = values_or<acc>(weight, v.channels, acc(1));
  const Partition p = sample_groups(v, 1);
  const std::vector<Sums<acc>> row = region_sums<acc>(p, [&](int64_t r, int64_t i, int64_t, auto ch) {
    return [=, wr = ch(w.data()), s = rstd[r]](int64_t j) {
      return Sums<acc>{wr[j] * static_cast<acc>(dy[i + j]) * (static_cast<acc>(x[i + j]) * s), acc(0)};
    };
  });
  if (grad_weight.numel() > 0) {
    const std::vector<Sums<acc>> gw = channel_sums<acc>(whole_tensor(v), [&](int64_t, int64_t i, int64_t n, auto) {
      return [=, s = rstd[n]](int64_t j) {
        return Sums<acc>{static_cast<acc>(dy[i + j]) * (static_cast<acc>(x[i + j]) * s), acc(0)};
      };
    });
    for (int64_t c = 0; c < v.channels; ++c) grad_weight.mutable_data_ptr<acc>()[c] = gw[c][0];
  }
  const acc inv_count = acc(1) / static_cast<acc>(v.channels);
  for_each_run(p, [&](int64_t r, int64_t i, int64_t len, int64_t, auto ch) {
    const auto wr = ch(w.data());
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const acc xh = static_cast<acc>(x[i + j]) * rstd[r];
      const acc wdy = wr[j] * static_cast<acc>(dy[i + j]);
      dx[i + j] = static_cast<scalar_t>(norm_input_grad(wdy, xh, rstd[r], acc(0), row[r][0], inv_count));
    }
  });
}

// ---- local response norm ---------------------------------------------------------------------
// The channel window couples every channel of a position, so the tiles here hold all C channels
// of a run of positions of one sample; nothing is reduced across tiles.

struct LrnParams {
  int64_t size;
  double alpha, beta, k;
};

// Runs fn(n, l0, l1) for runs of positions [l0, l1) of sample n, about kTileElements elements each, in parallel.
template <class Fn>
void for_each_position_run(const NclView& v, const Fn& fn) {
  const int64_t run = std::clamp<int64_t>(kTileElements / std::max<int64_t>(v.channels, 1), 1, v.inner);
  const int64_t runs = ceil_div(v.inner, run);
  at::parallel_for(0, v.batch * runs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / runs, l0 = (task % runs) * run;
      fn(n, l0, std::min(v.inner, l0 + run));
    }
  });
}

// lrn_denominator of the element at offset i (channel c): the sum of x_j^2 over c's window.
template <typename acc, typename scalar_t>
acc lrn_denominator_at(const NclView& v, const scalar_t* x, int64_t i, int64_t c, const LrnParams& lp) {
  const int64_t first = std::max<int64_t>(lrn_window_first(c, lp.size), 0);
  const int64_t last = std::min<int64_t>(lrn_window_last(c, lp.size), v.channels - 1);
  const int64_t cs = v.channel_stride();
  acc sum_sq = 0;
  for (int64_t j = first; j <= last; ++j) {
    const acc xj = static_cast<acc>(x[i + (j - c) * cs]);
    sum_sq += xj * xj;
  }
  return lrn_denominator(sum_sq, static_cast<acc>(lp.alpha / static_cast<double>(lp.size)), static_cast<acc>(lp.k));
}

template <typename scalar_t>
void lrn_kernel(const NclView& v, const scalar_t* x, const LrnParams& lp, scalar_t* y) {
  using acc = acc_t<scalar_t>;
  const acc beta = static_cast<acc>(lp.beta);
  for_each_position_run(v, [&](int64_t n, int64_t l0, int64_t l1) {
    for (int64_t c = 0; c < v.channels; ++c)
      for (int64_t l = l0; l < l1; ++l) {
        const int64_t i = v.offset(n, c, l);
        y[i] = static_cast<scalar_t>(static_cast<acc>(x[i]) * std::pow(lrn_denominator_at<acc>(v, x, i, c, lp), -beta));
      }
  });
}

// Per run of positions: first every element's d^-beta and lrn_backward_term, then each input
// gradient gathers the terms of the channels whose window holds it.
template <typename scalar_t>
void lrn_backward_kernel(const NclView& v, const scalar_t* dy, const scalar_t* x, const LrnParams& lp, scalar_t* dx) {
  using acc = acc_t<scalar_t>;
  const acc beta = static_cast<acc>(lp.beta);
  const acc coef = static_cast<acc>(2.0 * lp.beta * lp.alpha / static_cast<double>(lp.size));
  const int64_t C = v.channels;
  for_each_position_run(v, [&](int64_t n, int64_t l0, int64_t l1) {
    const int64_t width = l1 - l0;
    std::vector<acc> scale(C * width), term(C * width);  // [c][l - l0]
    for (int64_t c = 0; c < C; ++c)
      for (int64_t l = l0; l < l1; ++l) {
        const int64_t i = v.offset(n, c, l);
        const acc d = lrn_denominator_at<acc>(v, x, i, c, lp);
        scale[c * width + l - l0] = std::pow(d, -beta);
        term[c * width + l - l0] = lrn_backward_term(static_cast<acc>(dy[i]), static_cast<acc>(x[i]), d, beta);
      }
    for (int64_t j = 0; j < C; ++j) {
      const int64_t first = std::max<int64_t>(lrn_users_first(j, lp.size), 0);
      const int64_t last = std::min<int64_t>(lrn_users_last(j, lp.size), C - 1);
      for (int64_t l = l0; l < l1; ++l) {
        acc gathered = 0;
        for (int64_t c = first; c <= last; ++c) gathered += term[c * width + l - l0];
        const int64_t i = v.offset(n, j, l);
        dx[i] = static_cast<scalar_t>(static_cast<acc>(dy[i]) * scale[j * width + l - l0] -
                                      coef * static_cast<acc>(x[i]) * gathered);
      }
    }
  });
}

// ---- operator entry points -------------------------------------------------------------------

#define CNNK_DISPATCH_NORM(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    c10::string_view activation) {
  const char* op = "cnnkernels::batch_norm";
  const NormShape shape = norm_shape(op, input);
  const Activation act = parse_activation(op, activation);
  const int64_t C = shape.channels;
  const at::Tensor x = norm_layout(input, shape);
  const at::Tensor res = norm_optional_operand(op, "residual", residual, input, shape);
  const at::Tensor w = norm_param(op, "weight", weight, C, input);
  const at::Tensor b = norm_param(op, "bias", bias, C, input);
  const at::Tensor rm = norm_param(op, "running_mean", running_mean, C, input);
  const at::Tensor rv = norm_param(op, "running_var", running_var, C, input);
  TORCH_CHECK(training || (rm.defined() && rv.defined()), op,
              ": running_mean and running_var are required when training=False");
  BatchNormOutputs o;
  o.out = new_norm_output(input, shape);
  o.save_mean = new_acc_buffer({C}, input);
  o.save_rstd = new_acc_buffer({C}, input);
  o.new_running_mean = new_acc_buffer({training && rm.defined() ? C : 0}, input);
  o.new_running_var = new_acc_buffer({training && rv.defined() ? C : 0}, input);
  CNNK_DISPATCH_NORM(input.scalar_type(), "batch_norm_cpu", [&] {
    Affine<scalar_t> e(x, res, w, b, act);
    batch_norm_kernel<scalar_t>(ncl_view(shape), e, rm, rv, training, momentum, eps, o);
  });
  return {o.out, o.save_mean, o.save_rstd,
          training ? as_param_dtype(o.new_running_mean, running_mean, input) : o.new_running_mean,
          training ? as_param_dtype(o.new_running_var, running_var, input) : o.new_running_var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, const at::Tensor& save_mean,
    const at::Tensor& save_rstd, bool training, c10::string_view activation) {
  const char* op = "cnnkernels::batch_norm_backward";
  const NormShape shape = norm_shape(op, input);
  const Activation act = parse_activation(op, activation);
  const int64_t C = shape.channels;
  const at::Tensor x = norm_layout(input, shape);
  const at::Tensor dy = norm_operand(op, "grad_output", grad_output, input, shape);
  const at::Tensor res = norm_optional_operand(op, "residual", residual, input, shape);
  const at::Tensor w = norm_param(op, "weight", weight, C, input);
  const at::Tensor b = norm_param(op, "bias", bias, C, input);
  const at::Tensor mean = norm_param(op, "save_mean", save_mean, C, input);
  const at::Tensor rstd = norm_param(op, "save_rstd", save_rstd, C, input);
  at::Tensor grad_input = new_norm_output(input, shape);
  at::Tensor grad_weight = new_acc_buffer({C}, input);
  at::Tensor grad_bias = new_acc_buffer({C}, input);
  at::Tensor grad_residual = res.defined() ? new_norm_output(input, shape) : new_acc_buffer({0}, input);
  CNNK_DISPATCH_NORM(input.scalar_type(), "batch_norm_backward_cpu", [&] {
    Affine<scalar_t> e(x, res, w, b, act);
    batch_norm_backward_kernel<scalar_t>(ncl_view(shape), e, dy.const_data_ptr<scalar_t>(), mean, rstd, training,
                                         grad_input, grad_weight, grad_bias, grad_residual);
  });
  return {grad_input, as_param_dtype(grad_weight, weight, input), as_param_dtype(grad_bias, bias, input),
          grad_residual};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm(const at::Tensor& input,
                                                          const std::optional<at::Tensor>& weight,
                                                          const std::optional<at::Tensor>& bias, int64_t num_groups,
                                                          double eps, c10::string_view activation) {
  const char* op = "cnnkernels::group_norm";
  const NormShape shape = norm_shape(op, input);
  check_norm_groups(op, shape, num_groups);
  const Activation act = parse_activation(op, activation);
  const at::Tensor x = norm_layout(input, shape);
  const at::Tensor w = norm_param(op, "weight", weight, shape.channels, input);
  const at::Tensor b = norm_param(op, "bias", bias, shape.channels, input);
  at::Tensor out = new_norm_output(input, shape);
  at::Tensor save_mean = new_acc_buffer({shape.batch, num_groups}, input);
  at::Tensor save_rstd = new_acc_buffer({shape.batch, num_groups}, input);
  CNNK_DISPATCH_NORM(input.scalar_type(), "group_norm_cpu", [&] {
    Affine<scalar_t> e(x, at::Tensor(), w, b, act);
    group_norm_kernel<scalar_t>(ncl_view(shape), e, num_groups, eps, out, save_mean, save_rstd);
  });
  return {out, save_mean, save_rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& save_mean, const at::Tensor& save_rstd,
    int64_t num_groups, c10::string_view activation) {
  const char* op = "cnnkernels::group_norm_backward";
  const NormShape shape = norm_shape(op, input);
  check_norm_groups(op, shape, num_groups);
  const Activation act = parse_activation(op, activation);
  const int64_t C = shape.channels;
  const at::Tensor x = norm_layout(input, shape);
  const at::Tensor dy = norm_operand(op, "grad_output", grad_output, input, shape);
  const at::Tensor w = norm_param(op, "weight", weight, C, input);
  const at::Tensor b = norm_param(op, "bias", bias, C, input);
  const at::Tensor mean = norm_param(op, "save_mean", save_mean, shape.batch * num_groups, input);
  const at::Tensor rstd = norm_param(op, "save_rstd", save_rstd, shape.batch * num_groups, input);
  at::Tensor grad_input = new_norm_output(input, shape);
  at::Tensor grad_weight = new_acc_buffer({w.defined() ? C : 0}, input);
  at::Tensor grad_bias = new_acc_buffer({b.defined() ? C : 0}, input);
  CNNK_DISPATCH_NORM(input.scalar_type(), "group_norm_backward_cpu", [&] {
    Affine<scalar_t> e(x, at::Tensor(), w, b, act);
    group_norm_backward_kernel<scalar_t>(ncl_view(shape), e, dy.const_data_ptr<scalar_t>(), num_groups, mean, rstd,
                                         grad_input, grad_weight, grad_bias);
  });
  return {grad_input, w.defined() ? as_param_dtype(grad_weight, weight, input) : grad_weight,
          b.defined() ? as_param_dtype(grad_bias, bias, input) : grad_bias};
}

// rms norm's (rows, D) split of the input: D is the product of the last normalized_ndim sizes.
NclView rms_rows(const char* op, const at::Tensor& input, int64_t normalized_ndim) {
  check_norm_dtype(op, input);
  TORCH_CHECK(normalized_ndim >= 1 && normalized_ndim <= input.dim(), op, ": expected normalized_ndim in [1, ",
              input.dim(), "] for an input of ", input.dim(), " dimensions, got ", normalized_ndim);
  const int64_t leading = input.dim() - normalized_ndim;
  NclView v;  // interleaved, L = 1: element (row, d) at row * D + d
  v.batch = 1;
  v.channels = 1;
  for (int64_t d = 0; d < input.dim(); ++d) {
    if (d < leading) {
      v.batch *= input.size(d);
    } else {
      v.channels *= input.size(d);
    }
  }
  return v;
}

// rms norm's kernels run on contiguous rows; a 4-D channels_last input gets its result back
// channels_last.
at::Tensor in_input_format(const at::Tensor& result, const at::Tensor& input) {
  return norm_is_channels_last(input) ? result.contiguous(at::MemoryFormat::ChannelsLast) : result;
}

std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                            int64_t normalized_ndim, double eps) {
  const char* op = "cnnkernels::rms_norm";
  const NclView v = rms_rows(op, input, normalized_ndim);
  const at::Tensor x = input.contiguous();
  const at::Tensor w = norm_param(op, "weight", weight, v.channels, input);
  at::Tensor out = new_buffer(input.sizes(), input.options());
  at::Tensor rstd = new_acc_buffer({v.batch}, input);
  CNNK_DISPATCH_NORM(input.scalar_type(), "rms_norm_cpu", [&] {
    rms_norm_kernel<scalar_t>(v, x.const_data_ptr<scalar_t>(), w, eps, out.mutable_data_ptr<scalar_t>(),
                              rstd.mutable_data_ptr<acc_t<scalar_t>>());
  });
  return {in_input_format(out, input), rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                     const std::optional<at::Tensor>& weight,
                                                     const at::Tensor& save_rstd, int64_t normalized_ndim) {
  const char* op = "cnnkernels::rms_norm_backward";
  const NclView v = rms_rows(op, input, normalized_ndim);
  // norm_operand's checks, in the contiguous layout of the rows.
  const at::Tensor dy = norm_operand(op, "grad_output", grad_output, input, NormShape{});
  const at::Tensor x = input.contiguous();
  const at::Tensor w = norm_param(op, "weight", weight, v.channels, input);
  const at::Tensor rstd = norm_param(op, "save_rstd", save_rstd, v.batch, input);
  at::Tensor grad_input = new_buffer(input.sizes(), input.options());
  at::Tensor grad_weight = new_acc_buffer({w.defined() ? v.channels : 0}, input);
  CNNK_DISPATCH_NORM(input.scalar_type(), "rms_norm_backward_cpu", [&] {
    rms_norm_backward_kernel<scalar_t>(v, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), w,
                                       rstd.const_data_ptr<acc_t<scalar_t>>(),
                                       grad_input.mutable_data_ptr<scalar_t>(), grad_weight);
  });
  return {in_input_format(grad_input, input), w.defined() ? as_param_dtype(grad_weight, weight, input) : grad_weight};
}

LrnParams lrn_params(const char* op, int64_t size, double alpha, double beta, double k) {
  TORCH_CHECK(size > 0, op, ": size must be positive, got ", size);
  return {size, alpha, beta, k};
}

at::Tensor local_response_norm(const at::Tensor& input, int64_t size, double alpha, double beta, double k) {
  const char* op = "cnnkernels::local_response_norm";
  const NormShape shape = norm_shape(op, input, 3);
  const LrnParams lp = lrn_params(op, size, alpha, beta, k);
  const at::Tensor x = norm_layout(input, shape);
  at::Tensor out = new_norm_output(input, shape);
  if (out.numel() == 0) return out;
  CNNK_DISPATCH_NORM(input.scalar_type(), "local_response_norm_cpu", [&] {
    lrn_kernel<scalar_t>(ncl_view(shape), x.const_data_ptr<scalar_t>(), lp, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor local_response_norm_backward(const at::Tensor& grad_output, const at::Tensor& input, int64_t size,
                                        double alpha, double beta, double k) {
  const char* op = "cnnkernels::local_response_norm_backward";
  const NormShape shape = norm_shape(op, input, 3);
  const LrnParams lp = lrn_params(op, size, alpha, beta, k);
  const at::Tensor x = norm_layout(input, shape);
  const at::Tensor dy = norm_operand(op, "grad_output", grad_output, input, shape);
  at::Tensor grad_input = new_norm_output(input, shape);
  if (grad_input.numel() == 0) return grad_input;
  CNNK_DISPATCH_NORM(input.scalar_type(), "local_response_norm_backward_cpu", [&] {
    lrn_backward_kernel<scalar_t>(ncl_view(shape), dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), lp,
                                  grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkernels, CPU, m) {
  m.impl("batch_norm", &batch_norm);
  m.impl("batch_norm_backward", &batch_norm_backward);
  m.impl("group_norm", &group_norm);
  m.impl("group_norm_backward", &group_norm_backward);
  m.impl("rms_norm", &rms_norm);
  m.impl("rms_norm_backward", &rms_norm_backward);
  m.impl("local_response_norm", &local_response_norm);
  m.impl("local_response_norm_backward", &local_response_norm_backward);
}

}  // namespace cnnkernels
