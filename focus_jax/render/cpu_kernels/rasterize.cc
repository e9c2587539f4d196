// Hard rasterization (visibility.py): the z-buffer pass over each image's
// triangles, then barycentrics and depths from the winning triangle ids.

#include "common.h"

namespace focus_cpu {
namespace {

// Per-triangle set-up of _triangle_setup: edge functions relative to the first
// pixel centre (col0, row0) of the clipped bounding box and their increments.
struct Setup {
  float e0[3], gx[3], gy[3], inv_det;
  int32_t col0, row0, ncols, nrows;  // ncols * nrows == 0: draws nothing.
};

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

// The range [*begin, *end) of [0, size) that work unit `unit` of an image
// handles, when each image is split into `parts` units.
void PartRange(int64_t unit, int64_t parts, int64_t size, int64_t* begin, int64_t* end) {
  *begin = size * (unit % parts) / parts;
  *end = size * (unit % parts + 1) / parts;
}

// fragments[i] = the sum of counts over the `parts` units of image i.
void SumParts(const std::vector<int64_t>& counts, int64_t num_images, int64_t parts,
              int32_t* fragments) {
  for (int64_t i = 0; i < num_images; ++i) {
    int64_t total = 0;
    for (int64_t part = 0; part < parts; ++part) total += counts[i * parts + part];
    fragments[i] = static_cast<int32_t>(total);
  }
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
    ParallelFor(units, [&](int64_t unit) {
      int64_t v0, v1;
      PartRange(unit, parts, m.num_vertices, &v0, &v1);
      project(unit / parts, v0, v1);
    });
    ParallelFor(units, [&](int64_t unit) {
      int64_t f0, f1;
      PartRange(unit, parts, m.num_faces, &f0, &f1);
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
  SumParts(counts, m.num_images, parts, fragments);
  return ffi::Error::Success();
}

}  // namespace

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

}  // namespace focus_cpu
