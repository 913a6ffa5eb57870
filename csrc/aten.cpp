// libtorch operators that tch 0.24 does not expose with all their arguments, as C functions over
// tch's tensor handles. A handle is a heap-allocated `at::Tensor*`, exactly what torch-sys's own
// C wrappers take and return, so src/aten.rs passes `Tensor::as_ptr` in and wraps the result
// with `Tensor::from_ptr`. Compiled by build.rs against the libtorch that torch-sys links.
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>

#include <cstring>
#include <exception>

extern "C" {

// `torch.addmm(input, mat1, mat2, beta=beta, alpha=alpha)`: the same dispatcher entry, and so the
// same kernel, as Python's call. On success stores a new handle in *out and returns null; on a
// C++ exception stores null and returns its message, which the caller frees with free().
char *linattn_addmm(const at::Tensor *input, const at::Tensor *mat1, const at::Tensor *mat2,
                    double beta, double alpha, at::Tensor **out) {
  try {
    *out = new at::Tensor(at::addmm(*input, *mat1, *mat2, beta, alpha));
    return nullptr;
  } catch (const std::exception &e) {
    *out = nullptr;
    return strdup(e.what());
  } catch (...) {  // nothing may unwind into Rust
    *out = nullptr;
    return strdup("unknown C++ exception");
  }
}

// `self.add_(other, alpha=alpha)` in place on `self`'s storage (a view writes through to its
// base), with `other` of any dtype that promotes to `self`'s, as torch.optim.Muon's
// `param.add_(update, alpha=-adjusted_lr)` with a bfloat16 update. Returns null, or the message
// of a C++ exception (to be freed with free()).
char *linattn_add_(const at::Tensor *self, const at::Tensor *other, double alpha) {
  try {
    at::Tensor target = *self;
    target.add_(*other, alpha);
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  } catch (...) {  // nothing may unwind into Rust
    return strdup("unknown C++ exception");
  }
}

}  // extern "C"
