//! libtorch operators that `tch` does not expose with all their arguments, called through the
//! C++ shim csrc/aten.cpp (compiled by build.rs against the libtorch that torch-sys links).
//!
//! Why: bit-identity with PyTorch needs the kernel PyTorch calls. `torch.optim.Muon` calls
//! `torch.addmm(…, beta, alpha)`; tch 0.24's `addmm` has neither scalar, and the same
//! arithmetic through another kernel (`baddbmm` on a batch of one) rounds bfloat16 differently
//! on CPUs with native bfloat16 instructions (AMD Zen 4's `avx512_bf16`).
//!
//! This is the crate's only module with `unsafe`: the foreign calls below. They are sound
//! because (1) every handle passed in comes from `Tensor::as_ptr` of a live `&Tensor`, which
//! the borrow keeps alive for the call and which the C++ side only reads; (2) a handle the shim
//! returns is a fresh `new at::Tensor`, owned by nobody else, which `Tensor::from_ptr` takes
//! over (tch frees it on drop, as it frees its own wrappers' results); (3) an error message is
//! a `strdup`ed NUL-terminated string, read once and released with `free`; (4) C++ exceptions
//! never cross the boundary: the shim catches them and returns their message.
use std::ffi::{c_char, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn linattn_addmm(
        input: *const C_tensor,
        mat1: *const C_tensor,
        mat2: *const C_tensor,
        beta: f64,
        alpha: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn linattn_add_(target: *const C_tensor, other: *const C_tensor, alpha: f64) -> *mut c_char;
    fn free(p: *mut std::ffi::c_void);
}

/// Panics with the first line of a message the shim returned (freeing it), if any.
fn check(err: *mut c_char, op: &str) {
    if err.is_null() {
        return;
    }
    // SAFETY: point (3): a NUL-terminated string from strdup, freed once here.
    let msg = unsafe {
        let m = CStr::from_ptr(err).to_string_lossy().into_owned();
        free(err.cast());
        m
    };
    panic!("{op}: {}", msg.lines().next().unwrap_or("libtorch error"));
}

/// `target.add_(other, alpha=alpha)`: in place on `target`'s storage (a view writes through to
/// the tensor it views), computing in `target`'s dtype with `other` promoted, as PyTorch's
/// in-place add does (torch.optim.Muon adds a bfloat16 update to a float32 parameter so). Takes
/// `&mut`, as tch's in-place operators do. Panics with libtorch's message on an error.
pub fn add_(target: &mut Tensor, other: &Tensor, alpha: f64) {
    // SAFETY: point (1): both handles are live for the call; the shim writes only the storage
    // of `target`, which the `&mut` borrow holds exclusively on this side.
    let err = unsafe { linattn_add_(target.as_ptr(), other.as_ptr(), alpha) };
    check(err, "add_");
}

/// `torch.addmm(input, mat1, mat2, beta=beta, alpha=alpha)`: `beta·input + alpha·(mat1 @ mat2)`
/// in one kernel call. Panics with libtorch's message on an error (shapes that do not fit), as
/// tch's own unwrapping operators do: every caller passes shapes it built itself.
pub fn addmm(input: &Tensor, mat1: &Tensor, mat2: &Tensor, beta: f64, alpha: f64) -> Tensor {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: see the module's comment, points (1), (2) and (4).
    let err = unsafe {
        linattn_addmm(
            input.as_ptr(),
            mat1.as_ptr(),
            mat2.as_ptr(),
            beta,
            alpha,
            &mut out,
        )
    };
    check(err, "addmm");
    // strdup can fail (returning null) where an error was to be reported.
    assert!(
        !out.is_null(),
        "addmm: libtorch failed and its message was lost"
    );
    // SAFETY: point (2): a fresh handle that nothing else owns.
    unsafe { Tensor::from_ptr(out) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn addmm_scales_the_input_and_the_product_as_torch_addmm_does() {
        let input = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let m = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let got = addmm(&input, &m, &input, 0.5, 2.0);
        // 0.5·input + 2·(I @ input) = 2.5·input
        let want = &input * 2.5;
        assert!(got.equal(&want), "{got} vs {want}");
        assert_eq!(got.kind(), Kind::Float);
    }

    #[test]
    fn add_writes_through_a_view_with_a_bfloat16_operand_promoted() {
        let base = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        let mut row = base.get(1);
        let ones = Tensor::ones([3], (Kind::BFloat16, tch::Device::Cpu));
        add_(&mut row, &ones, -0.5);
        let want = Tensor::from_slice(&[0.0f32, 0.0, 0.0, -0.5, -0.5, -0.5]).view([2, 3]);
        assert!(base.equal(&want), "{base}");
    }

    #[test]
    #[should_panic(expected = "addmm:")]
    fn addmm_reports_a_shape_mismatch_as_libtorch_words_it() {
        let a = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        let _ = addmm(&a, &a, &a, 1.0, 1.0);
    }
}
