// Antialiasing: the discrete half of antialiasing.py (which pixel pairs
// straddle a silhouette edge, and which triangle edge that is). The blending
// itself, and so the gradient, stays in JAX (cpu_kernels/ops.py).

#include "common.h"

namespace focus_cpu {
namespace {

constexpr int kWalkSteps = 2;  // As _WALK_STEPS in antialiasing.py.

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

// Writes the pairs found by work units [0, num_units) of a group of images,
// in unit order, as the first rows of its list rec [capacity, 3], pads the
// other rows (pixel `pad`, the group's pixel count), and sets *count to the
// number found (which may exceed the capacity: only the first rows are kept).
void WritePairs(const std::vector<PairRecord>* found, int64_t num_units, int64_t capacity,
                int32_t pad, int32_t* rec, int32_t* count) {
  int64_t n = 0;
  for (int64_t u = 0; u < num_units; ++u) {
    for (const PairRecord& r : found[u]) {
      if (n < capacity) {
        rec[3 * n] = r.pixel;
        rec[3 * n + 1] = r.flags;
        rec[3 * n + 2] = r.triangle;
      }
      ++n;
    }
  }
  *count = static_cast<int32_t>(n);
  for (int64_t k = n; k < capacity; ++k) {
    rec[3 * k] = pad;
    rec[3 * k + 1] = 0;
    rec[3 * k + 2] = 0;
  }
}

}  // namespace

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
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t units = images_per_group * bands;
    WritePairs(found.data() + g * units, units, capacity,
               static_cast<int32_t>(images_per_group * num_pixels),
               pairs->typed_data() + 3 * g * capacity, count->typed_data() + g);
  }
  return ffi::Error::Success();
}

}  // namespace focus_cpu
