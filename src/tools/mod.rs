//! The tools around the model: the PyTorch side ([`reference`]), the side-by-side comparison
//! ([`compare`]) and the benchmarks ([`bench`]).
pub mod bench;
pub mod compare;
pub mod reference;
