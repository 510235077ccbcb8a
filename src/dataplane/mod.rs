//! The BPF data path: skeleton loading, attachment and map access.
