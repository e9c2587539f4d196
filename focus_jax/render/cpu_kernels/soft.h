// Soft rasterization (SoftRas aggregation, soft.py): what the forward
// (soft_forward.cc) and its hand-written transpose (soft_backward.cc) share.
// Same float32 formulas as _soft_triangles, _soft_fragments and
// _soft_aggregate, without a fragment budget.
//
// The fragments of a triangle (the pixel centres of its padded box, row after
// row) are evaluated W at a time with GCC vector extensions, with the same
// IEEE rounding per lane as scalar code (-ffp-contract=off applies to vectors
// too): W = 4 (SSE2 on x86, the portable build) or, for the transpose where
// the CPU has AVX (checked at run time), W = 8 in a function compiled for AVX
// alone (target attribute; all it calls with vector arguments is inlined).
// The forward pass hands its per-triangle set-up (projected vertices, boxes,
// ordered by row) to the transpose as a residual.

#ifndef FOCUS_JAX_RENDER_CPU_KERNELS_SOFT_H_
#define FOCUS_JAX_RENDER_CPU_KERNELS_SOFT_H_

#include "common.h"

namespace focus_cpu {

#define SOFT_INLINE inline __attribute__((always_inline))

template <int W>
struct SoftVec {
  typedef float F __attribute__((vector_size(4 * W)));
  typedef int32_t I __attribute__((vector_size(4 * W)));
};
typedef float SoftF4 __attribute__((vector_size(16)));
typedef int32_t SoftI4 __attribute__((vector_size(16)));

// n vectors of W lanes, aligned (std::vector would rely on aligned new).
template <int W>
class SoftVectors {
 public:
  explicit SoftVectors(int64_t n) : storage_((n + 1) * W) {}
  typename SoftVec<W>::F* data() {
    const uintptr_t at = reinterpret_cast<uintptr_t>(storage_.data());
    const uintptr_t align = 4 * W;
    return reinterpret_cast<typename SoftVec<W>::F*>((at + align - 1) / align * align);
  }

