fn main() {
    // Exposes cfgs such as Py_GIL_DISABLED to the bindings (pydantic-core does the same).
    pyo3_build_config::use_pyo3_cfgs();
}
