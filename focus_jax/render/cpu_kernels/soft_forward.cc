// Soft rasterization, forward (see soft.h).

#include "soft.h"

namespace focus_cpu {
namespace {

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

// The forward of rows [r0, r1) of one image from its sorted boxes (header:
// their number, then the boxes; see kSoftBoxWords), 4 lanes at a time (with
// 8, AVX without AVX2 spends more on the integer lane work and on the lanes
// of small boxes than it saves; the transpose has an 8-lane instance), for 3
// channels or any.
void SoftForward(const int32_t* header, const float* attr, int64_t num_channels,
                 const float* bg, const Camera& cam, const SoftParams& prm, int32_t r0,
                 int32_t r1, float* image, float* alpha, float* zmax, float* total,
                 float* miss) {
  const SoftBox* boxes_begin = reinterpret_cast<const SoftBox*>(header) + 1;
  // The boxes that start below r1 (all that may reach into the rows).
  const SoftBox* boxes_end = std::lower_bound(
      boxes_begin, boxes_begin + header[0], r1,
      [](const SoftBox& box, int32_t row) { return box.row0 < row; });
  if (num_channels == 3) {
    SoftForwardRows<4, 3>(boxes_begin, boxes_end, attr, num_channels, bg, cam, prm, r0, r1,
                          image, alpha, zmax, total, miss);
  } else {
    SoftForwardRows<4, 0>(boxes_begin, boxes_end, attr, num_channels, bg, cam, prm, r0, r1,
                          image, alpha, zmax, total, miss);
  }
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

// The set-up of a whole image for SoftForward: the boxes of its drawn
// triangles (points [V, 3], tris [F, 3]) sorted by first row after header[0],
// their number.
void SoftSetupImage(const float* points, const int32_t* tris, int64_t num_vertices,
                    int64_t num_faces, const Camera& cam, const SoftParams& prm,
                    int32_t* header) {
  std::vector<SoftVertex> verts(num_vertices);
  SoftVertices(points, 0, num_vertices, cam, verts.data());
  std::vector<SoftBox> list;
  list.reserve(num_faces);
  SoftBoxes(verts.data(), tris, 0, num_faces, cam, prm, 0, cam.height, &list);
  header[0] = static_cast<int32_t>(list.size());
  ScatterByRow(&list, 1, cam.height, 0, cam.height, reinterpret_cast<SoftBox*>(header) + 1);
}

// Rows [*r0, *r1) of band `band` of `bands` of an image of `height` rows.
void BandRows(int64_t band, int64_t bands, int32_t height, int32_t* r0, int32_t* r1) {
  *r0 = static_cast<int32_t>(height * band / bands);
  *r1 = static_cast<int32_t>(height * (band + 1) / bands);
}

// The number of boxes in lists [0, num_lists).
int64_t TotalSize(const std::vector<SoftBox>* lists, int64_t num_lists) {
  int64_t count = 0;
  for (int64_t p = 0; p < num_lists; ++p) count += lists[p].size();
  return count;
}

}  // namespace

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
    SoftForward(
        header(im), attributes.typed_data() + im * m.num_vertices * channels, channels,
        background.typed_data() + im * num_pixels * channels, cam, prm, r0, r1,
        image->typed_data() + im * num_pixels * channels, alpha->typed_data() + im * num_pixels,
        zmax->typed_data() + im * num_pixels, total->typed_data() + im * num_pixels,
        miss->typed_data() + im * num_pixels);
  };
  const int64_t bands = BandsPerImage(m.num_images, height);
  if (bands == 1) {
    ParallelFor(m.num_images, [&](int64_t im) {
      const SoftParams prm = prm_of(im);
      SoftSetupImage(points.typed_data() + im * m.num_vertices * 3, m.TrianglesOf(im),
                     m.num_vertices, m.num_faces, cam, prm, header(im));
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
  ParallelFor(m.num_images * bands, [&](int64_t unit) {
    const int64_t im = unit / bands, band = unit % bands;
    int32_t r0, r1;
    BandRows(band, bands, height, &r0, &r1);
    if (band == 0) {
      header(im)[0] = static_cast<int32_t>(TotalSize(lists.data() + im * bands, bands));
    }
    ScatterByRow(lists.data() + im * bands, bands, height, r0, r1, sorted(im));
  });
  ParallelFor(m.num_images * bands, [&](int64_t unit) {
    const int64_t im = unit / bands, band = unit % bands;
    int32_t r0, r1;
    BandRows(band, bands, height, &r0, &r1);
    draw(im, prm_of(im), r0, r1);
  });
  return ffi::Error::Success();
}

}  // namespace focus_cpu
