//! The tools around the model: the PyTorch side ([`pytorch`]), the side-by-side comparison
//! ([`compare`]) and the benchmarks ([`bench`]).
pub mod bench;
pub mod compare;
pub mod pytorch;