 private:
  std::vector<float> storage_;
};

template <typename F>
SOFT_INLINE F Splat(float x) {
  return F{} + x;
}
// 0, 1, ..., W - 1.
template <typename F>
SOFT_INLINE F Iota() {
  F r{};
  for (int l = 0; l < static_cast<int>(sizeof(F) / 4); ++l) r[l] = static_cast<float>(l);
  return r;
}
// std::min / std::max lane by lane (same operand on ties and NaNs).
template <typename F>
SOFT_INLINE F MinF(F a, F b) {
  return b < a ? b : a;
}
template <typename F>
SOFT_INLINE F MaxF(F a, F b) {
  return a < b ? b : a;
}
template <typename F>
SOFT_INLINE F AbsF(F a) {
  typedef decltype(a < a) I;
  return (F)((I)a & 0x7fffffff);
}
// Bit l set where lane l of the mask is set.
SOFT_INLINE int Bits(SoftI4 m) {
#if defined(__SSE__)
  return __builtin_ia32_movmskps((SoftF4)m);
#else
  return (m[0] ? 1 : 0) | (m[1] ? 2 : 0) | (m[2] ? 4 : 0) | (m[3] ? 8 : 0);
#endif
}
template <typename I>
SOFT_INLINE int Bits(I m) {
  SoftI4 half[2];
  std::memcpy(half, &m, sizeof(half));
  return Bits(half[0]) | (Bits(half[1]) << 4);
}
template <typename I>
SOFT_INLINE bool Any(I m) {
  return Bits(m) != 0;
}
// Sum of the lanes, pairwise.
SOFT_INLINE float SumF(SoftF4 a) { return (a[0] + a[1]) + (a[2] + a[3]); }
template <typename F>
SOFT_INLINE float SumF(F a) {
  SoftF4 half[2];
  std::memcpy(half, &a, sizeof(half));
  return SumF(half[0]) + SumF(half[1]);
}

// exp(x) for x <= 0, lane by lane: Cephes' expf (range reduction by ln 2 in
// two parts, polynomial of degree 7), within 1 ulp of exp over [-87, 0] and
// exp(0) = 1 exactly; 0 below -87 (where exp is below 1.7e-38).
template <typename F>
SOFT_INLINE F ExpF(F x) {
  typedef decltype(x < x) I;
  const I tiny = x < -87.0f;
  x = MaxF(x, Splat<F>(-87.0f));
  const F fx = x * 1.44269504088896341f + 0.5f;
  I n = __builtin_convertvector(fx, I);                // truncation
  n += (I)(__builtin_convertvector(n, F) > fx);        // -1 where it rounded up: floor
  const F nf = __builtin_convertvector(n, F);
  const F r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
  F y = Splat<F>(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const F scale = (F)((n + 127) << 23);
  return tiny ? Splat<F>(0.0f) : y * scale;
}

// Per-call constants. sigma, gamma and radius may be traced values in JAX, so
// they come in a buffer (SoftScalars); the rest are static attributes.
struct SoftParams {
  float sigma, gamma, radius;
  float eps, zf, zden, cutoff, keep_den;
  bool cull;
  float x_skip;  // x <= x_skip: sigmoid(x) <= cutoff for sure.
  float dist2_skip;  // (squared px) -x_skip * sigma, plus a margin.
};

// Per-vertex part of _soft_triangles' set-up: projection (u, v) = f (x, y) / z
// + (cx, cy) through iz = 1 / z, the box projections of AxisBounds (f x / z +
// c, rounded as there), and whether the vertex may be used (in front of the
// near plane, finite projection).
struct SoftVertex {
  float u, v, iz, bu, bv;
  int32_t ok;
};

inline void SoftVertices(const float* points, int64_t begin, int64_t end,
                         const Camera& cam, SoftVertex* out) {
  const float f = cam.focal;
  for (int64_t i = begin; i < end; ++i) {
    const float* p = points + 3 * i;
    SoftVertex& o = out[i];
    o.iz = 1.0f / p[2];
    o.u = f * p[0] * o.iz + cam.cx;
    o.v = f * p[1] * o.iz + cam.cy;
    o.bu = f * p[0] / p[2] + cam.cx;
    o.bv = f * p[1] / p[2] + cam.cy;
    o.ok = p[2] >= cam.near && std::isfinite(o.u) && std::isfinite(o.v);
  }
}

// A triangle that soft-rasterizes something: its vertices, their projections
// and inverse depths, and its padded box (one cache line).
struct SoftBox {
  int32_t vid[3];
  float u[3], v[3], iz[3];
  int32_t col0, row0, ncols, nrows;
};

// Per-triangle set-up of _soft_triangles.
struct SoftTri {
  int32_t vid[3];
  float u[3], v[3], iz[3], eu[3], ev[3], len2[3], inv_len2[3], orient;
  int32_t col0, row0, ncols, nrows;
};

inline SoftTri MakeSoftTri(const SoftBox& box) {
  SoftTri s;
  for (int k = 0; k < 3; ++k) {
    s.vid[k] = box.vid[k];
    s.u[k] = box.u[k];
    s.v[k] = box.v[k];
    s.iz[k] = box.iz[k];
  }
  const float area = (s.u[1] - s.u[0]) * (s.v[2] - s.v[0]) - (s.v[1] - s.v[0]) * (s.u[2] - s.u[0]);
  s.orient = area < 0.0f ? -1.0f : 1.0f;
  for (int k = 0; k < 3; ++k) {
    const int n = (k + 1) % 3;
    s.eu[k] = s.u[n] - s.u[k];
    s.ev[k] = s.v[n] - s.v[k];
    s.len2[k] = s.eu[k] * s.eu[k] + s.ev[k] * s.ev[k];
    s.inv_len2[k] = 1.0f / (s.len2[k] > 0.0f ? s.len2[k] : 1.0f);
  }
  s.col0 = box.col0;
  s.row0 = box.row0;
  s.ncols = box.ncols;
  s.nrows = box.nrows;
  return s;
}

// The pixel centres of rows [row, row_end) of a box (row-major), W at a time;
// lanes past the end repeat its last pixel (not valid). Lane coordinates come
// from the fragment's index j in the box, j = k ncols + r, all in exact float
// integer arithmetic (k from a rounded quotient, then corrected by one step):
// no branches.
template <int W>
struct SoftSpan {
  typedef typename SoftVec<W>::F F;
  typedef typename SoftVec<W>::I I;
  int32_t next, count;
  F ncols, inv_ncols, col0, row0, last;
  I width;

  SOFT_INLINE SoftSpan(const Camera& cam, int32_t col0_, int32_t ncols_, int32_t row,
                       int32_t row_end)
      : next(0), count(ncols_ * (row_end - row)),
        ncols(Splat<F>(static_cast<float>(ncols_))),
        inv_ncols(Splat<F>(1.0f / static_cast<float>(ncols_))),
        col0(Splat<F>(static_cast<float>(col0_))), row0(Splat<F>(static_cast<float>(row))),
        last(Splat<F>(static_cast<float>(count - 1))), width(I{} + cam.width) {}

  SOFT_INLINE bool Next(F* px, F* py, I* pixel, I* valid) {
    if (next >= count) return false;
    F j = static_cast<float>(next) + Iota<F>();
    next += W;
    *valid = j <= last;
    j = MinF(j, last);
    F k = __builtin_convertvector(__builtin_convertvector((j + 0.5f) * inv_ncols, I), F);
    F r = j - k * ncols;
    const I low = r < 0.0f;
    k = low ? k - 1.0f : k;
    r = low ? r + ncols : r;
    const I high = r >= ncols;
    k = high ? k + 1.0f : k;
    r = high ? r - ncols : r;
    const F col = col0 + r, row = row0 + k;
    *px = col + 0.5f;
    *py = row + 0.5f;
    *pixel = __builtin_convertvector(row, I) * width + __builtin_convertvector(col, I);
    return true;
  }
};

// W fragments of _soft_fragments with the intermediates the transpose needs.
template <int W>
struct SoftLanes {
  typedef typename SoftVec<W>::F F;
  typedef typename SoftVec<W>::I I;
  F au[3], av[3], s[3], t_raw[3], t[3], du[3], dv[3], d2[3], dist2_01, dist2;
  I inside, on;  // on: the fragment is aggregated (prob > 0)
  F x, raw, prob, miss;  // miss = 1 - prob
  F lam[3], lam_sum, w[3], w_sum, inv_w, z;
  I w_ok;
};

// Evaluates the fragments at (px, py) of the lanes in valid; false when none
// is aggregated (then only q->on is set).
template <int W, typename F = typename SoftVec<W>::F, typename I = typename SoftVec<W>::I>
SOFT_INLINE bool SoftEval(const SoftTri& s, F px, F py, I valid, const SoftParams& prm,
                          SoftLanes<W>* q) {
  const F zero = Splat<F>(0.0f);
  I far{};
  for (int k = 0; k < 3; ++k) {
    q->au[k] = px - s.u[k];
    q->av[k] = py - s.v[k];
    q->s[k] = (s.eu[k] * q->av[k] - s.ev[k] * q->au[k]) * s.orient;
    // Farther than the aggregation radius from an edge's line, on its outer
    // side: the distance to the triangle is larger still (a margin of 0.1%
    // covers the rounding), so x <= x_skip below.
    far |= (q->s[k] < zero) & (q->s[k] * q->s[k] > prm.dist2_skip * s.len2[k]);
  }
  q->on = valid & ~far;
  if (!Any(q->on)) return false;
  q->inside = (q->s[0] >= zero) & (q->s[1] >= zero) & (q->s[2] >= zero);
  for (int k = 0; k < 3; ++k) {
    q->t_raw[k] = (q->au[k] * s.eu[k] + q->av[k] * s.ev[k]) * s.inv_len2[k];
    q->t[k] = MinF(MaxF(zero, q->t_raw[k]), Splat<F>(1.0f));
    q->du[k] = q->au[k] - q->t[k] * s.eu[k];
    q->dv[k] = q->av[k] - q->t[k] * s.ev[k];
    q->d2[k] = q->du[k] * q->du[k] + q->dv[k] * q->dv[k];
  }
  q->dist2_01 = MinF(q->d2[0], q->d2[1]);
  q->dist2 = MinF(q->dist2_01, q->d2[2]);
  q->x = (q->inside ? q->dist2 : -q->dist2) / prm.sigma;
  // Far outside: sigmoid(x) <= cutoff without evaluating it (x_skip is below
  // logit(cutoff) by far more than the sigmoid's rounding).
  q->on &= q->x > prm.x_skip;
  if (!Any(q->on)) return false;
  // sigmoid(x) and 1 - sigmoid(x), both accurate, from one exp(-|x|).
  const F e = ExpF(-AbsF(q->x));
  const F r = 1.0f / (1.0f + e);
  const I pos = q->x >= zero;
  q->raw = pos ? r : e * r;
  q->on &= q->raw > prm.cutoff;  // prob > 0
  if (!Any(q->on)) return false;
  q->prob = (q->raw - prm.cutoff) / prm.keep_den;
  // 1 - D = (1 - sigmoid) / (1 - cutoff): the JAX code sums its logarithm,
  // -softplus(x) - log1p(-cutoff), and exponentiates the sum; the product
  // is the same up to rounding, without a logarithm per fragment.
  q->miss = (pos ? e * r : r) / prm.keep_den;
  for (int k = 0; k < 3; ++k) q->lam[k] = MaxF(q->s[(k + 1) % 3], zero);
  q->lam_sum = q->lam[0] + q->lam[1] + q->lam[2];
  for (int k = 0; k < 3; ++k) q->w[k] = q->lam[k] * s.iz[k];
  q->w_sum = q->w[0] + q->w[1] + q->w[2];
  q->w_ok = q->w_sum > zero;
  q->inv_w = 1.0f / (q->w_ok ? q->w_sum : Splat<F>(1.0f));
  const F depth = q->w_ok ? q->lam_sum * q->inv_w : Splat<F>(1.0f);
  q->z = (prm.zf - depth) / prm.zden;
  return true;
}

// Shapes shared by the soft entry points; params: [..., 3] (sigma, gamma,
// radius) per group of images (as the triangle lists, see MeshBatch).
struct SoftBatch {
  MeshBatch m;
  int64_t channels, images_per_param;
};

inline ffi::Error GetSoftBatch(const char* op, ffi::Buffer<ffi::F32>& points,
                               ffi::Buffer<ffi::F32>& attributes,
                               ffi::Buffer<ffi::S32>& triangles, ffi::Buffer<ffi::F32>& params,
                               SoftBatch* out) {
  if (ffi::Error err = GetMeshBatch(op, points, triangles, &out->m); err.failure()) return err;
  const auto adims = attributes.dimensions();
  out->channels = adims.size() ? adims.back() : 0;
  const int64_t num_params = params.element_count() / 3;
  if (out->channels < 1 ||
      static_cast<int64_t>(attributes.element_count()) !=
          out->m.num_images * out->m.num_vertices * out->channels ||
      num_params < 1 || out->m.num_images % num_params != 0) {
    return ffi::Error::InvalidArgument(std::string(op) + ": inconsistent shapes");
  }
  out->images_per_param = std::max<int64_t>(1, out->m.num_images / num_params);
  return ffi::Error::Success();
}

inline SoftParams MakeSoftParams(const float* params, int32_t cull, float eps, float zf,
                                 float zden, float cutoff, float keep_den) {
  const float x_skip = static_cast<float>(
      std::log(static_cast<double>(cutoff) / (1.0 - static_cast<double>(cutoff))) - 1e-2);
  return SoftParams{params[0], params[1], params[2], eps, zf, zden, cutoff, keep_den,
                    cull != 0, x_skip, -x_skip * params[0] * 1.001f};
}

// The set-up that the forward hands to the transpose (a residual): per image
// [F + 1] records of kSoftBoxWords int32, a header (the number n of boxes)
// and the boxes of the drawn triangles ordered by first row; the rest unused.
constexpr int64_t kSoftBoxWords = sizeof(SoftBox) / sizeof(int32_t);
static_assert(sizeof(SoftBox) == 16 * sizeof(int32_t), "a SoftBox is 16 words");

}  // namespace focus_cpu

#endif  // FOCUS_JAX_RENDER_CPU_KERNELS_SOFT_H_
