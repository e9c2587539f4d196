// Soft rasterization, the hand-written transpose (see soft.h).

#include "soft.h"

namespace focus_cpu {
namespace {

// Gradient factor of jnp.maximum / jnp.minimum w.r.t. operand x of result z
// (the other operand y): JAX splits ties evenly.
template <typename F>
SOFT_INLINE F BalancedF(F x, F z, F y) {
  return x == z ? (y == z ? Splat<F>(0.5f) : Splat<F>(1.0f)) : Splat<F>(0.0f);
}

// Per-lane sums of the gradients of one triangle's fields.
template <typename F>
struct SoftTriGrad {
  F u[3], v[3], iz[3], eu[3], ev[3], il[3];
};

// Transpose of the fragments' squared distances to the triangle (gradient
// g_dist2) and of their edge functions s (gradients g_s), into the gradients
// of the triangle's fields.
template <int W, typename F = typename SoftVec<W>::F>
SOFT_INLINE void SoftBackwardDistance(const SoftTri& s, const SoftLanes<W>& q, F g_dist2,
                                      const F* g_s, SoftTriGrad<F>* g) {
  const F zero = Splat<F>(0.0f), one = Splat<F>(1.0f);
  const F g_d01 = g_dist2 * BalancedF(q.dist2_01, q.dist2, q.d2[2]);
  const F g_d2[3] = {g_d01 * BalancedF(q.d2[0], q.dist2_01, q.d2[1]),
                     g_d01 * BalancedF(q.d2[1], q.dist2_01, q.d2[0]),
                     g_dist2 * BalancedF(q.d2[2], q.dist2, q.dist2_01)};
  for (int k = 0; k < 3; ++k) {
    const F g_du = 2.0f * q.du[k] * g_d2[k];
    const F g_dv = 2.0f * q.dv[k] * g_d2[k];
    F g_au = g_du, g_av = g_dv;
    g->eu[k] -= q.t[k] * g_du;
    g->ev[k] -= q.t[k] * g_dv;
    const F g_t = -(g_du * s.eu[k] + g_dv * s.ev[k]);
    // t = min(1, max(0, t_raw)) (jnp.clip).
    const F m = MaxF(zero, q.t_raw[k]);
    const F g_tr = g_t * BalancedF(m, q.t[k], one) * BalancedF(q.t_raw[k], m, zero);
    const F dotp = q.au[k] * s.eu[k] + q.av[k] * s.ev[k];
    g->il[k] += g_tr * dotp;
    const F g_dotp = g_tr * s.inv_len2[k];
    g_au += g_dotp * s.eu[k];
    g->eu[k] += g_dotp * q.au[k];
    g_av += g_dotp * s.ev[k];
    g->ev[k] += g_dotp * q.av[k];
    const F g_c = g_s[k] * s.orient;
    g->eu[k] += g_c * q.av[k];
    g_av += g_c * s.eu[k];
    g->ev[k] -= g_c * q.au[k];
    g_au -= g_c * s.ev[k];
    g->u[k] -= g_au;
    g->v[k] -= g_av;
  }
}

// The end of SoftBackwardTriangle: the gradients of triangle s's fields (g)
// and of its vertices' attributes (g_attr), summed over the lanes, through
// its edge set-up and projection into d_points and d_attr of its vertices.
template <typename F>
SOFT_INLINE void SoftBackwardSetup(const SoftTri& s, const SoftTriGrad<F>& g, const F* g_attr,
                                   int64_t channels, const float* points, const Camera& cam,
                                   float* d_points, int64_t dp_stride, float* d_attr,
                                   int64_t da_stride) {
  float g_u[3], g_v[3], g_eu[3], g_ev[3];
  for (int k = 0; k < 3; ++k) {
    g_u[k] = SumF(g.u[k]);
    g_v[k] = SumF(g.v[k]);
    g_eu[k] = SumF(g.eu[k]);
    g_ev[k] = SumF(g.ev[k]);
  }
  for (int k = 0; k < 3; ++k) {
    if (s.len2[k] > 0.0f) {
      const float g_len2 = -SumF(g.il[k]) * s.inv_len2[k] * s.inv_len2[k];
      g_eu[k] += 2.0f * s.eu[k] * g_len2;
      g_ev[k] += 2.0f * s.ev[k] * g_len2;
    }
    const int n = (k + 1) % 3;
    g_u[n] += g_eu[k];
    g_u[k] -= g_eu[k];
    g_v[n] += g_ev[k];
    g_v[k] -= g_ev[k];
  }
  const float f = cam.focal;
  for (int k = 0; k < 3; ++k) {
    const float* pk = points + 3 * static_cast<int64_t>(s.vid[k]);
    const float g_izk = SumF(g.iz[k]) + g_u[k] * (f * pk[0]) + g_v[k] * (f * pk[1]);
    float* dp = d_points + dp_stride * s.vid[k];
    dp[0] += g_u[k] * s.iz[k] * f;
    dp[1] += g_v[k] * s.iz[k] * f;
    dp[2] -= g_izk * s.iz[k] * s.iz[k];
    float* da = d_attr + da_stride * s.vid[k];
    for (int64_t c = 0; c < channels; ++c) da[c] += SumF(g_attr[k * channels + c]);
  }
}

// Transpose of the fragments of one triangle: pix holds per pixel
// (g_c / total for each channel c, sum_c g_c image_c / total, -g_alpha * miss);
// adds d points [V, 3] and d attributes [V, C] of its vertices. kChannels > 0:
// compiled for that many channels (the common case, unrolled), else any.
// Lanes that are not aggregated get zero seeds, hence add exact zeros.
template <int W, int kChannels>
SOFT_INLINE void SoftBackwardTriangle(const SoftTri& s, const float* points, const float* attr,
                                      int64_t num_channels, const float* pix, const float* zmax,
                                      const Camera& cam, const SoftParams& prm, float* d_points,
                                      int64_t dp_stride, float* d_attr, int64_t da_stride,
                                      typename SoftVec<W>::F* g_attr_buffer) {
  typedef typename SoftVec<W>::F F;
  typedef typename SoftVec<W>::I I;
  const int64_t channels = kChannels > 0 ? kChannels : num_channels;
  F g_attr_fixed[3 * (kChannels > 0 ? kChannels : 1)];
  F* g_attr = kChannels > 0 ? g_attr_fixed : g_attr_buffer;
  const int64_t pix_size = channels + 2;
  const float* av[3] = {attr + channels * s.vid[0], attr + channels * s.vid[1],
                        attr + channels * s.vid[2]};
  const F zero = Splat<F>(0.0f);
  SoftTriGrad<F> g;
  for (int k = 0; k < 3; ++k) {
    g.u[k] = g.v[k] = g.iz[k] = g.eu[k] = g.ev[k] = g.il[k] = zero;
  }
  for (int64_t j = 0; j < 3 * channels; ++j) g_attr[j] = zero;
  SoftLanes<W> q;
  SoftSpan<W> span(cam, s.col0, s.ncols, s.row0, s.row0 + s.nrows);
  F px{}, py{};
  I pixel{}, valid{};
  while (span.Next(&px, &py, &pixel, &valid)) {
    if (!SoftEval<W>(s, px, py, valid, prm, &q)) continue;
    F zm, g_lm, g_w;
    for (int l = 0; l < W; ++l) {
      const float* p = pix + pixel[l] * pix_size;
      zm[l] = zmax[pixel[l]];
      g_lm[l] = p[channels + 1];
      g_w[l] = -p[channels];
    }
    const F e = q.on ? ExpF((q.z - zm) / prm.gamma) : zero;
    const F weight = q.prob * e;
    g_lm = q.on ? g_lm : zero;
    // Through image = (sum w a + w_bg bg) / total and alpha = 1 - exp(sum lm).
    F num_dot = zero;  // sum_c g_value_c * (w . a_c)
    F g_wk_attr[3] = {zero, zero, zero};
    for (int64_t c = 0; c < channels; ++c) {
      F pc;
      for (int l = 0; l < W; ++l) pc[l] = pix[pixel[l] * pix_size + c];
      const F num = q.w[0] * av[0][c] + q.w[1] * av[1][c] + q.w[2] * av[2][c];
      g_w += pc * (num * q.inv_w);
      const F g_val = pc * weight;
      num_dot += g_val * num;
      const F g_num = g_val * q.inv_w;
      for (int k = 0; k < 3; ++k) {
        g_wk_attr[k] += g_num * av[k][c];
        g_attr[k * channels + c] += g_num * q.w[k];
      }
    }
    const F g_prob = g_w * e;
    const F g_z = g_w * weight / prm.gamma;
    // Depth and attribute interpolation.
    const F g_depth = -g_z / prm.zden;
    const F g_inv_w = g_depth * q.lam_sum + num_dot;
    const F g_lam_sum = q.w_ok ? g_depth * q.inv_w : zero;
    const F g_wsum = q.w_ok ? -g_inv_w * q.inv_w * q.inv_w : zero;
    F g_s[3] = {zero, zero, zero};
    for (int k = 0; k < 3; ++k) {
      const F g_wk = g_wsum + g_wk_attr[k];
      g.iz[k] += g_wk * q.lam[k];
      const F g_lam = g_wk * s.iz[k] + g_lam_sum;
      const int n = (k + 1) % 3;
      g_s[n] += g_lam * BalancedF(q.s[n], q.lam[k], zero);
    }
    // Probability and log(1 - D) through x = ±dist2 / sigma.
    const F g_x = g_prob / prm.keep_den * (q.raw * (1.0f - q.raw)) - g_lm * q.raw;
    const F g_dist2 = (q.inside ? g_x : -g_x) / prm.sigma;
    SoftBackwardDistance<W>(s, q, g_dist2, g_s, &g);
  }
  SoftBackwardSetup(s, g, g_attr, channels, points, cam, d_points, dp_stride, d_attr,
                    da_stride);
}

// The transpose of the boxes [begin, end) of one image (see
// SoftBackwardTriangle).
template <int W, int kChannels>
SOFT_INLINE void SoftBackwardBoxes(const SoftBox* begin, const SoftBox* end,
                                   const float* points, const float* attr, int64_t num_channels,
                                   const float* pix, const float* zmax, const Camera& cam,
                                   const SoftParams& prm, float* d_points, int64_t dp_stride,
                                   float* d_attr, int64_t da_stride) {
  SoftVectors<W> g_attr(kChannels > 0 ? 0 : 3 * num_channels);
  for (const SoftBox* box = begin; box != end; ++box) {
    SoftBackwardTriangle<W, kChannels>(MakeSoftTri(*box), points, attr, num_channels, pix, zmax,
                                       cam, prm, d_points, dp_stride, d_attr, da_stride,
                                       g_attr.data());
  }
}

// The instances: the forward 4 lanes at a time (with 8, AVX without AVX2
// spends more on the integer lane work and on the lanes of small boxes than
// it saves), the transpose (mostly float arithmetic) 4 at a time, or 8 in a
// function compiled for AVX where the compiler targets x86; each for 3
// channels or any.
#define SOFT_BACKWARD_ARGS                                                                     \
  const SoftBox *begin, const SoftBox *end, const float *points, const float *attr,          \
      int64_t num_channels, const float *pix, const float *zmax, const Camera &cam,            \
      const SoftParams &prm, float *d_points, int64_t dp_stride, float *d_attr,                \
      int64_t da_stride
#define SOFT_BACKWARD_PASS                                                                     \
  begin, end, points, attr, num_channels, pix, zmax, cam, prm, d_points, dp_stride, d_attr,   \
      da_stride

void SoftBackward4(SOFT_BACKWARD_ARGS) {
  if (num_channels == 3) {
    SoftBackwardBoxes<4, 3>(SOFT_BACKWARD_PASS);
  } else {
    SoftBackwardBoxes<4, 0>(SOFT_BACKWARD_PASS);
  }
}

#if defined(__x86_64__) || defined(__i386__)
#define SOFT_HAVE_AVX 1
__attribute__((target("avx"))) void SoftBackward8(SOFT_BACKWARD_ARGS) {
  if (num_channels == 3) {
    SoftBackwardBoxes<8, 3>(SOFT_BACKWARD_PASS);
  } else {
    SoftBackwardBoxes<8, 0>(SOFT_BACKWARD_PASS);
  }
}
#else
void SoftBackward8(SOFT_BACKWARD_ARGS) { SoftBackward4(SOFT_BACKWARD_PASS); }
#endif

// Whether the AVX instances run: the CPU (and OS) support AVX and
// FOCUS_JAX_AVX is not 0/false/no/off (which tests the portable instances).
bool SoftUseAvx() {
#if defined(SOFT_HAVE_AVX)
  const char* env = std::getenv("FOCUS_JAX_AVX");
  if (env != nullptr) {
    std::string v(env);
    for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  }
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx");
#else
  return false;
#endif
}

// The per-pixel factors that SoftBackwardTriangle reads, for pixels [first,
// last) of the batch (flat indices): per pixel pix [C + 2] = (g_c / total for
// each channel c, sum_c g_c image_c / total, -g_alpha * miss); and the
// background's gradient d_background [C] there.
void SoftPixelFactors(int64_t first, int64_t last, int64_t channels, const SoftParams& prm,
                      const float* zmax, const float* total, const float* miss,
                      const float* image, const float* g_image, const float* g_alpha,
                      float* pix, float* d_background) {
  const int64_t pix_size = channels + 2;
  for (int64_t i = first; i < last; ++i) {
    float* p = pix + i * pix_size;
    const float w_bg = std::exp((prm.eps - zmax[i]) / prm.gamma);
    const float tot = total[i];
    float dot = 0.0f;
    for (int64_t c = 0; c < channels; ++c) {
      const float g = g_image[i * channels + c] / tot;
      p[c] = g;
      dot += g * image[i * channels + c];
      d_background[i * channels + c] = g * w_bg;
    }
    p[channels] = dot;
    p[channels + 1] = -g_alpha[i] * miss[i];
  }
}

// Vertices [v0, v1) of one image's d_points [V, 3] and d_attr [V, C]: the sums
// in part order of the `parts` partial gradients in scratch [parts, V, 3 + C].
void SumVertexParts(const float* scratch, int64_t parts, int64_t num_vertices,
                    int64_t channels, int64_t v0, int64_t v1, float* dp, float* da) {
  const int64_t row_size = 3 + channels;
  for (int64_t v = v0; v < v1; ++v) {
    for (int64_t c = 0; c < 3; ++c) dp[3 * v + c] = 0.0f;
    for (int64_t c = 0; c < channels; ++c) da[channels * v + c] = 0.0f;
    for (int64_t part = 0; part < parts; ++part) {
      const float* r = scratch + (part * num_vertices + v) * row_size;
      for (int64_t c = 0; c < 3; ++c) dp[3 * v + c] += r[c];
      for (int64_t c = 0; c < channels; ++c) da[channels * v + c] += r[3 + c];
    }
  }
}

// Run `part` of `parts` of an image's sorted boxes: the set-up residual of the
// forward pass at head (see kSoftBoxWords), split into runs of equal length.
void BoxRun(const int32_t* head, int64_t num_faces, int64_t part, int64_t parts,
            const SoftBox** begin, const SoftBox** end) {
  const SoftBox* sorted = reinterpret_cast<const SoftBox*>(head) + 1;
  const int64_t count = std::min<int64_t>(std::max(head[0], 0), num_faces);
  *begin = sorted + count * part / parts;
  *end = sorted + count * (part + 1) / parts;
}

}  // namespace

// The transpose of SoftRasterizeImpl w.r.t. points, attributes and background,
// given its residuals and the cotangents of image and alpha. Work units are
// runs of an image's sorted boxes; with several per image each accumulates
// into a private buffer, summed afterwards (independent of the schedule).
ffi::Error SoftRasterizeGradImpl(
    ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::F32> attributes,
    ffi::Buffer<ffi::S32> triangles, ffi::Buffer<ffi::F32> params, ffi::Buffer<ffi::F32> zmax,
    ffi::Buffer<ffi::F32> total, ffi::Buffer<ffi::F32> miss, ffi::Buffer<ffi::S32> boxes,
    ffi::Buffer<ffi::F32> image, ffi::Buffer<ffi::F32> g_image, ffi::Buffer<ffi::F32> g_alpha,
    ffi::ResultBuffer<ffi::F32> d_points, ffi::ResultBuffer<ffi::F32> d_attributes,
    ffi::ResultBuffer<ffi::F32> d_background, int32_t width, int32_t height, float focal,
    float cx, float cy, float near, int32_t cull, float eps, float zf, float zden, float cutoff,
    float keep_den) {
  SoftBatch b;
  if (ffi::Error err =
          GetSoftBatch("soft_rasterize_grad", points, attributes, triangles, params, &b);
      err.failure()) {
    return err;
  }
  const MeshBatch& m = b.m;
  const int64_t channels = b.channels;
  const int64_t num_pixels = static_cast<int64_t>(width) * height;
  const int64_t box_stride = (m.num_faces + 1) * kSoftBoxWords;
  if (static_cast<int64_t>(boxes.element_count()) != m.num_images * box_stride) {
    return ffi::Error::InvalidArgument("soft_rasterize_grad: boxes must be [..., F + 1, 16]");
  }
  const Camera cam{width, height, focal, cx, cy, near};
  const int64_t pix_size = channels + 2;
  const bool use_avx = SoftUseAvx();
  auto prm_of = [&](int64_t im) {
    return MakeSoftParams(params.typed_data() + 3 * (im / b.images_per_param), cull, eps, zf,
                          zden, cutoff, keep_den);
  };
  // Per-pixel factors and the background's gradient.
  std::vector<float> pix(m.num_images * num_pixels * pix_size);
  const int64_t bands = BandsPerImage(m.num_images, height);
  ParallelFor(m.num_images * bands, [&](int64_t unit) {
    const int64_t im = unit / bands, band = unit % bands;
    const SoftParams prm = prm_of(im);
    SoftPixelFactors(im * num_pixels + num_pixels * band / bands,
                     im * num_pixels + num_pixels * (band + 1) / bands, channels, prm,
                     zmax.typed_data(), total.typed_data(), miss.typed_data(),
                     image.typed_data(), g_image.typed_data(), g_alpha.typed_data(), pix.data(),
                     d_background->typed_data());
  });
  const int64_t parts = bands;
  const int64_t row_size = 3 + channels;
  std::vector<float> scratch(parts > 1 ? m.num_images * parts * m.num_vertices * row_size : 0,
                             0.0f);
  ParallelFor(m.num_images * parts, [&](int64_t unit) {
    const int64_t im = unit / parts, part = unit % parts;
    const SoftParams prm = prm_of(im);
    const float* pts = points.typed_data() + im * m.num_vertices * 3;
    const float* attr = attributes.typed_data() + im * m.num_vertices * channels;
    float* dp = d_points->typed_data() + im * m.num_vertices * 3;
    float* da = d_attributes->typed_data() + im * m.num_vertices * channels;
    int64_t dp_stride = 3, da_stride = channels;
    if (parts > 1) {
      dp = scratch.data() + unit * m.num_vertices * row_size;
      da = dp + 3;
      dp_stride = da_stride = row_size;
    } else {
      std::fill(dp, dp + m.num_vertices * 3, 0.0f);
      std::fill(da, da + m.num_vertices * channels, 0.0f);
    }
    const SoftBox *begin, *end;
    BoxRun(boxes.typed_data() + im * box_stride, m.num_faces, part, parts, &begin, &end);
    (use_avx ? SoftBackward8 : SoftBackward4)(
        begin, end, pts, attr, channels, pix.data() + im * num_pixels * pix_size,
        zmax.typed_data() + im * num_pixels, cam, prm, dp, dp_stride, da, da_stride);
  });
  if (parts > 1) {
    // The parts' sums, split over vertex ranges.
    ParallelFor(m.num_images * parts, [&](int64_t unit) {
      const int64_t im = unit / parts, range = unit % parts;
      SumVertexParts(scratch.data() + im * parts * m.num_vertices * row_size, parts,
                     m.num_vertices, channels, m.num_vertices * range / parts,
                     m.num_vertices * (range + 1) / parts,
                     d_points->typed_data() + im * m.num_vertices * 3,
                     d_attributes->typed_data() + im * m.num_vertices * channels);
    });
  }
  return ffi::Error::Success();
}

}  // namespace focus_cpu
