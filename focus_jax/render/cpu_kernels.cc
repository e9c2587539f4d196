// CPU kernels for the rendering paths, called from JAX through the XLA FFI
// (see cpu_kernels.py, which compiles this file on first use): visibility,
// attribute interpolation and its transpose, the antialiasing pair search,
// vertex normals and their transpose, the per-vertex stage of render() (pose,
// normals, SH shading) and its transpose, and soft (SoftRas) aggregation and
// its transpose.
//
// They compute what the pure-JAX code in rasterize.py and shading.py computes
// (same float32 formulas and order of operations, same tie-break), but as plain
// loops: XLA:CPU runs the JAX versions' gathers and scatters one element at a
// time through generic code, which made them the bulk of a rendering step on a
// CPU. Work is split over threads by image (and by bands of rows when there are
// fewer images than cores); results do not depend on the thread schedule.
//
// Conventions (see rasterize.py): camera-space vertices in mm, pixel (row i,
// col j) sampled at (j + 0.5, i + 0.5), homogeneous edge functions
// e_i = det[P_{i+1}, P_{i+2}, d] for the viewing ray d of a pixel centre.

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

namespace {

// Widening of bounding boxes (px), as _BBOX_SLACK in rasterize.py.
constexpr float kBboxSlack = 1e-3f;

struct Camera {
  int32_t width, height;
  float focal, cx, cy, near;
};

// Per-triangle set-up of _triangle_setup: edge functions relative to the first
// pixel centre (col0, row0) of the clipped bounding box and their increments.
struct Setup {
  float e0[3], gx[3], gy[3], inv_det;
  int32_t col0, row0, ncols, nrows;  // ncols * nrows == 0: draws nothing.
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

// Pixel-centre range [first, first + count) of one axis covered by the
// near-clipped bounding box of a triangle (_screen_bounds).
void AxisBounds(const float u[3], const float z[3], float focal, float c, int32_t size,
                float near, int32_t* first_out, int32_t* count_out, float pad = 0.0f) {
  const float inf = std::numeric_limits<float>::infinity();
  float lo = inf, hi = -inf;
  for (int k = 0; k < 3; ++k) {
    const int n = (k + 1) % 3;
    const bool front_k = z[k] >= near, front_n = z[n] >= near;
    if (front_k) {
      const float proj = focal * u[k] / z[k] + c;
      if (std::isfinite(proj)) {
        lo = std::min(lo, proj);
        hi = std::max(hi, proj);
      }
    }
    if (front_k != front_n) {
      const float t = (near - z[k]) / (z[n] - z[k]);
      const float cut = focal * (u[k] + t * (u[n] - u[k])) / near + c;
      if (std::isfinite(cut)) {
        lo = std::min(lo, cut);
        hi = std::max(hi, cut);
      }
    }
  }
  PixelRange(lo - pad - kBboxSlack, hi + pad + kBboxSlack, size, first_out, count_out);
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

// Returns false for triangles that draw nothing (degenerate, non-finite, or
// culled); otherwise fills *s. The result is a conjunction of tests, so their
// order does not change it; the cheapest that rejects most come first.
// proj0..2: the vertices' projections (ProjectVertices), or null; ray_x,
// ray_y: the viewing-ray slopes of the columns and rows (PixelRays), or null.
bool TriangleSetup(const float* p0, const float* p1, const float* p2, const Camera& cam,
                   bool cull_backfaces, Setup* s, const float* proj0 = nullptr,
                   const float* proj1 = nullptr, const float* proj2 = nullptr,
                   const float* ray_x = nullptr, const float* ray_y = nullptr) {
  const float x[3] = {p0[0], p1[0], p2[0]};
  const float y[3] = {p0[1], p1[1], p2[1]};
  const float z[3] = {p0[2], p1[2], p2[2]};
  for (int k = 0; k < 3; ++k) {
    if (!(std::isfinite(x[k]) && std::isfinite(y[k]) && std::isfinite(z[k]))) return false;
  }
  const bool in_front = z[0] >= cam.near && z[1] >= cam.near && z[2] >= cam.near;
  // The box first: empty for most small triangles of a dense mesh.
  if (proj0 != nullptr && in_front) {
    const float u[3] = {proj0[0], proj1[0], proj2[0]};
    const float v[3] = {proj0[1], proj1[1], proj2[1]};
    ProjectedBounds(u, cam.width, &s->col0, &s->ncols);
    if (s->ncols == 0) return false;
    ProjectedBounds(v, cam.height, &s->row0, &s->nrows);
  } else {
    AxisBounds(x, z, cam.focal, cam.cx, cam.width, cam.near, &s->col0, &s->ncols);
    AxisBounds(y, z, cam.focal, cam.cy, cam.height, cam.near, &s->row0, &s->nrows);
  }
  if (s->ncols == 0 || s->nrows == 0) return false;
  // Degenerate triangles (zero area, or seen edge-on from the camera centre).
  const float a[3] = {x[1] - x[0], y[1] - y[0], z[1] - z[0]};
  const float b[3] = {x[2] - x[0], y[2] - y[0], z[2] - z[0]};
  const float normal[3] = {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                           a[0] * b[1] - a[1] * b[0]};
  const float plane = x[0] * normal[0] + y[0] * normal[1] + z[0] * normal[2];
  // Front-facing iff det < 0 (plane < 0); near-clipped triangles are left to
  // the per-fragment test.
  if (cull_backfaces && !(plane < 0.0f || !in_front)) return false;
  auto sq = [](const float* v) { return v[0] * v[0] + v[1] * v[1] + v[2] * v[2]; };
  const float origin[3] = {x[0], y[0], z[0]};
  const float nsq = sq(normal), edges_sq = sq(a) * sq(b), origin_sq = sq(origin);
  // The degeneracy test (as _triangle_setup) is |n| > 1e-6 |a| |b| and |plane|
  // > 1e-6 |n| |origin|. Its squares with a factor-4 margin imply it whatever
  // the rounding (overflow to inf fails them), so the square roots are only
  // taken for the few triangles close to the thresholds.
  if (!(nsq > 4e-12f * edges_sq && plane * plane > 4e-12f * (nsq * origin_sq))) {
    const float nn = std::sqrt(nsq);
    const float edges = std::sqrt(edges_sq);
    if (!((nn > 1e-6f * edges) && (std::fabs(plane) > 1e-6f * nn * std::sqrt(origin_sq)))) {
      return false;
    }
  }
  const float f = cam.focal;
  // The rays' slopes are (col + 0.5 - cx) / f, as computed here without them.
  const float dx0 = ray_x != nullptr ? ray_x[s->col0]
                                     : (static_cast<float>(s->col0) + 0.5f - cam.cx) / f;
  const float dy0 = ray_y != nullptr ? ray_y[s->row0]
                                     : (static_cast<float>(s->row0) + 0.5f - cam.cy) / f;
  float ax[3], ay[3];
  for (int k = 0; k < 3; ++k) {
    ax[k] = x[k] - z[k] * dx0;
    ay[k] = y[k] - z[k] * dy0;
  }
  for (int i = 0; i < 3; ++i) {
    const int j = (i + 1) % 3, k = (i + 2) % 3;
    s->e0[i] = ax[j] * ay[k] - ay[j] * ax[k];
    s->gx[i] = (z[k] * y[j] - z[j] * y[k]) / f;
    s->gy[i] = (z[j] * x[k] - z[k] * x[j]) / f;
  }
  const float det = s->e0[0] * z[0] + s->e0[1] * z[1] + s->e0[2] * z[2];
  if (det == 0.0f) return false;
  s->inv_det = 1.0f / det;
  return true;
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

bool GetPixelGeometry(const float* points, const int32_t* tris, int32_t t, float dx, float dy,
                      PixelGeometry* g) {
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
// rasterize._pixel_rays).
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

// Projections (focal * x / z + cx, focal * y / z + cy) of the vertices [V, 3]
// in front of the near plane, as AxisBounds computes them; [V, 2].
void ProjectVertices(const float* points, int64_t num_vertices, const Camera& cam,
                     float* proj) {
  for (int64_t i = 0; i < num_vertices; ++i) {
    const float* p = points + 3 * i;
    proj[2 * i] = cam.focal * p[0] / p[2] + cam.cx;
    proj[2 * i + 1] = cam.focal * p[1] / p[2] + cam.cy;
  }
}

// Draws one set-up triangle into rows [row_begin, row_end) of an image's
// buffers. A fragment replaces the buffer only when strictly nearer, so with
// triangles drawn in id order equal depths keep the smaller id.
inline void DrawTriangle(const Setup& s, int32_t id, const Camera& cam, bool cull_backfaces,
                         int32_t row_begin, int32_t row_end, float* inv_depth,
                         int32_t* triangle_id) {
  const float max_inv_z = 1.0f / cam.near;
  const int32_t r0 = std::max(s.row0, row_begin);
  const int32_t r1 = std::min(s.row0 + s.nrows, row_end);
  for (int32_t row = r0; row < r1; ++row) {
    const float drow = static_cast<float>(row - s.row0);
    float* zrow = inv_depth + static_cast<int64_t>(row) * cam.width;
    int32_t* idrow = triangle_id + static_cast<int64_t>(row) * cam.width;
    for (int32_t dc = 0; dc < s.ncols; ++dc) {
      const float dcol = static_cast<float>(dc);
      const float e0 = s.e0[0] + s.gx[0] * dcol + s.gy[0] * drow;
      const float e1 = s.e0[1] + s.gx[1] * dcol + s.gy[1] * drow;
      const float e2 = s.e0[2] + s.gx[2] * dcol + s.gy[2] * drow;
      const float total = e0 + e1 + e2;
      const float inv_z = total * s.inv_det;
      bool covered = (e0 >= 0.0f && e1 >= 0.0f && e2 >= 0.0f) ||
                     (e0 <= 0.0f && e1 <= 0.0f && e2 <= 0.0f);
      covered = covered && inv_z > 0.0f && inv_z <= max_inv_z;
      if (cull_backfaces) covered = covered && total < 0.0f;
      const int32_t col = s.col0 + dc;
      if (covered && inv_z > zrow[col]) {
        zrow[col] = inv_z;
        idrow[col] = id;
      }
    }
  }
}

// A triangle that draws something: its id and set-up.
struct DrawnTriangle {
  int32_t id;
  Setup s;
};

// Sets up triangles [begin, end) of one image in id order and adds their
// clipped bounding-box areas to *fragments. Those that draw something are
// drawn into all rows of the image's buffers (drawn == nullptr), or appended
// to *drawn for DrawRows.
void SetupTriangles(const float* points, const float* proj, const int32_t* triangles,
                    int64_t begin, int64_t end, const Camera& cam, const PixelRays& rays,
                    bool cull_backfaces, std::vector<DrawnTriangle>* drawn, int64_t* fragments,
                    float* inv_depth = nullptr, int32_t* triangle_id = nullptr) {
  int64_t count = 0;
  if (drawn != nullptr) drawn->reserve(end - begin);  // only the pages written are touched.
  for (int64_t t = begin; t < end; ++t) {
    const int32_t* v = triangles + 3 * t;
    DrawnTriangle d;
    if (!TriangleSetup(points + 3 * v[0], points + 3 * v[1], points + 3 * v[2], cam,
                       cull_backfaces, &d.s, proj + 2 * v[0], proj + 2 * v[1], proj + 2 * v[2],
                       rays.x.data(), rays.y.data())) {
      continue;
    }
    d.id = static_cast<int32_t>(t);
    count += static_cast<int64_t>(d.s.ncols) * d.s.nrows;
    if (drawn != nullptr) {
      drawn->push_back(d);
    } else {
      DrawTriangle(d.s, d.id, cam, cull_backfaces, 0, cam.height, inv_depth, triangle_id);
    }
  }
  *fragments += count;
}

// Draws the set-up triangles of one image (num_lists lists, together in id
// order) into rows [row_begin, row_end) of its buffers.
void DrawRows(const std::vector<DrawnTriangle>* lists, int64_t num_lists, const Camera& cam,
              bool cull_backfaces, int32_t row_begin, int32_t row_end, float* inv_depth,
              int32_t* triangle_id) {
  for (int64_t l = 0; l < num_lists; ++l) {
    for (const DrawnTriangle& d : lists[l]) {
      DrawTriangle(d.s, d.id, cam, cull_backfaces, row_begin, row_end, inv_depth, triangle_id);
    }
  }
}

// Fills barycentrics [.., 3] of rows [row_begin, row_end) of one image from its
// triangle ids (unless barycentric is null), and turns its inverse depths into
// depths (mm), in place.
void ResolveRows(const float* points, const int32_t* triangles, const Camera& cam,
                 const PixelRays& rays, int32_t row_begin, int32_t row_end,
                 const int32_t* triangle_id, float* barycentric, float* depth) {
  PixelGeometry g;
  for (int32_t row = row_begin; row < row_end; ++row) {
    for (int32_t col = 0; col < cam.width; ++col) {
      const int64_t i = static_cast<int64_t>(row) * cam.width + col;
      const int32_t t = triangle_id[i];
      if (barycentric == nullptr) {
        if (t >= 0) depth[i] = 1.0f / depth[i];
        continue;
      }
      float* bary = barycentric + 3 * i;
      bary[0] = bary[1] = bary[2] = 0.0f;
      if (t < 0) continue;
      if (GetPixelGeometry(points, triangles, t, rays.x[col], rays.y[row], &g)) {
        bary[0] = g.bary[0];
        bary[1] = g.bary[1];
        bary[2] = g.bary[2];
      }
      depth[i] = 1.0f / depth[i];
    }
  }
}

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

ffi::Error GetMeshBatch(const char* op, ffi::Buffer<ffi::F32>& points,
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
int64_t BandsPerImage(int64_t num_images, int32_t height) {
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t images = std::max<int64_t>(num_images, 1);
  return std::max<int64_t>(1, std::min<int64_t>(height, (hw + images - 1) / images));
}

// points: [..., V, 3] float32 camera-space vertices; triangles: [..., F, 3]
// int32 (see MeshBatch). Results: triangle_id [..., H, W] int32 (-1 =
// background), barycentric [..., H, W, 3] float32, depth [..., H, W] float32
// (mm), fragments [...] int32 (sum of the clipped bounding-box areas of the
// drawn triangles); zeros on background.
// RasterizeImpl and RasterizeDepthImpl (bary == nullptr: no barycentrics).
ffi::Error Rasterize(ffi::Buffer<ffi::F32>& points, ffi::Buffer<ffi::S32>& triangles,
                     int32_t* ids, float* bary, float* zbuf, int32_t* fragments, int32_t width,
                     int32_t height, float focal, float cx, float cy, float near, int32_t cull) {
  MeshBatch m;
  if (ffi::Error err = GetMeshBatch("rasterize", points, triangles, &m); err.failure()) {
    return err;
  }
  const Camera cam{width, height, focal, cx, cy, near};
  const PixelRays rays(cam);
  const int64_t num_pixels = static_cast<int64_t>(width) * height;
  // zbuf holds inverse depths until ResolveRows.
  // Work units (image, part). With at least one image per thread, a unit
  // rasterizes a whole image in one pass. Otherwise projection and set-up split
  // an image's vertices and triangles into `parts` ranges, and the drawing its
  // rows into `parts` bands, so that one image keeps every thread busy too.
  const int64_t parts = BandsPerImage(m.num_images, height);
  const int64_t units = m.num_images * parts;
  std::vector<int64_t> counts(units, 0);
  std::vector<float> proj(m.num_images * m.num_vertices * 2);
  const auto clear_rows = [&](int64_t image, int32_t r0, int32_t r1) {
    std::fill(zbuf + image * num_pixels + static_cast<int64_t>(r0) * width,
              zbuf + image * num_pixels + static_cast<int64_t>(r1) * width, 0.0f);
    std::fill(ids + image * num_pixels + static_cast<int64_t>(r0) * width,
              ids + image * num_pixels + static_cast<int64_t>(r1) * width, -1);
  };
  const auto resolve_rows = [&](int64_t image, int32_t r0, int32_t r1) {
    ResolveRows(points.typed_data() + image * m.num_vertices * 3, m.TrianglesOf(image), cam,
                rays, r0, r1, ids + image * num_pixels,
                bary == nullptr ? nullptr : bary + 3 * image * num_pixels,
                zbuf + image * num_pixels);
  };
  const auto project = [&](int64_t image, int64_t v0, int64_t v1) {
    ProjectVertices(points.typed_data() + (image * m.num_vertices + v0) * 3, v1 - v0, cam,
                    proj.data() + (image * m.num_vertices + v0) * 2);
  };
  const auto setup = [&](int64_t unit, int64_t f0, int64_t f1,
                         std::vector<DrawnTriangle>* drawn) {
    const int64_t image = unit / parts;
    SetupTriangles(points.typed_data() + image * m.num_vertices * 3,
                   proj.data() + image * m.num_vertices * 2, m.TrianglesOf(image), f0, f1, cam,
                   rays, cull != 0, drawn, &counts[unit], zbuf + image * num_pixels,
                   ids + image * num_pixels);
  };
  if (parts == 1) {
    ParallelFor(units, [&](int64_t image) {
      project(image, 0, m.num_vertices);
      clear_rows(image, 0, height);
      setup(image, 0, m.num_faces, nullptr);
      resolve_rows(image, 0, height);
    });
  } else {
    std::vector<std::vector<DrawnTriangle>> drawn(units);
    const auto range = [&](int64_t unit, int64_t size, int64_t* begin, int64_t* end) {
      *begin = size * (unit % parts) / parts;
      *end = size * (unit % parts + 1) / parts;
    };
    ParallelFor(units, [&](int64_t unit) {
      int64_t v0, v1;
      range(unit, m.num_vertices, &v0, &v1);
      project(unit / parts, v0, v1);
    });
    ParallelFor(units, [&](int64_t unit) {
      int64_t f0, f1;
      range(unit, m.num_faces, &f0, &f1);
      setup(unit, f0, f1, &drawn[unit]);
    });
    ParallelFor(units, [&](int64_t unit) {
      const int64_t image = unit / parts, band = unit % parts;
      const int32_t r0 = static_cast<int32_t>(height * band / parts);
      const int32_t r1 = static_cast<int32_t>(height * (band + 1) / parts);
      clear_rows(image, r0, r1);
      DrawRows(&drawn[image * parts], parts, cam, cull != 0, r0, r1, zbuf + image * num_pixels,
               ids + image * num_pixels);
      resolve_rows(image, r0, r1);
    });
  }
  for (int64_t i = 0; i < m.num_images; ++i) {
    int64_t total = 0;
    for (int64_t part = 0; part < parts; ++part) total += counts[i * parts + part];
    fragments[i] = static_cast<int32_t>(total);
  }
  return ffi::Error::Success();
}

ffi::Error RasterizeImpl(ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::S32> triangles,
                         ffi::ResultBuffer<ffi::S32> triangle_id,
                         ffi::ResultBuffer<ffi::F32> barycentric,
                         ffi::ResultBuffer<ffi::F32> depth,
                         ffi::ResultBuffer<ffi::S32> fragments, int32_t width, int32_t height,
                         float focal, float cx, float cy, float near, int32_t cull) {
  return Rasterize(points, triangles, triangle_id->typed_data(), barycentric->typed_data(),
                   depth->typed_data(), fragments->typed_data(), width, height, focal, cx, cy,
                   near, cull);
}

// RasterizeImpl without the barycentrics.
ffi::Error RasterizeDepthImpl(ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::S32> triangles,
                              ffi::ResultBuffer<ffi::S32> triangle_id,
                              ffi::ResultBuffer<ffi::F32> depth,
                              ffi::ResultBuffer<ffi::S32> fragments, int32_t width,
                              int32_t height, float focal, float cx, float cy, float near,
                              int32_t cull) {
  return Rasterize(points, triangles, triangle_id->typed_data(), nullptr, depth->typed_data(),
                   fragments->typed_data(), width, height, focal, cx, cy, near, cull);
}

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

// ---------------------------------------------------------------------------
// Antialiasing: the discrete half of rasterize.antialias (which pixel pairs
// straddle a silhouette edge, and which triangle edge that is). The blending
// itself, and so the gradient, stays in JAX (rasterize._blend_pairs).

constexpr int kWalkSteps = 2;  // As _WALK_STEPS in rasterize.py.

// Orientation (+1, 0 or -1) of triangles [f0, f1) of one image, as
// _silhouette_bits: the sign of det[p0, p1, p2].
void FaceFacing(const float* points, const int32_t* tris, int64_t f0, int64_t f1,
                int8_t* facing) {
  for (int64_t f = f0; f < f1; ++f) {
    const float* p0 = points + 3 * static_cast<int64_t>(tris[3 * f]);
    const float* p1 = points + 3 * static_cast<int64_t>(tris[3 * f + 1]);
    const float* p2 = points + 3 * static_cast<int64_t>(tris[3 * f + 2]);
    const float c0 = p1[1] * p2[2] - p1[2] * p2[1];
    const float c1 = p1[2] * p2[0] - p1[0] * p2[2];
    const float c2 = p1[0] * p2[1] - p1[1] * p2[0];
    const float det = p0[0] * c0 + p0[1] * c1 + p0[2] * c2;
    facing[f] = static_cast<int8_t>((det > 0.0f) - (det < 0.0f));
  }
}

// Per triangle in [f0, f1) of one image: bit k set when edge k is a silhouette
// edge (no neighbour, or the neighbour faces the other way), as
// _silhouette_bits; facing covers all the image's triangles.
void SilhouetteBits(const int32_t* neighbours, const int8_t* facing, int64_t f0, int64_t f1,
                    int32_t* bits) {
  for (int64_t f = f0; f < f1; ++f) {
    int32_t b = 0;
    for (int k = 0; k < 3; ++k) {
      const int32_t nb = neighbours[3 * f + k];
      if (nb < 0 || facing[nb] != facing[f]) b |= 1 << k;
    }
    bits[f] = b;
  }
}

// One step of _near_silhouette for triangles [f0, f1): ring[f] = near[f] or'ed
// with near of its neighbours.
void NearSilhouetteStep(const int32_t* neighbours, const int32_t* near, int64_t f0, int64_t f1,
                        int32_t* ring) {
  for (int64_t f = f0; f < f1; ++f) {
    int32_t r = near[f];
    for (int k = 0; k < 3; ++k) {
      const int32_t nb = neighbours[3 * f + k];
      if (nb >= 0) r |= near[nb];
    }
    ring[f] = r;
  }
}

// Where the segment from the inner pixel centre (ray slopes dx_in, dy_in) to
// the outer one (one pixel along hx, hy) leaves a triangle: fraction t (inf if
// it does not), the edge crossed first, and whether this axis handles that
// edge (as _pair_edges).
struct Crossing {
  float t;
  int edge;
  bool axis_ok;
};

Crossing PairCrossing(const float* p[3], float dx_in, float dy_in, float hx, float hy,
                      float sign, bool vertical) {
  auto edges = [&](float dx, float dy, float e[3]) {
    float ax[3], ay[3];
    for (int k = 0; k < 3; ++k) {
      ax[k] = p[k][0] - p[k][2] * dx;
      ay[k] = p[k][1] - p[k][2] * dy;
    }
    for (int i = 0; i < 3; ++i) {
      const int j = (i + 1) % 3, k = (i + 2) % 3;
      e[i] = ax[j] * ay[k] - ay[j] * ax[k];
    }
  };
  float ei[3], eo[3], ep[3];
  edges(dx_in, dy_in, ei);
  edges(dx_in + sign * hx, dy_in + sign * hy, eo);
  edges(dx_in + hy, dy_in + hx, ep);
  const float orient = (ei[0] + ei[1] + ei[2] < 0.0f) ? -1.0f : 1.0f;
  Crossing c{std::numeric_limits<float>::infinity(), 0, false};
  for (int k = 0; k < 3; ++k) {
    const float a = ei[k] * orient, b = eo[k] * orient;
    if (b < 0.0f && a >= 0.0f) {
      const float t = a / (a - b);
      if (t < c.t) {  // the first minimum wins
        c.t = t;
        c.edge = k;
      }
    }
  }
  if (!std::isfinite(c.t)) return c;
  const int k = c.edge;
  const float along = std::fabs(eo[k] * orient - ei[k] * orient);
  const float across = std::fabs(ep[k] * orient - ei[k] * orient);
  c.axis_ok = vertical ? along > across : along >= across;
  return c;
}

// One pair record: flat index of the first (left / top) pixel within its group
// of images, flags (bit 0 vertical, bit 1 first pixel in front, bits 2-3 the
// silhouette edge), and the triangle (within its image) that edge belongs to.
struct PairRecord {
  int32_t pixel, flags, triangle;
};

// The pairs of rows [row_begin, row_end) of one image (a pair belongs to the
// row of its first pixel) whose segment crosses a silhouette edge.
void SilhouettePairs(const float* points, const int32_t* tris, const int32_t* neighbours,
                     const int32_t* bits, const int32_t* near,
                     const int32_t* ids, const float* depth, const Camera& cam,
                     int32_t row_begin, int32_t row_end, int64_t pixel_offset,
                     std::vector<PairRecord>& out) {
  const int32_t width = cam.width, height = cam.height;
  const float step = 1.0f / cam.focal;
  for (int32_t i = row_begin; i < row_end; ++i) {
    for (int vertical = 0; vertical < 2; ++vertical) {
      if (vertical && i + 1 >= height) continue;
      const int32_t ncols = vertical ? width : width - 1;
      for (int32_t j = 0; j < ncols; ++j) {
        const int64_t pa = static_cast<int64_t>(i) * width + j;
        const int64_t pb = pa + (vertical ? width : 1);
        const int32_t ta = ids[pa], tb = ids[pb];
        if (ta == tb) continue;
        const bool a_front = ta >= 0 && (tb < 0 || depth[pa] <= depth[pb]);
        int32_t tri = a_front ? ta : tb;
        if (tri < 0 || near[tri] == 0) continue;
        const float dxa = (static_cast<float>(j) + 0.5f - cam.cx) / cam.focal;
        const float dya = (static_cast<float>(i) + 0.5f - cam.cy) / cam.focal;
        const float hx = vertical ? 0.0f : step, hy = vertical ? step : 0.0f;
        const float dx_in = dxa + (a_front ? 0.0f : hx);
        const float dy_in = dya + (a_front ? 0.0f : hy);
        const float sign = a_front ? 1.0f : -1.0f;
        auto crossing = [&](int32_t t) {
          const float* p[3] = {points + 3 * static_cast<int64_t>(tris[3 * t]),
                               points + 3 * static_cast<int64_t>(tris[3 * t + 1]),
                               points + 3 * static_cast<int64_t>(tris[3 * t + 2])};
          return PairCrossing(p, dx_in, dy_in, hx, hy, sign, vertical != 0);
        };
        auto silhouette_hit = [&](int32_t t, const Crossing& c) {
          return std::isfinite(c.t) && c.axis_ok && ((bits[t] >> c.edge) & 1);
        };
        // nvdiffrast's rule (the front triangle's first crossed edge), then up
        // to kWalkSteps steps through interior edges into the neighbours.
        Crossing c = crossing(tri);
        bool done = silhouette_hit(tri, c);
        bool alive = std::isfinite(c.t);
        for (int s = 0; s < kWalkSteps && alive && !done; ++s) {
          const int32_t next = neighbours[3 * static_cast<int64_t>(tri) + c.edge];
          if (next < 0) break;
          const Crossing cn = crossing(next);
          if (!(std::isfinite(cn.t) && cn.t >= c.t)) break;
          tri = next;
          c = cn;
          done = silhouette_hit(tri, c);
        }
        if (!done) continue;
        out.push_back({static_cast<int32_t>(pixel_offset + pa),
                       vertical | (a_front ? 2 : 0) | (c.edge << 2), tri});
      }
    }
  }
}

// points [..., V, 3], triangle_id and depth [..., H, W], triangles and
// neighbours [..., F, 3] (see MeshBatch). Results: pairs [..., P, 3] int32
// (PairRecord rows of each group of images, compact, then padding rows whose
// pixel is the group's pixel count), count [..., 1] int32 per group: the
// number of pairs found, of which the first P (the capacity) are kept.
ffi::Error SilhouettePairsImpl(ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::S32> triangle_id,
                               ffi::Buffer<ffi::F32> depth, ffi::Buffer<ffi::S32> triangles,
                               ffi::Buffer<ffi::S32> neighbours,
                               ffi::ResultBuffer<ffi::S32> pairs,
                               ffi::ResultBuffer<ffi::S32> count, int32_t width, int32_t height,
                               float focal, float cx, float cy) {
  MeshBatch m;
  if (ffi::Error err = GetMeshBatch("antialias", points, triangles, &m); err.failure()) {
    return err;
  }
  const auto pdims = pairs->dimensions();
  const int64_t capacity = pdims[pdims.size() - 2];
  const int64_t num_groups = static_cast<int64_t>(count->element_count());
  if (num_groups < 1 || m.num_images % num_groups != 0) {
    return ffi::Error::InvalidArgument("antialias: bad pair-list shape");
  }
  const int64_t images_per_group = m.num_images / num_groups;
  const Camera cam{width, height, focal, cx, cy, 0.0f};
  const int64_t num_pixels = static_cast<int64_t>(width) * height;
  const int64_t bands = BandsPerImage(m.num_images, height);
  std::vector<std::vector<PairRecord>> found(m.num_images * bands);
  // The per-triangle silhouette tables (_silhouette_bits, then kWalkSteps steps
  // of _near_silhouette), in passes over bands of faces as over bands of rows.
  const int64_t nf = m.num_faces;
  std::vector<int8_t> facing_buffer(m.num_images * nf);
  std::vector<int32_t> tables(3 * m.num_images * nf);
  int8_t* facing = facing_buffer.data();
  int32_t *bits = tables.data(), *near = bits + m.num_images * nf, *ring = near + m.num_images * nf;
  auto face_pass = [&](auto pass) {
    ParallelFor(m.num_images * bands, [&](int64_t unit) {
      const int64_t image = unit / bands, band = unit % bands;
      const int32_t* tris = m.TrianglesOf(image);
      pass(image, tris, neighbours.typed_data() + (tris - m.triangles), image * nf,
           nf * band / bands, nf * (band + 1) / bands);
    });
  };
  face_pass([&](int64_t image, const int32_t* tris, const int32_t*, int64_t off, int64_t f0,
                int64_t f1) {
    FaceFacing(points.typed_data() + image * m.num_vertices * 3, tris, f0, f1, facing + off);
  });
  face_pass([&](int64_t, const int32_t*, const int32_t* nbs, int64_t off, int64_t f0,
                int64_t f1) { SilhouetteBits(nbs, facing + off, f0, f1, bits + off); });
  const int32_t* walked = bits;
  for (int step = 0; step < kWalkSteps; ++step) {
    int32_t* next = step % 2 == 0 ? near : ring;
    face_pass([&](int64_t, const int32_t*, const int32_t* nbs, int64_t off, int64_t f0,
                  int64_t f1) { NearSilhouetteStep(nbs, walked + off, f0, f1, next + off); });
    walked = next;
  }
  ParallelFor(m.num_images * bands, [&](int64_t unit) {
    const int64_t image = unit / bands, band = unit % bands;
    const int32_t* tris = m.TrianglesOf(image);
    const int32_t* nbs = neighbours.typed_data() + (tris - m.triangles);
    const int32_t r0 = static_cast<int32_t>(height * band / bands);
    const int32_t r1 = static_cast<int32_t>(height * (band + 1) / bands);
    SilhouettePairs(points.typed_data() + image * m.num_vertices * 3, tris, nbs,
                    bits + image * nf, walked + image * nf,
                    triangle_id.typed_data() + image * num_pixels,
                    depth.typed_data() + image * num_pixels, cam, r0, r1,
                    (image % images_per_group) * num_pixels, found[unit]);
  });
  int32_t* out = pairs->typed_data();
  for (int64_t g = 0; g < num_groups; ++g) {
    int32_t* rec = out + 3 * g * capacity;
    int64_t n = 0;
    for (int64_t u = g * images_per_group * bands; u < (g + 1) * images_per_group * bands; ++u) {
      for (const PairRecord& r : found[u]) {
        if (n < capacity) {
          rec[3 * n] = r.pixel;
          rec[3 * n + 1] = r.flags;
          rec[3 * n + 2] = r.triangle;
        }
        ++n;
      }
    }
    count->typed_data()[g] = static_cast<int32_t>(n);  // may exceed the capacity.
    const int32_t pad = static_cast<int32_t>(images_per_group * num_pixels);
    for (int64_t k = n; k < capacity; ++k) {
      rec[3 * k] = pad;
      rec[3 * k + 1] = 0;
      rec[3 * k + 2] = 0;
    }
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// Area-weighted vertex normals (shading.vertex_normals) and their transpose.

// Sums the unnormalised face normals into summed [V, 3] (zeroed first).
void SumFaceNormals(const float* p, const int32_t* tris, int64_t num_vertices, int64_t num_faces,
                    float* summed) {
  std::fill(summed, summed + 3 * num_vertices, 0.0f);
  for (int64_t f = 0; f < num_faces; ++f) {
    const int32_t* v = tris + 3 * f;
    const float* p0 = p + 3 * static_cast<int64_t>(v[0]);
    const float* p1 = p + 3 * static_cast<int64_t>(v[1]);
    const float* p2 = p + 3 * static_cast<int64_t>(v[2]);
    const float a[3] = {p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]};
    const float b[3] = {p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]};
    const float n[3] = {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                        a[0] * b[1] - a[1] * b[0]};
    for (int k = 0; k < 3; ++k) {
      float* s = summed + 3 * static_cast<int64_t>(v[k]);
      s[0] += n[0];
      s[1] += n[1];
      s[2] += n[2];
    }
  }
}

// The transpose of SumFaceNormals: adds to d_p [V, 3] the cotangent of the
// vertex positions p for the cotangent ds [V, 3] of the summed face normals.
void FaceNormalsTranspose(const float* p, const int32_t* tris, int64_t num_faces,
                          const float* ds, float* dp) {
  for (int64_t f = 0; f < num_faces; ++f) {
    const int32_t* v = tris + 3 * f;
    const float* p0 = p + 3 * static_cast<int64_t>(v[0]);
    const float* p1 = p + 3 * static_cast<int64_t>(v[1]);
    const float* p2 = p + 3 * static_cast<int64_t>(v[2]);
    const float a[3] = {p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]};
    const float b[3] = {p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]};
    float dn[3];
    for (int c = 0; c < 3; ++c) {
      dn[c] = ds[3 * static_cast<int64_t>(v[0]) + c] + ds[3 * static_cast<int64_t>(v[1]) + c] +
              ds[3 * static_cast<int64_t>(v[2]) + c];
    }
    // n = a x b: dn . (a x b) = a . (b x dn) = b . (dn x a).
    const float da[3] = {b[1] * dn[2] - b[2] * dn[1], b[2] * dn[0] - b[0] * dn[2],
                         b[0] * dn[1] - b[1] * dn[0]};
    const float db[3] = {dn[1] * a[2] - dn[2] * a[1], dn[2] * a[0] - dn[0] * a[2],
                         dn[0] * a[1] - dn[1] * a[0]};
    float* d0 = dp + 3 * static_cast<int64_t>(v[0]);
    float* d1 = dp + 3 * static_cast<int64_t>(v[1]);
    float* d2 = dp + 3 * static_cast<int64_t>(v[2]);
    for (int c = 0; c < 3; ++c) {
      d1[c] += da[c];
      d2[c] += db[c];
      d0[c] -= da[c] + db[c];
    }
  }
}

// verts [..., V, 3], triangles [..., F, 3] (see MeshBatch) -> unit normals
// [..., V, 3]: s / sqrt(|s|^2 + eps) of the summed face normals s.
ffi::Error VertexNormalsImpl(ffi::Buffer<ffi::F32> verts, ffi::Buffer<ffi::S32> triangles,
                             ffi::ResultBuffer<ffi::F32> normals, float eps) {
  MeshBatch m;
  if (ffi::Error err = GetMeshBatch("vertex_normals", verts, triangles, &m); err.failure()) {
    return err;
  }
  ParallelFor(m.num_images, [&](int64_t image) {
    const float* p = verts.typed_data() + image * m.num_vertices * 3;
    float* out = normals->typed_data() + image * m.num_vertices * 3;
    SumFaceNormals(p, m.TrianglesOf(image), m.num_vertices, m.num_faces, out);
    for (int64_t v = 0; v < m.num_vertices; ++v) {
      float* s = out + 3 * v;
      const float r = std::sqrt(s[0] * s[0] + s[1] * s[1] + s[2] * s[2] + eps);
      s[0] /= r;
      s[1] /= r;
      s[2] /= r;
    }
  });
  return ffi::Error::Success();
}

// The transpose: cotangent [..., V, 3] of the normals -> [..., V, 3] of verts.
ffi::Error VertexNormalsGradImpl(ffi::Buffer<ffi::F32> verts, ffi::Buffer<ffi::S32> triangles,
                                 ffi::Buffer<ffi::F32> cotangent,
                                 ffi::ResultBuffer<ffi::F32> d_verts, float eps) {
  MeshBatch m;
  if (ffi::Error err = GetMeshBatch("vertex_normals", verts, triangles, &m); err.failure()) {
    return err;
  }
  ParallelFor(m.num_images, [&](int64_t image) {
    const float* p = verts.typed_data() + image * m.num_vertices * 3;
    const float* g = cotangent.typed_data() + image * m.num_vertices * 3;
    const int32_t* tris = m.TrianglesOf(image);
    float* dp = d_verts->typed_data() + image * m.num_vertices * 3;
    // ds = g / r - s (s . g) / r^3, the cotangent of the summed normals.
    std::vector<float> ds(3 * m.num_vertices);
    SumFaceNormals(p, tris, m.num_vertices, m.num_faces, ds.data());
    for (int64_t v = 0; v < m.num_vertices; ++v) {
      float* s = ds.data() + 3 * v;
      const float* gv = g + 3 * v;
      const float r = std::sqrt(s[0] * s[0] + s[1] * s[1] + s[2] * s[2] + eps);
      const float sg = (s[0] * gv[0] + s[1] * gv[1] + s[2] * gv[2]) / (r * r * r);
      for (int c = 0; c < 3; ++c) s[c] = gv[c] / r - s[c] * sg;
    }
    std::fill(dp, dp + 3 * m.num_vertices, 0.0f);
    FaceNormalsTranspose(p, tris, m.num_faces, ds.data(), dp);
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// The per-vertex stage of render(): camera transform, area-weighted vertex
// normals rotated into camera space, and SH shading (camera.to_camera,
// shading.vertex_normals, camera.rotate_to_camera, shading.shade), and its
// transpose.

// Real SH constants of shading.py, rounded to float32 as JAX rounds them.
constexpr float kShC0 = 0.28209479177387814f;   // _C0
constexpr float kShC1 = 0.4886025119029199f;    // _C1
constexpr float kShC2 = 1.0925484305920792f;    // _C2
constexpr float kShC20 = 0.31539156525252005f;  // _C20
constexpr float kShC22 = 0.5462742152960396f;   // _C22

// y = R x for a row-major 3 x 3 matrix R.
inline void Rotate(const float* r, const float* x, float* y) {
  for (int i = 0; i < 3; ++i) y[i] = r[3 * i] * x[0] + r[3 * i + 1] * x[1] + r[3 * i + 2] * x[2];
}

// The 9 SH functions at a unit direction n (shading.sh_basis).
inline void ShBasis(const float* n, float* y) {
  const float x = n[0], yy = n[1], z = n[2];
  y[0] = kShC0;
  y[1] = kShC1 * yy;
  y[2] = kShC1 * z;
  y[3] = kShC1 * x;
  y[4] = kShC2 * x * yy;
  y[5] = kShC2 * yy * z;
  y[6] = kShC20 * (3.0f * z * z - 1.0f);
  y[7] = kShC2 * x * z;
  y[8] = kShC22 * (x * x - yy * yy);
}

// Per-image arrays of the vertex stage.
struct VertexStageImage {
  const float *verts, *albedo, *rotation, *translation, *light;
  const int32_t* tris;
};

// The unit normal n = s / |s| (as shading.vertex_normals: s / sqrt(|s|^2 +
// eps)) of summed face normals s; returns 1 / sqrt(|s|^2 + eps).
inline float UnitNormal(const float* s, float eps, float* n) {
  const float inv = 1.0f / std::sqrt(s[0] * s[0] + s[1] * s[1] + s[2] * s[2] + eps);
  for (int c = 0; c < 3; ++c) n[c] = s[c] * inv;
  return inv;
}

// Irradiance sum_k y[k] light[k, c] of the 9 SH values y: [3].
inline void Irradiance(const float* y, const float* light, float* irr) {
  irr[0] = irr[1] = irr[2] = 0.0f;
  for (int k = 0; k < 9; ++k) {
    for (int c = 0; c < 3; ++c) irr[c] += y[k] * light[3 * k + c];
  }
}

// Forward of vertices [v0, v1) of one image, given its summed face normals
// (model space): cam = R v + t, normals = R n (n the unit vertex normal),
// colors = albedo * sum_k Y_k(R n) light[k].
void VertexStageForward(const VertexStageImage& in, int64_t v0, int64_t v1, float eps,
                        const float* summed, float* cam, float* normals, float* colors) {
  const float* r = in.rotation;
  for (int64_t v = v0; v < v1; ++v) {
    float* c = cam + 3 * v;
    Rotate(r, in.verts + 3 * v, c);
    for (int i = 0; i < 3; ++i) c[i] += in.translation[i];
    float n[3], y[9], irr[3];
    UnitNormal(summed + 3 * v, eps, n);
    float* m = normals + 3 * v;
    Rotate(r, n, m);
    ShBasis(m, y);
    Irradiance(y, in.light, irr);
    for (int ch = 0; ch < 3; ++ch) colors[3 * v + ch] = in.albedo[3 * v + ch] * irr[ch];
  }
}

// Sums over a range of vertices of the rotation's, translation's and light's
// cotangents.
struct VertexStageSums {
  double rotation[9] = {0}, translation[3] = {0}, light[27] = {0};
};

// Transpose of vertices [v0, v1) of one image: the cotangents of cam, normals
// and colors -> d_albedo, d_verts (the camera transform's part only), ds (the
// cotangent of the summed face normals) and *sums.
void VertexStageBackward(const VertexStageImage& in, int64_t v0, int64_t v1, float eps,
                         const float* summed, const float* g_cam, const float* g_normals,
                         const float* g_colors, float* d_verts, float* d_albedo, float* ds,
                         VertexStageSums* sums) {
  const float* r = in.rotation;
  const float* light = in.light;
  VertexStageSums acc;
  for (int64_t v = v0; v < v1; ++v) {
    const float* p = in.verts + 3 * v;
    const float* s = summed + 3 * v;
    float n[3], m[3], y[9], irr[3];
    const float inv = UnitNormal(s, eps, n);
    Rotate(r, n, m);
    ShBasis(m, y);
    Irradiance(y, light, irr);
    const float* a = in.albedo + 3 * v;
    const float* gc = g_colors + 3 * v;
    float d_irr[3];
    for (int ch = 0; ch < 3; ++ch) {
      d_albedo[3 * v + ch] = gc[ch] * irr[ch];
      d_irr[ch] = gc[ch] * a[ch];
    }
    float dy[9];
    for (int k = 0; k < 9; ++k) {
      dy[k] = light[3 * k] * d_irr[0] + light[3 * k + 1] * d_irr[1] + light[3 * k + 2] * d_irr[2];
      for (int ch = 0; ch < 3; ++ch) acc.light[3 * k + ch] += y[k] * d_irr[ch];
    }
    const float x = m[0], yy = m[1], z = m[2];
    const float* gn = g_normals + 3 * v;
    const float dm[3] = {
        gn[0] + kShC1 * dy[3] + kShC2 * yy * dy[4] + kShC2 * z * dy[7] +
            2.0f * kShC22 * x * dy[8],
        gn[1] + kShC1 * dy[1] + kShC2 * x * dy[4] + kShC2 * z * dy[5] -
            2.0f * kShC22 * yy * dy[8],
        gn[2] + kShC1 * dy[2] + kShC2 * yy * dy[5] + 6.0f * kShC20 * z * dy[6] +
            kShC2 * x * dy[7]};
    const float* gp = g_cam + 3 * v;
    float* dp = d_verts + 3 * v;
    for (int j = 0; j < 3; ++j) dp[j] = r[j] * gp[0] + r[3 + j] * gp[1] + r[6 + j] * gp[2];
    for (int i = 0; i < 3; ++i) {
      acc.translation[i] += gp[i];
      for (int j = 0; j < 3; ++j) acc.rotation[3 * i + j] += gp[i] * p[j] + dm[i] * n[j];
    }
    // dn = R^T dm, then through n = s / |s|: ds = (dn - n (n . dn)) / |s|.
    float dn[3];
    for (int j = 0; j < 3; ++j) dn[j] = r[j] * dm[0] + r[3 + j] * dm[1] + r[6 + j] * dm[2];
    const float nd = n[0] * dn[0] + n[1] * dn[1] + n[2] * dn[2];
    for (int c = 0; c < 3; ++c) ds[3 * v + c] = (dn[c] - n[c] * nd) * inv;
  }
  *sums = acc;
}

// Checks the shapes of the vertex stage's per-image arrays against the batch.
ffi::Error GetVertexStage(ffi::Buffer<ffi::F32>& verts, ffi::Buffer<ffi::S32>& triangles,
                          ffi::Buffer<ffi::F32>& albedo, ffi::Buffer<ffi::F32>& rotation,
                          ffi::Buffer<ffi::F32>& translation, ffi::Buffer<ffi::F32>& light,
                          MeshBatch* m) {
  if (ffi::Error err = GetMeshBatch("vertex_stage", verts, triangles, m); err.failure()) {
    return err;
  }
  const size_t n = static_cast<size_t>(m->num_images);
  if (albedo.element_count() != verts.element_count() || rotation.element_count() != 9 * n ||
      translation.element_count() != 3 * n || light.element_count() != 27 * n) {
    return ffi::Error::InvalidArgument(
        "vertex_stage: albedo [..., V, 3], rotation [..., 3, 3], translation [..., 3] and "
        "light [..., 9, 3] must match verts [..., V, 3]");
  }
  return ffi::Error::Success();
}

VertexStageImage VertexStageOf(const MeshBatch& m, int64_t image, ffi::Buffer<ffi::F32>& verts,
                               ffi::Buffer<ffi::F32>& albedo, ffi::Buffer<ffi::F32>& rotation,
                               ffi::Buffer<ffi::F32>& translation, ffi::Buffer<ffi::F32>& light) {
  const int64_t off = image * m.num_vertices * 3;
  return {verts.typed_data() + off, albedo.typed_data() + off, rotation.typed_data() + 9 * image,
          translation.typed_data() + 3 * image, light.typed_data() + 27 * image,
          m.TrianglesOf(image)};
}

// Vertex ranges of the vertex stage: `parts` per image, so that one image
// keeps every thread busy too (the face loops stay whole per image).
struct VertexParts {
  int64_t parts, num_vertices;
  void Range(int64_t unit, int64_t* v0, int64_t* v1) const {
    *v0 = num_vertices * (unit % parts) / parts;
    *v1 = num_vertices * (unit % parts + 1) / parts;
  }
};

VertexParts VertexPartsOf(const MeshBatch& m) {
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t images = std::max<int64_t>(m.num_images, 1);
  return {std::max<int64_t>(1, std::min<int64_t>(m.num_vertices, (hw + images - 1) / images)),
          m.num_vertices};
}

// Face ranges of the vertex stage's per-face loops (summed face normals and
// their transpose), `parts` per image like VertexParts. Part 0 of an image
// accumulates into the result itself, each further part into a zeroed buffer
// of its own; Merge then adds the buffers to the result in part order, so the
// sums do not depend on the thread schedule (with one part per image, the
// batched case, nothing is buffered).
class FaceParts {
 public:
  FaceParts(const MeshBatch& m, int64_t parts)
      : parts_(parts), num_faces_(m.num_faces), size_(3 * m.num_vertices),
        buffers_(m.num_images * (parts - 1) * size_) {}
  void Range(int64_t unit, int64_t* f0, int64_t* f1) const {
    *f0 = num_faces_ * (unit % parts_) / parts_;
    *f1 = num_faces_ * (unit % parts_ + 1) / parts_;
  }
  // Where work unit `unit` accumulates, given its image's result.
  float* Sums(int64_t unit, float* result) {
    const int64_t part = unit % parts_;
    if (part == 0) return result;
    return buffers_.data() + ((unit / parts_) * (parts_ - 1) + part - 1) * size_;
  }
  // result[v] += the further parts' sums, for vertices [v0, v1) of an image.
  void Merge(int64_t image, int64_t v0, int64_t v1, float* result) const {
    for (int64_t part = 1; part < parts_; ++part) {
      const float* b = buffers_.data() + (image * (parts_ - 1) + part - 1) * size_;
      for (int64_t i = 3 * v0; i < 3 * v1; ++i) result[i] += b[i];
    }
  }

 private:
  int64_t parts_, num_faces_, size_;
  std::vector<float> buffers_;
};

// verts, albedo [..., V, 3]; rotation [..., 3, 3]; translation [..., 3]; light
// [..., 9, 3]; triangles [..., F, 3] (see MeshBatch). Results [..., V, 3]:
// camera-space vertices, camera-space unit normals, colours, and the summed
// face normals (the residual of the transpose).
ffi::Error VertexStageImpl(ffi::Buffer<ffi::F32> verts, ffi::Buffer<ffi::S32> triangles,
                           ffi::Buffer<ffi::F32> albedo, ffi::Buffer<ffi::F32> rotation,
                           ffi::Buffer<ffi::F32> translation, ffi::Buffer<ffi::F32> light,
                           ffi::ResultBuffer<ffi::F32> cam, ffi::ResultBuffer<ffi::F32> normals,
                           ffi::ResultBuffer<ffi::F32> colors,
                           ffi::ResultBuffer<ffi::F32> summed, float eps) {
  MeshBatch m;
  if (ffi::Error err = GetVertexStage(verts, triangles, albedo, rotation, translation, light, &m);
      err.failure()) {
    return err;
  }
  const VertexParts parts = VertexPartsOf(m);
  FaceParts faces(m, parts.parts);
  ParallelFor(m.num_images * parts.parts, [&](int64_t unit) {
    const int64_t image = unit / parts.parts, off = image * m.num_vertices * 3;
    int64_t f0, f1;
    faces.Range(unit, &f0, &f1);
    SumFaceNormals(verts.typed_data() + off, m.TrianglesOf(image) + 3 * f0, m.num_vertices,
                   f1 - f0, faces.Sums(unit, summed->typed_data() + off));
  });
  ParallelFor(m.num_images * parts.parts, [&](int64_t unit) {
    const int64_t image = unit / parts.parts, off = image * m.num_vertices * 3;
    int64_t v0, v1;
    parts.Range(unit, &v0, &v1);
    faces.Merge(image, v0, v1, summed->typed_data() + off);
    VertexStageForward(VertexStageOf(m, image, verts, albedo, rotation, translation, light), v0,
                       v1, eps, summed->typed_data() + off, cam->typed_data() + off,
                       normals->typed_data() + off, colors->typed_data() + off);
  });
  return ffi::Error::Success();
}

// The transpose of VertexStageImpl w.r.t. verts, albedo, rotation, translation
// and light, given the summed face normals of the forward call and the
// cotangents of its first three results.
ffi::Error VertexStageGradImpl(ffi::Buffer<ffi::F32> verts, ffi::Buffer<ffi::S32> triangles,
                               ffi::Buffer<ffi::F32> albedo, ffi::Buffer<ffi::F32> rotation,
                               ffi::Buffer<ffi::F32> translation, ffi::Buffer<ffi::F32> light,
                               ffi::Buffer<ffi::F32> summed, ffi::Buffer<ffi::F32> g_cam,
                               ffi::Buffer<ffi::F32> g_normals, ffi::Buffer<ffi::F32> g_colors,
                               ffi::ResultBuffer<ffi::F32> d_verts,
                               ffi::ResultBuffer<ffi::F32> d_albedo,
                               ffi::ResultBuffer<ffi::F32> d_rotation,
                               ffi::ResultBuffer<ffi::F32> d_translation,
                               ffi::ResultBuffer<ffi::F32> d_light, float eps) {
  MeshBatch m;
  if (ffi::Error err = GetVertexStage(verts, triangles, albedo, rotation, translation, light, &m);
      err.failure()) {
    return err;
  }
  const VertexParts parts = VertexPartsOf(m);
  std::vector<VertexStageSums> sums(m.num_images * parts.parts);
  std::vector<float> ds(m.num_images * m.num_vertices * 3);
  ParallelFor(m.num_images * parts.parts, [&](int64_t unit) {
    const int64_t image = unit / parts.parts, off = image * m.num_vertices * 3;
    int64_t v0, v1;
    parts.Range(unit, &v0, &v1);
    VertexStageBackward(VertexStageOf(m, image, verts, albedo, rotation, translation, light), v0,
                        v1, eps, summed.typed_data() + off, g_cam.typed_data() + off,
                        g_normals.typed_data() + off, g_colors.typed_data() + off,
                        d_verts->typed_data() + off, d_albedo->typed_data() + off,
                        ds.data() + off, &sums[unit]);
  });
  FaceParts faces(m, parts.parts);
  ParallelFor(m.num_images * parts.parts, [&](int64_t unit) {
    const int64_t image = unit / parts.parts, off = image * m.num_vertices * 3;
    int64_t f0, f1;
    faces.Range(unit, &f0, &f1);
    float* dp = d_verts->typed_data() + off;
    if (unit % parts.parts != 0) dp = faces.Sums(unit, dp);   // zeroed partial sums
    FaceNormalsTranspose(verts.typed_data() + off, m.TrianglesOf(image) + 3 * f0, f1 - f0,
                         ds.data() + off, dp);
  });
  ParallelFor(m.num_images * parts.parts, [&](int64_t unit) {
    const int64_t image = unit / parts.parts, off = image * m.num_vertices * 3;
    int64_t v0, v1;
    parts.Range(unit, &v0, &v1);
    faces.Merge(image, v0, v1, d_verts->typed_data() + off);
  });
  ParallelFor(m.num_images, [&](int64_t image) {
    VertexStageSums total;
    for (int64_t part = 0; part < parts.parts; ++part) {
      const VertexStageSums& u = sums[image * parts.parts + part];
      for (int k = 0; k < 9; ++k) total.rotation[k] += u.rotation[k];
      for (int k = 0; k < 3; ++k) total.translation[k] += u.translation[k];
      for (int k = 0; k < 27; ++k) total.light[k] += u.light[k];
    }
    for (int k = 0; k < 9; ++k) d_rotation->typed_data()[9 * image + k] = total.rotation[k];
    for (int k = 0; k < 3; ++k) d_translation->typed_data()[3 * image + k] = total.translation[k];
    for (int k = 0; k < 27; ++k) d_light->typed_data()[27 * image + k] = total.light[k];
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// Soft rasterization (SoftRas aggregation, rasterize.soft_rasterize): forward
// and its hand-written transpose. Same float32 formulas as _soft_triangles,
// _soft_fragments and _soft_aggregate, without a fragment budget.
//
// The fragments of a triangle (the pixel centres of its padded box, row after
// row) are evaluated W at a time with GCC vector extensions, with the same
// IEEE rounding per lane as scalar code (-ffp-contract=off applies to vectors
// too): W = 4 (SSE2 on x86, the portable build) or, for the transpose where
// the CPU has AVX (checked at run time), W = 8 in a function compiled for AVX
// alone (target attribute; all it calls with vector arguments is inlined).
// The forward pass hands its per-triangle set-up (projected vertices, boxes,
// ordered by row) to the transpose as a residual.

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

void SoftVertices(const float* points, int64_t begin, int64_t end, const Camera& cam,
                  SoftVertex* out) {
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

// The boxes of triangles [begin, end) that are not skipped (reaching behind
// the near plane, zero screen area, non-finite projection, culled, or outside
// the image) and meet rows [r0, r1), appended to *out in index order.
void SoftBoxes(const SoftVertex* verts, const int32_t* tris, int64_t begin, int64_t end,
               const Camera& cam, const SoftParams& prm, int32_t r0, int32_t r1,
               std::vector<SoftBox>* out) {
  for (int64_t t = begin; t < end; ++t) {
    const SoftVertex& a = verts[tris[3 * t]];
    const SoftVertex& b = verts[tris[3 * t + 1]];
    const SoftVertex& c = verts[tris[3 * t + 2]];
    if (!(a.ok && b.ok && c.ok)) continue;
    const float area = (b.u - a.u) * (c.v - a.v) - (b.v - a.v) * (c.u - a.u);
    if (area == 0.0f || (prm.cull && !(area < 0.0f))) continue;
    SoftBox box;
    const float bv[3] = {a.bv, b.bv, c.bv}, bu[3] = {a.bu, b.bu, c.bu};
    ProjectedBounds(bv, cam.height, &box.row0, &box.nrows, prm.radius);
    if (box.nrows == 0 || box.row0 >= r1 || box.row0 + box.nrows <= r0) continue;
    ProjectedBounds(bu, cam.width, &box.col0, &box.ncols, prm.radius);
    if (box.ncols == 0) continue;
    const SoftVertex* p[3] = {&a, &b, &c};
    for (int k = 0; k < 3; ++k) {
      box.vid[k] = tris[3 * t + k];
      box.u[k] = p[k]->u;
      box.v[k] = p[k]->v;
      box.iz[k] = p[k]->iz;
    }
    out->push_back(box);
  }
}

SoftTri MakeSoftTri(const SoftBox& box) {
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

// The fragments of triangle s in rows [rb, re), W at a time, into the
// per-pixel records acc (rec floats per pixel from pixel first, and a dummy
// record at slot dummy; see SoftForwardRows). a: its vertices' attributes.
template <int W, int kChannels>
SOFT_INLINE void SoftForwardTriangle(const SoftTri& s, const float* const* a, int64_t channels,
                                     int32_t rb, int32_t re, const Camera& cam,
                                     const SoftParams& prm, int64_t first, int64_t rec,
                                     int32_t dummy, float* acc,
                                     typename SoftVec<W>::F* values_buffer) {
  typedef typename SoftVec<W>::F F;
  typedef typename SoftVec<W>::I I;
  F values_fixed[kChannels > 0 ? kChannels : 1];
  F* values = kChannels > 0 ? values_fixed : values_buffer;
  SoftLanes<W> q;
  SoftSpan<W> span(cam, s.col0, s.ncols, rb, re);
  F px{}, py{};
  I pixel{}, valid{};
  while (span.Next(&px, &py, &pixel, &valid)) {
    if (!SoftEval<W>(s, px, py, valid, prm, &q)) continue;
    // Lanes that are not aggregated update the dummy record instead.
    const I slot = q.on ? pixel - static_cast<int32_t>(first) : I{} + dummy;
    F m;
    for (int l = 0; l < W; ++l) m[l] = acc[slot[l] * rec];
    // The fragment either raises m (the old sums are scaled by exp((m - z)
    // / gamma), its weight is prob) or not (its weight is prob exp((z - m)
    // / gamma)): one exp of -|z - m| / gamma (m - z = -(z - m) exactly).
    const I raise = q.on & (m < q.z);
    const F d = ExpF(-AbsF(q.z - m) / prm.gamma);
    const F m_new = raise ? q.z : m;
    const F scale = raise ? d : Splat<F>(1.0f);
    const F weight = q.on ? (raise ? q.prob : q.prob * d) : Splat<F>(0.0f);
    const F miss = q.on ? q.miss : Splat<F>(1.0f);
    for (int64_t c = 0; c < channels; ++c) {
      values[c] = (q.w[0] * a[0][c] + q.w[1] * a[1][c] + q.w[2] * a[2][c]) * q.inv_w;
    }
    for (int l = 0; l < W; ++l) {
      float* p = acc + slot[l] * rec;
      p[0] = m_new[l];
      p[1] = p[1] * scale[l] + weight[l];
      for (int64_t c = 0; c < channels; ++c) {
        p[2 + c] = p[2 + c] * scale[l] + weight[l] * values[c][l];
      }
      p[rec - 1] *= miss[l];
    }
  }
}

// Forward of rows [r0, r1) of one image (boxes ordered by row). The depth
// softmax runs online: each pixel keeps its largest scaled depth so far m,
// and its sums of weights prob exp((z - m) / gamma) (with and without the
// attributes), rescaled by exp((m_old - m) / gamma) when m grows, and the
// product of 1 - D. kChannels > 0: compiled for that many channels.
template <int W, int kChannels>
SOFT_INLINE void SoftForwardRows(const SoftBox* boxes_begin, const SoftBox* boxes_end,
                                 const float* attr, int64_t num_channels, const float* bg,
                                 const Camera& cam, const SoftParams& prm, int32_t r0,
                                 int32_t r1, float* image, float* alpha, float* zmax,
                                 float* total, float* miss) {
  const int64_t channels = kChannels > 0 ? kChannels : num_channels;
  const int64_t width = cam.width;
  const int64_t first = r0 * width, last = r1 * width;
  // Per pixel: m, sum of weights, sum of weighted attributes [C], prod(1 - D).
  const int64_t rec = channels + 3;
  std::vector<float> acc((last - first + 1) * rec, 0.0f);
  const int32_t dummy = static_cast<int32_t>(last - first);
  for (int64_t i = 0; i <= last - first; ++i) {
    acc[i * rec] = prm.eps;
    acc[i * rec + rec - 1] = 1.0f;
  }
  SoftVectors<W> values(kChannels > 0 ? 0 : channels);
  for (const SoftBox* it = boxes_begin; it != boxes_end; ++it) {
    const SoftBox& box = *it;
    const int32_t rb = std::max(box.row0, r0), re = std::min(box.row0 + box.nrows, r1);
    if (rb >= re) continue;
    const SoftTri s = MakeSoftTri(box);
    const float* a[3] = {attr + channels * s.vid[0], attr + channels * s.vid[1],
                         attr + channels * s.vid[2]};
    SoftForwardTriangle<W, kChannels>(s, a, channels, rb, re, cam, prm, first, rec, dummy,
                                      acc.data(), values.data());
  }
  for (int64_t i = first; i < last; ++i) {
    const float* p = acc.data() + (i - first) * rec;
    zmax[i] = p[0];
    const float w_bg = std::exp((prm.eps - zmax[i]) / prm.gamma);
    total[i] = p[1] + w_bg;
    for (int64_t c = 0; c < channels; ++c) {
      image[i * channels + c] = (p[2 + c] + w_bg * bg[i * channels + c]) / total[i];
    }
    miss[i] = p[rec - 1];
    alpha[i] = 1.0f - miss[i];
  }
}

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
  // Edge set-up, projection and the vertex gathers.
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

void SoftForward(const SoftBox* boxes_begin, const SoftBox* boxes_end, const float* attr,
                 int64_t num_channels, const float* bg, const Camera& cam, const SoftParams& prm,
                 int32_t r0, int32_t r1, float* image, float* alpha, float* zmax, float* total,
                 float* miss) {
  if (num_channels == 3) {
    SoftForwardRows<4, 3>(boxes_begin, boxes_end, attr, num_channels, bg, cam, prm, r0, r1,
                          image, alpha, zmax, total, miss);
  } else {
    SoftForwardRows<4, 0>(boxes_begin, boxes_end, attr, num_channels, bg, cam, prm, r0, r1,
                          image, alpha, zmax, total, miss);
  }
}

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

// Shapes shared by the soft entry points; params: [..., 3] (sigma, gamma,
// radius) per group of images (as the triangle lists, see MeshBatch).
struct SoftBatch {
  MeshBatch m;
  int64_t channels, images_per_param;
};

ffi::Error GetSoftBatch(const char* op, ffi::Buffer<ffi::F32>& points,
                        ffi::Buffer<ffi::F32>& attributes, ffi::Buffer<ffi::S32>& triangles,
                        ffi::Buffer<ffi::F32>& params, SoftBatch* out) {
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

SoftParams MakeSoftParams(const float* params, int32_t cull, float eps, float zf, float zden,
                          float cutoff, float keep_den) {
  const float x_skip = static_cast<float>(
      std::log(static_cast<double>(cutoff) / (1.0 - static_cast<double>(cutoff))) - 1e-2);
  return SoftParams{params[0], params[1], params[2], eps, zf, zden, cutoff, keep_den,
                    cull != 0, x_skip, -x_skip * params[0] * 1.001f};
}

// The SoftVertex tables of a batch's images, for work units that are parts
// of an image: with one unit per image (parts == 1) each unit fills a table
// of its own (Of), else they are filled here for all images, split over the
// parts of each image.
struct SoftVertexTables {
  std::vector<SoftVertex> shared;
  int64_t num_vertices, parts;

  SoftVertexTables(const MeshBatch& m, const float* points, const Camera& cam, int64_t parts)
      : num_vertices(m.num_vertices), parts(parts) {
    if (parts == 1) return;
    shared.resize(m.num_images * num_vertices);
    ParallelFor(m.num_images * parts, [&](int64_t unit) {
      const int64_t im = unit / parts, part = unit % parts;
      SoftVertices(points + im * num_vertices * 3, num_vertices * part / parts,
                   num_vertices * (part + 1) / parts, cam, shared.data() + im * num_vertices);
    });
  }

  // The table of image im; local: storage for a unit's own table.
  const SoftVertex* Of(int64_t im, const float* points, const Camera& cam,
                       std::vector<SoftVertex>* local) const {
    if (parts > 1 || local == nullptr) return shared.data() + im * num_vertices;
    local->resize(num_vertices);
    SoftVertices(points + im * num_vertices * 3, 0, num_vertices, cam, local->data());
    return local->data();
  }
};

// The set-up that the forward hands to the transpose (a residual): per image
// [F + 1] records of kSoftBoxWords int32, a header (the number n of boxes)
// and the boxes of the drawn triangles ordered by first row; the rest unused.
constexpr int64_t kSoftBoxWords = sizeof(SoftBox) / sizeof(int32_t);
static_assert(sizeof(SoftBox) == 16 * sizeof(int32_t), "a SoftBox is 16 words");

// Counting sort by first row (stable, in list order) of the boxes of lists
// [0, num_lists) whose first row is in [r0, r1) into out, at the positions
// that a sort of all of them would give.
void ScatterByRow(const std::vector<SoftBox>* lists, int64_t num_lists, int32_t height,
                  int32_t r0, int32_t r1, SoftBox* out) {
  std::vector<int64_t> start(height + 1, 0);
  for (int64_t l = 0; l < num_lists; ++l) {
    for (const SoftBox& b : lists[l]) ++start[b.row0 + 1];
  }
  for (int32_t r = 0; r < height; ++r) start[r + 1] += start[r];
  for (int64_t l = 0; l < num_lists; ++l) {
    for (const SoftBox& b : lists[l]) {
      if (b.row0 >= r0 && b.row0 < r1) out[start[b.row0]++] = b;
    }
  }
}

// points [..., V, 3], attributes [..., V, C], background [..., H, W, C],
// triangles [..., F, 3], params [..., 3]. Results: image [..., H, W, C], alpha,
// and the residuals of the transpose: zmax, total (sum of the weights with
// the background's), miss (1 - alpha, exactly) [..., H, W], and the set-up
// (boxes [..., F + 1, kSoftBoxWords] int32, see kSoftBoxWords).
ffi::Error SoftRasterizeImpl(ffi::Buffer<ffi::F32> points, ffi::Buffer<ffi::F32> attributes,
                             ffi::Buffer<ffi::F32> background, ffi::Buffer<ffi::S32> triangles,
                             ffi::Buffer<ffi::F32> params, ffi::ResultBuffer<ffi::F32> image,
                             ffi::ResultBuffer<ffi::F32> alpha,
                             ffi::ResultBuffer<ffi::F32> zmax, ffi::ResultBuffer<ffi::F32> total,
                             ffi::ResultBuffer<ffi::F32> miss, ffi::ResultBuffer<ffi::S32> boxes,
                             int32_t width, int32_t height, float focal, float cx, float cy,
                             float near, int32_t cull, float eps, float zf, float zden,
                             float cutoff, float keep_den) {
  SoftBatch b;
  if (ffi::Error err = GetSoftBatch("soft_rasterize", points, attributes, triangles, params, &b);
      err.failure()) {
    return err;
  }
  const MeshBatch& m = b.m;
  const int64_t channels = b.channels;
  const int64_t num_pixels = static_cast<int64_t>(width) * height;
  if (static_cast<int64_t>(background.element_count()) != m.num_images * num_pixels * channels) {
    return ffi::Error::InvalidArgument("soft_rasterize: background must be [..., H, W, C]");
  }
  const int64_t box_stride = (m.num_faces + 1) * kSoftBoxWords;
  if (static_cast<int64_t>(boxes->element_count()) != m.num_images * box_stride) {
    return ffi::Error::InvalidArgument("soft_rasterize: boxes must be [..., F + 1, 16]");
  }
  const Camera cam{width, height, focal, cx, cy, near};
  auto prm_of = [&](int64_t im) {
    return MakeSoftParams(params.typed_data() + 3 * (im / b.images_per_param), cull, eps, zf,
                          zden, cutoff, keep_den);
  };
  auto header = [&](int64_t im) { return boxes->typed_data() + im * box_stride; };
  auto sorted = [&](int64_t im) { return reinterpret_cast<SoftBox*>(header(im)) + 1; };
  // Rows [r0, r1) of image im from its sorted boxes.
  auto draw = [&](int64_t im, const SoftParams& prm, int32_t r0, int32_t r1) {
    const SoftBox* first = sorted(im);
    // The boxes that start below r1 (all that may reach into the rows).
    const SoftBox* last = std::lower_bound(
        first, first + header(im)[0], r1,
        [](const SoftBox& box, int32_t row) { return box.row0 < row; });
    SoftForward(
        first, last, attributes.typed_data() + im * m.num_vertices * channels, channels,
        background.typed_data() + im * num_pixels * channels, cam, prm, r0, r1,
        image->typed_data() + im * num_pixels * channels, alpha->typed_data() + im * num_pixels,
        zmax->typed_data() + im * num_pixels, total->typed_data() + im * num_pixels,
        miss->typed_data() + im * num_pixels);
  };
  const int64_t bands = BandsPerImage(m.num_images, height);
  if (bands == 1) {
    ParallelFor(m.num_images, [&](int64_t im) {
      const SoftParams prm = prm_of(im);
      std::vector<SoftVertex> verts(m.num_vertices);
      SoftVertices(points.typed_data() + im * m.num_vertices * 3, 0, m.num_vertices, cam,
                   verts.data());
      std::vector<SoftBox> list;
      list.reserve(m.num_faces);
      SoftBoxes(verts.data(), m.TrianglesOf(im), 0, m.num_faces, cam, prm, 0, height, &list);
      header(im)[0] = static_cast<int32_t>(list.size());
      ScatterByRow(&list, 1, height, 0, height, sorted(im));
      draw(im, prm, 0, height);
    });
    return ffi::Error::Success();
  }
  // Fewer images than threads: each step is split over bands of rows (or
  // parts of the triangles) of each image.
  const SoftVertexTables tables(m, points.typed_data(), cam, bands);
  std::vector<std::vector<SoftBox>> lists(m.num_images * bands);
  ParallelFor(m.num_images * bands, [&](int64_t unit) {
    const int64_t im = unit / bands, part = unit % bands;
    lists[unit].reserve(m.num_faces / bands + 1);
    SoftBoxes(tables.Of(im, nullptr, cam, nullptr), m.TrianglesOf(im),
              m.num_faces * part / bands, m.num_faces * (part + 1) / bands, cam, prm_of(im), 0,
              height, &lists[unit]);
  });
  auto rows = [&](int64_t band, int32_t* r0, int32_t* r1) {
    *r0 = static_cast<int32_t>(height * band / bands);
    *r1 = static_cast<int32_t>(height * (band + 1) / bands);
  };
  ParallelFor(m.num_images * bands, [&](int64_t unit) {
    const int64_t im = unit / bands, band = unit % bands;
    int32_t r0, r1;
    rows(band, &r0, &r1);
    if (band == 0) {
      int64_t count = 0;
      for (int64_t p = 0; p < bands; ++p) count += lists[im * bands + p].size();
      header(im)[0] = static_cast<int32_t>(count);
    }
    ScatterByRow(lists.data() + im * bands, bands, height, r0, r1, sorted(im));
  });
  ParallelFor(m.num_images * bands, [&](int64_t unit) {
    const int64_t im = unit / bands, band = unit % bands;
    int32_t r0, r1;
    rows(band, &r0, &r1);
    draw(im, prm_of(im), r0, r1);
  });
  return ffi::Error::Success();
}

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
    const int64_t first = im * num_pixels + num_pixels * band / bands;
    const int64_t last = im * num_pixels + num_pixels * (band + 1) / bands;
    for (int64_t i = first; i < last; ++i) {
      float* p = pix.data() + i * pix_size;
      const float w_bg = std::exp((prm.eps - zmax.typed_data()[i]) / prm.gamma);
      const float tot = total.typed_data()[i];
      float dot = 0.0f;
      for (int64_t c = 0; c < channels; ++c) {
        const float g = g_image.typed_data()[i * channels + c] / tot;
        p[c] = g;
        dot += g * image.typed_data()[i * channels + c];
        d_background->typed_data()[i * channels + c] = g * w_bg;
      }
      p[channels] = dot;
      p[channels + 1] = -g_alpha.typed_data()[i] * miss.typed_data()[i];
    }
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
    const int32_t* head = boxes.typed_data() + im * box_stride;
    const SoftBox* sorted = reinterpret_cast<const SoftBox*>(head) + 1;
    const int64_t count = std::min<int64_t>(std::max(head[0], 0), m.num_faces);
    const float* image_pix = pix.data() + im * num_pixels * pix_size;
    const float* image_zmax = zmax.typed_data() + im * num_pixels;
    (use_avx ? SoftBackward8 : SoftBackward4)(
        sorted + count * part / parts, sorted + count * (part + 1) / parts, pts, attr, channels,
        image_pix, image_zmax, cam, prm, dp, dp_stride, da, da_stride);
  });
  if (parts > 1) {
    // The parts' sums, split over vertex ranges.
    ParallelFor(m.num_images * parts, [&](int64_t unit) {
      const int64_t im = unit / parts, range = unit % parts;
      float* dp = d_points->typed_data() + im * m.num_vertices * 3;
      float* da = d_attributes->typed_data() + im * m.num_vertices * channels;
      for (int64_t v = m.num_vertices * range / parts; v < m.num_vertices * (range + 1) / parts;
           ++v) {
        for (int64_t c = 0; c < 3; ++c) dp[3 * v + c] = 0.0f;
        for (int64_t c = 0; c < channels; ++c) da[channels * v + c] = 0.0f;
        for (int64_t part = 0; part < parts; ++part) {
          const float* r =
              scratch.data() + ((im * parts + part) * m.num_vertices + v) * row_size;
          for (int64_t c = 0; c < 3; ++c) dp[3 * v + c] += r[c];
          for (int64_t c = 0; c < channels; ++c) da[channels * v + c] += r[3 + c];
        }
      }
    });
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusRasterize, RasterizeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int32_t>("width")
                                  .Attr<int32_t>("height")
                                  .Attr<float>("focal")
                                  .Attr<float>("cx")
                                  .Attr<float>("cy")
                                  .Attr<float>("near")
                                  .Attr<int32_t>("cull"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusRasterizeDepth, RasterizeDepthImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int32_t>("width")
                                  .Attr<int32_t>("height")
                                  .Attr<float>("focal")
                                  .Attr<float>("cx")
                                  .Attr<float>("cy")
                                  .Attr<float>("near")
                                  .Attr<int32_t>("cull"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusInterpolate, InterpolateImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("width")
                                  .Attr<int32_t>("height")
                                  .Attr<float>("focal")
                                  .Attr<float>("cx")
                                  .Attr<float>("cy"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusInterpolateGrad, InterpolateGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("width")
                                  .Attr<int32_t>("height")
                                  .Attr<float>("focal")
                                  .Attr<float>("cx")
                                  .Attr<float>("cy"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusSilhouettePairs, SilhouettePairsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int32_t>("width")
                                  .Attr<int32_t>("height")
                                  .Attr<float>("focal")
                                  .Attr<float>("cx")
                                  .Attr<float>("cy"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusVertexNormals, VertexNormalsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusVertexNormalsGrad, VertexNormalsGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusVertexStage, VertexStageImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusVertexStageGrad, VertexStageGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusSoftRasterize, SoftRasterizeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int32_t>("width")
                                  .Attr<int32_t>("height")
                                  .Attr<float>("focal")
                                  .Attr<float>("cx")
                                  .Attr<float>("cy")
                                  .Attr<float>("near")
                                  .Attr<int32_t>("cull")
                                  .Attr<float>("eps")
                                  .Attr<float>("zf")
                                  .Attr<float>("zden")
                                  .Attr<float>("cutoff")
                                  .Attr<float>("keep_den"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusSoftRasterizeGrad, SoftRasterizeGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("width")
                                  .Attr<int32_t>("height")
                                  .Attr<float>("focal")
                                  .Attr<float>("cx")
                                  .Attr<float>("cy")
                                  .Attr<float>("near")
                                  .Attr<int32_t>("cull")
                                  .Attr<float>("eps")
                                  .Attr<float>("zf")
                                  .Attr<float>("zden")
                                  .Attr<float>("cutoff")
                                  .Attr<float>("keep_den"));
