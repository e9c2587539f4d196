// Registers the entry points of the kernel files (declared in common.h) as
// XLA FFI handlers: the exported symbols that __init__.py hands to
// jax.ffi.register_ffi_target.

#include "common.h"

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusRasterize, focus_cpu::RasterizeImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusRasterizeDepth, focus_cpu::RasterizeDepthImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusInterpolate, focus_cpu::InterpolateImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusInterpolateGrad, focus_cpu::InterpolateGradImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusSilhouettePairs, focus_cpu::SilhouettePairsImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusVertexNormals, focus_cpu::VertexNormalsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusVertexNormalsGrad, focus_cpu::VertexNormalsGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusVertexStage, focus_cpu::VertexStageImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusVertexStageGrad, focus_cpu::VertexStageGradImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusSoftRasterize, focus_cpu::SoftRasterizeImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(FocusSoftRasterizeGrad, focus_cpu::SoftRasterizeGradImpl,
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
