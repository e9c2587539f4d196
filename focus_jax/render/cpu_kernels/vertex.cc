// Per-vertex kernels: area-weighted vertex normals (shading.vertex_normals)
// and their transpose, and the per-vertex stage of render() (camera
// transform, normals rotated into camera space, SH shading: camera.to_camera,
// shading.vertex_normals, camera.rotate_to_camera, shading.shade) and its
// transpose.

#include "common.h"

namespace focus_cpu {
namespace {

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

}  // namespace

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

}  // namespace focus_cpu
