fn main() {
    // Exposes cfgs such as Py_GIL_DISABLED to the bindings (pydantic-core does the same). Only the
    // Python build needs an interpreter; `cargo test` of the engine does not.
    #[cfg(feature = "python")]
    pyo3_build_config::use_pyo3_cfgs();
}
