// Shared by the CPU kernels (see __init__.py, which compiles every .cc of this
// folder into one library on first use): the camera, pixel-centre boxes and
// rays, per-pixel barycentrics, the thread pool, the batch layout, and the
// entry points that bindings.cc registers with the XLA FFI.
//
// The kernels compute what the pure-JAX code of focus_jax/render computes (same
// float32 formulas and order of operations, same tie-break), but as plain
// loops: XLA:CPU runs the JAX versions' gathers and scatters one element at a
// time through generic code, which made them the bulk of a rendering step on a
// CPU. Work is split over threads by image (and by bands of rows when there are
// fewer images than cores); results do not depend on the thread schedule.
//
// Conventions (see visibility.py): camera-space vertices in mm, pixel (row i,
// col j) sampled at (j + 0.5, i + 0.5), homogeneous edge functions
// e_i = det[P_{i+1}, P_{i+2}, d] for the viewing ray d of a pixel centre.

#ifndef FOCUS_JAX_RENDER_CPU_KERNELS_COMMON_H_
#define FOCUS_JAX_RENDER_CPU_KERNELS_COMMON_H_

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace focus_cpu {

// Widening of bounding boxes (px), as _BBOX_SLACK in geometry.py.
constexpr float kBboxSlack = 1e-3f;

struct Camera {
  int32_t width, height;
  float focal, cx, cy, near;
};

// Pixel-centre range [first, first + count) inside [lo, hi] on an axis of
// ``size`` pixels (the tail of _screen_bounds).
// Inlined: it runs twice per triangle in the set-up, the rasterizer's hot loop.
__attribute__((always_inline)) inline void PixelRange(float lo, float hi, int32_t size,
                                                      int32_t* first_out, int32_t* count_out) {
  const float fsize = static_cast<float>(size);
  // Clip before the integer conversion (inf, huge values), as the JAX code.
  const float lo_c = std::min(std::max(lo - 0.5f, -1.0f), fsize);
  const float hi_c = std::min(std::max(hi - 0.5f, -1.0f), fsize);
  const int32_t first = std::max(static_cast<int32_t>(std::ceil(lo_c)), 0);
  const int32_t last = std::min(static_cast<int32_t>(std::floor(hi_c)), size - 1);
  *first_out = first;
  *count_out = std::max(last - first + 1, 0);
}

// AxisBounds of a triangle whose three vertices are in front of the near plane,
// from their projections (focal * u / z + c, precomputed per vertex), with the
// box widened by pad (px).
inline void ProjectedBounds(const float proj[3], int32_t size, int32_t* first_out,
                            int32_t* count_out, float pad = 0.0f) {
  const float inf = std::numeric_limits<float>::infinity();
  float lo = inf, hi = -inf;
  for (int k = 0; k < 3; ++k) {
    if (std::isfinite(proj[k])) {
      lo = std::min(lo, proj[k]);
      hi = std::max(hi, proj[k]);
    }
  }
  PixelRange(lo - pad - kBboxSlack, hi + pad + kBboxSlack, size, first_out, count_out);
}

// Per-pixel geometry of a pixel centre in its triangle: vertex rows, the edge
// functions' operands and perspective-correct barycentrics (as
// _barycentrics_batch / _interpolate_forward), used by rasterize's resolve pass
// and by interpolation. False on background pixels and where the edge
// functions sum to zero (the JAX code then gives 0).
struct PixelGeometry {
  int32_t v[3];
  float ax[3], ay[3], dx, dy, total, bary[3];
};

inline bool GetPixelGeometry(const float* points, const int32_t* tris, int32_t t, float dx,
                             float dy, PixelGeometry* g) {
  if (t < 0) return false;
  g->dx = dx;
  g->dy = dy;
  for (int k = 0; k < 3; ++k) {
    g->v[k] = tris[3 * static_cast<int64_t>(t) + k];
    const float* p = points + 3 * static_cast<int64_t>(g->v[k]);
    g->ax[k] = p[0] - p[2] * dx;
    g->ay[k] = p[1] - p[2] * dy;
  }
  float e[3];
  for (int i = 0; i < 3; ++i) {
    const int j = (i + 1) % 3, k = (i + 2) % 3;
    e[i] = g->ax[j] * g->ay[k] - g->ay[j] * g->ax[k];
  }
  g->total = e[0] + e[1] + e[2];
  if (g->total == 0.0f) return false;
  for (int i = 0; i < 3; ++i) g->bary[i] = e[i] / g->total;
  return true;
}

// Viewing-ray slopes of the pixel centres: x per column, y per row (as
// geometry.pixel_rays).
struct PixelRays {
  std::vector<float> x, y;
  explicit PixelRays(const Camera& cam) : x(cam.width), y(cam.height) {
    for (int32_t j = 0; j < cam.width; ++j) {
      x[j] = (static_cast<float>(j) + 0.5f - cam.cx) / cam.focal;
    }
    for (int32_t i = 0; i < cam.height; ++i) {
      y[i] = (static_cast<float>(i) + 0.5f - cam.cy) / cam.focal;
    }
  }
};

// Runs fn(unit) for unit in [0, num_units) on up to hardware_concurrency threads.
template <typename Fn>
void ParallelFor(int64_t num_units, Fn fn) {
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t num_threads = std::min<int64_t>(hw, num_units);
  if (num_threads <= 1) {
    for (int64_t u = 0; u < num_units; ++u) fn(u);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(num_threads - 1);
  for (int64_t w = 1; w < num_threads; ++w) {
    workers.emplace_back([&, w] {
      for (int64_t u = w; u < num_units; u += num_threads) fn(u);
    });
  }
  for (int64_t u = 0; u < num_units; u += num_threads) fn(u);
  for (auto& worker : workers) worker.join();
}

// Batch layout shared by the entry points. Leading axes of the per-image
// arrays are images; the triangle list [..., F, 3] has either no leading axes
// (one mesh for all) or leading axes that are the outermost leading axes of
// the images (what jax.vmap with vmap_method="broadcast_all" produces), so
// image i uses mesh i / images_per_mesh.
struct MeshBatch {
  int64_t num_images, num_vertices, num_faces, images_per_mesh;
  const int32_t* triangles;
  const int32_t* TrianglesOf(int64_t image) const {
    return triangles + 3 * num_faces * (image / images_per_mesh);
  }
};

inline ffi::Error GetMeshBatch(const char* op, ffi::Buffer<ffi::F32>& points,
                               ffi::Buffer<ffi::S32>& triangles, MeshBatch* out) {
  const auto pdims = points.dimensions();
  const auto tdims = triangles.dimensions();
  if (pdims.size() < 2 || pdims.back() != 3 || tdims.size() < 2 || tdims.back() != 3) {
    return ffi::Error::InvalidArgument(std::string(op) +
                                       ": points must be [..., V, 3], triangles [..., F, 3]");
  }
  MeshBatch& m = *out;
  m.num_vertices = pdims[pdims.size() - 2];
  m.num_faces = tdims[tdims.size() - 2];
  m.num_images = m.num_vertices > 0 ? points.element_count() / (3 * m.num_vertices) : 0;
  const int64_t num_meshes =
      m.num_faces > 0 ? triangles.element_count() / (3 * m.num_faces) : 1;
  if (num_meshes < 1 || m.num_images % num_meshes != 0) {
    return ffi::Error::InvalidArgument(std::string(op) +
                                       ": the triangle lists do not match the image batch");
  }
  m.images_per_mesh = std::max<int64_t>(1, m.num_images / num_meshes);
  m.triangles = triangles.typed_data();
  return ffi::Error::Success();
}

// Horizontal bands per image: enough work units for every thread even for a
// single image.
inline int64_t BandsPerImage(int64_t num_images, int32_t height) {
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t images = std::max<int64_t>(num_images, 1);
  return std::max<int64_t>(1, std::min<int64_t>(height, (hw + images - 1) / images));
}

// ---------------------------------------------------------------------------
// Entry points, one file per op; bindings.cc registers them with the XLA FFI.
ffi::Error RasterizeImpl(ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::S32> triangles,
                         ffi::ResultBuffer<ffi::S32> triangle_id,
                         ffi::ResultBuffer<ffi::F32> barycentric,
                         ffi::ResultBuffer<ffi::F32> depth,
                         ffi::ResultBuffer<ffi::S32> fragments, int32_t width, int32_t height,
                         float focal, float cx, float cy, float near, int32_t cull);
ffi::Error RasterizeDepthImpl(ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::S32> triangles,
                              ffi::ResultBuffer<ffi::S32> triangle_id,
                              ffi::ResultBuffer<ffi::F32> depth,
                              ffi::ResultBuffer<ffi::S32> fragments, int32_t width,
                              int32_t height, float focal, float cx, float cy, float near,
                              int32_t cull);
ffi::Error InterpolateImpl(ffi::Buffer<ffi::F32> attributes, ffi::Buffer<ffi::F32> points,
                           ffi::Buffer<ffi::S32> triangle_id, ffi::Buffer<ffi::S32> triangles,
                           ffi::ResultBuffer<ffi::F32> out, int32_t width, int32_t height,
                           float focal, float cx, float cy);
ffi::Error InterpolateGradImpl(ffi::Buffer<ffi::F32> attributes, ffi::Buffer<ffi::F32> points,
                               ffi::Buffer<ffi::S32> triangle_id,
                               ffi::Buffer<ffi::S32> triangles, ffi::Buffer<ffi::F32> cotangent,
                               ffi::ResultBuffer<ffi::F32> d_attributes,
                               ffi::ResultBuffer<ffi::F32> d_points, int32_t width,
                               int32_t height, float focal, float cx, float cy);
ffi::Error SilhouettePairsImpl(ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::S32> triangle_id,
                               ffi::Buffer<ffi::F32> depth, ffi::Buffer<ffi::S32> triangles,
                               ffi::Buffer<ffi::S32> neighbours,
                               ffi::ResultBuffer<ffi::S32> pairs,
                               ffi::ResultBuffer<ffi::S32> count, int32_t width, int32_t height,
                               float focal, float cx, float cy);
ffi::Error VertexNormalsImpl(ffi::Buffer<ffi::F32> verts, ffi::Buffer<ffi::S32> triangles,
                             ffi::ResultBuffer<ffi::F32> normals, float eps);
ffi::Error VertexNormalsGradImpl(ffi::Buffer<ffi::F32> verts, ffi::Buffer<ffi::S32> triangles,
                                 ffi::Buffer<ffi::F32> cotangent,
                                 ffi::ResultBuffer<ffi::F32> d_verts, float eps);
ffi::Error VertexStageImpl(ffi::Buffer<ffi::F32> verts, ffi::Buffer<ffi::S32> triangles,
                           ffi::Buffer<ffi::F32> albedo, ffi::Buffer<ffi::F32> rotation,
                           ffi::Buffer<ffi::F32> translation, ffi::Buffer<ffi::F32> light,
                           ffi::ResultBuffer<ffi::F32> cam, ffi::ResultBuffer<ffi::F32> normals,
                           ffi::ResultBuffer<ffi::F32> colors,
                           ffi::ResultBuffer<ffi::F32> summed, float eps);
ffi::Error VertexStageGradImpl(ffi::Buffer<ffi::F32> verts, ffi::Buffer<ffi::S32> triangles,
                               ffi::Buffer<ffi::F32> albedo, ffi::Buffer<ffi::F32> rotation,
                               ffi::Buffer<ffi::F32> translation, ffi::Buffer<ffi::F32> light,
                               ffi::Buffer<ffi::F32> summed, ffi::Buffer<ffi::F32> g_cam,
                               ffi::Buffer<ffi::F32> g_normals, ffi::Buffer<ffi::F32> g_colors,
                               ffi::ResultBuffer<ffi::F32> d_verts,
                               ffi::ResultBuffer<ffi::F32> d_albedo,
                               ffi::ResultBuffer<ffi::F32> d_rotation,
                               ffi::ResultBuffer<ffi::F32> d_translation,
                               ffi::ResultBuffer<ffi::F32> d_light, float eps);
ffi::Error SoftRasterizeImpl(ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::F32> attributes,
                             ffi::Buffer<ffi::F32> background, ffi::Buffer<ffi::S32> triangles,
                             ffi::Buffer<ffi::F32> params, ffi::ResultBuffer<ffi::F32> image,
                             ffi::ResultBuffer<ffi::F32> alpha,
                             ffi::ResultBuffer<ffi::F32> zmax, ffi::ResultBuffer<ffi::F32> total,
                             ffi::ResultBuffer<ffi::F32> miss, ffi::ResultBuffer<ffi::S32> boxes,
                             int32_t width, int32_t height, float focal, float cx, float cy,
                             float near, int32_t cull, float eps, float zf, float zden,
                             float cutoff, float keep_den);
ffi::Error SoftRasterizeGradImpl(
    ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::F32> attributes,
    ffi::Buffer<ffi::S32> triangles, ffi::Buffer<ffi::F32> params, ffi::Buffer<ffi::F32> zmax,
    ffi::Buffer<ffi::F32> total, ffi::Buffer<ffi::F32> miss, ffi::Buffer<ffi::S32> boxes,
    ffi::Buffer<ffi::F32> image, ffi::Buffer<ffi::F32> g_image, ffi::Buffer<ffi::F32> g_alpha,
    ffi::ResultBuffer<ffi::F32> d_points, ffi::ResultBuffer<ffi::F32> d_attributes,
    ffi::ResultBuffer<ffi::F32> d_background, int32_t width, int32_t height, float focal,
    float cx, float cy, float near, int32_t cull, float eps, float zf, float zden, float cutoff,
    float keep_den);

}  // namespace focus_cpu

#endif  // FOCUS_JAX_RENDER_CPU_KERNELS_COMMON_H_
