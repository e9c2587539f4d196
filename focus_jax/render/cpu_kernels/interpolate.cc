// Attribute interpolation (interpolation.py) and its transpose.

#include "common.h"

namespace focus_cpu {
namespace {

// Adds one face pixel's share of InterpolateGradImpl: gi [C] is its cotangent;
// da / dp: d_attributes / d_points rows (strides da_stride / dp_stride).
inline void AddPixelGrad(const PixelGeometry& g, const float* attr, int64_t channels,
                         const float* gi, float* da, int64_t da_stride, float* dp,
                         int64_t dp_stride) {
  float d_bary[3] = {0.0f, 0.0f, 0.0f};
  for (int k = 0; k < 3; ++k) {
    const float* a = attr + channels * g.v[k];
    float* dak = da + da_stride * g.v[k];
    for (int64_t c = 0; c < channels; ++c) {
      d_bary[k] += gi[c] * a[c];
      dak[c] += g.bary[k] * gi[c];
    }
  }
  const float mean = d_bary[0] * g.bary[0] + d_bary[1] * g.bary[1] + d_bary[2] * g.bary[2];
  const float inv_total = 1.0f / g.total;
  float de[3];
  for (int k = 0; k < 3; ++k) de[k] = (d_bary[k] - mean) * inv_total;
  // e_i = ax_{i+1} ay_{i+2} - ay_{i+1} ax_{i+2}
  const float dax[3] = {de[2] * g.ay[1] - de[1] * g.ay[2], de[0] * g.ay[2] - de[2] * g.ay[0],
                        de[1] * g.ay[0] - de[0] * g.ay[1]};
  const float day[3] = {de[1] * g.ax[2] - de[2] * g.ax[1], de[2] * g.ax[0] - de[0] * g.ax[2],
                        de[0] * g.ax[1] - de[1] * g.ax[0]};
  for (int k = 0; k < 3; ++k) {
    float* dpk = dp + dp_stride * g.v[k];
    dpk[0] += dax[k];
    dpk[1] += day[k];
    dpk[2] += -(dax[k] * g.dx + day[k] * g.dy);
  }
}

}  // namespace

// attributes: [..., V, C]; points: [..., V, 3]; triangle_id: [..., H, W];
// triangles: [..., F, 3]. Result: [..., H, W, C], 0 on background.
ffi::Error InterpolateImpl(ffi::Buffer<ffi::F32> attributes, ffi::Buffer<ffi::F32> points,
                           ffi::Buffer<ffi::S32> triangle_id, ffi::Buffer<ffi::S32> triangles,
                           ffi::ResultBuffer<ffi::F32> out, int32_t width, int32_t height,
                           float focal, float cx, float cy) {
  MeshBatch m;
  if (ffi::Error err = GetMeshBatch("interpolate", points, triangles, &m); err.failure()) {
    return err;
  }
  const int64_t channels = attributes.dimensions().back();
  const Camera cam{width, height, focal, cx, cy, 0.0f};
  const PixelRays rays(cam);
  const int64_t num_pixels = static_cast<int64_t>(width) * height;
  const int64_t bands = BandsPerImage(m.num_images, height);
  ParallelFor(m.num_images * bands, [&](int64_t unit) {
    const int64_t image = unit / bands, band = unit % bands;
    const float* pts = points.typed_data() + image * m.num_vertices * 3;
    const float* attr = attributes.typed_data() + image * m.num_vertices * channels;
    const int32_t* ids = triangle_id.typed_data() + image * num_pixels;
    const int32_t* tris = m.TrianglesOf(image);
    float* o = out->typed_data() + image * num_pixels * channels;
    const int32_t r0 = static_cast<int32_t>(height * band / bands);
    const int32_t r1 = static_cast<int32_t>(height * (band + 1) / bands);
    PixelGeometry g;
    for (int32_t row = r0; row < r1; ++row) {
      for (int32_t col = 0; col < width; ++col) {
        const int64_t i = static_cast<int64_t>(row) * width + col;
        float* oi = o + i * channels;
        if (!GetPixelGeometry(pts, tris, ids[i], rays.x[col], rays.y[row], &g)) {
          std::fill(oi, oi + channels, 0.0f);
          continue;
        }
        const float* a0 = attr + channels * g.v[0];
        const float* a1 = attr + channels * g.v[1];
        const float* a2 = attr + channels * g.v[2];
        for (int64_t c = 0; c < channels; ++c) {
          oi[c] = g.bary[0] * a0[c] + g.bary[1] * a1[c] + g.bary[2] * a2[c];
        }
      }
    }
  });
  return ffi::Error::Success();
}

// The transpose of InterpolateImpl (as _interpolate_bwd): cotangent [..., H,
// W, C] -> d_attributes [..., V, C], d_points [..., V, 3]. Bands of one image
// accumulate into private buffers that are summed afterwards, so the result
// does not depend on the thread schedule.
ffi::Error InterpolateGradImpl(ffi::Buffer<ffi::F32> attributes, ffi::Buffer<ffi::F32> points,
                               ffi::Buffer<ffi::S32> triangle_id,
                               ffi::Buffer<ffi::S32> triangles, ffi::Buffer<ffi::F32> cotangent,
                               ffi::ResultBuffer<ffi::F32> d_attributes,
                               ffi::ResultBuffer<ffi::F32> d_points, int32_t width,
                               int32_t height, float focal, float cx, float cy) {
  MeshBatch m;
  if (ffi::Error err = GetMeshBatch("interpolate_grad", points, triangles, &m); err.failure()) {
    return err;
  }
  const int64_t channels = attributes.dimensions().back();
  const Camera cam{width, height, focal, cx, cy, 0.0f};
  const PixelRays rays(cam);
  const int64_t num_pixels = static_cast<int64_t>(width) * height;
  const int64_t bands = BandsPerImage(m.num_images, height);
  const int64_t row_size = channels + 3;  // per vertex: d_attributes then d_points.
  std::vector<float> scratch(bands > 1 ? m.num_images * bands * m.num_vertices * row_size : 0,
                             0.0f);
  float* da_all = d_attributes->typed_data();
  float* dp_all = d_points->typed_data();
  ParallelFor(m.num_images * bands, [&](int64_t unit) {
    const int64_t image = unit / bands, band = unit % bands;
    const float* pts = points.typed_data() + image * m.num_vertices * 3;
    const float* attr = attributes.typed_data() + image * m.num_vertices * channels;
    const int32_t* ids = triangle_id.typed_data() + image * num_pixels;
    const float* gout = cotangent.typed_data() + image * num_pixels * channels;
    const int32_t* tris = m.TrianglesOf(image);
    // Where this unit accumulates: the outputs directly (one band), or its
    // slice of the scratch buffer ([V, C + 3] rows).
    float* da = da_all + image * m.num_vertices * channels;
    float* dp = dp_all + image * m.num_vertices * 3;
    int64_t da_stride = channels, dp_stride = 3;
    if (bands > 1) {
      da = scratch.data() + unit * m.num_vertices * row_size;
      dp = da + channels;
      da_stride = dp_stride = row_size;
    } else {
      std::fill(da, da + m.num_vertices * channels, 0.0f);
      std::fill(dp, dp + m.num_vertices * 3, 0.0f);
    }
    const int32_t r0 = static_cast<int32_t>(height * band / bands);
    const int32_t r1 = static_cast<int32_t>(height * (band + 1) / bands);
    PixelGeometry g;
    for (int32_t row = r0; row < r1; ++row) {
      for (int32_t col = 0; col < width; ++col) {
        const int64_t i = static_cast<int64_t>(row) * width + col;
        if (ids[i] < 0 || !GetPixelGeometry(pts, tris, ids[i], rays.x[col], rays.y[row], &g)) {
          continue;
        }
        AddPixelGrad(g, attr, channels, gout + i * channels, da, da_stride, dp, dp_stride);
      }
    }
  });
  if (bands > 1) {
    ParallelFor(m.num_images, [&](int64_t image) {
      float* da = da_all + image * m.num_vertices * channels;
      float* dp = dp_all + image * m.num_vertices * 3;
      for (int64_t v = 0; v < m.num_vertices; ++v) {
        for (int64_t c = 0; c < row_size; ++c) {
          float sum = 0.0f;
          for (int64_t b = 0; b < bands; ++b) {
            sum += scratch[((image * bands + b) * m.num_vertices + v) * row_size + c];
          }
          if (c < channels) {
            da[v * channels + c] = sum;
          } else {
            dp[v * 3 + c - channels] = sum;
          }
        }
      }
    });
  }
  return ffi::Error::Success();
}

}  // namespace focus_cpu
