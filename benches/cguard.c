/* The floor for a guarded call, for `make bench-insns` (benches/insns.py builds it per interpreter):
 * `guard(f)` does what a minimal C circuit breaker must do on a healthy call: one atomic load of a
 * state word, `PyObject_CallNoArgs(f)`, and a store only when the outcome changes the word (a
 * failure, or a success after failures). It counts nothing and has no configuration. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>

/* Low 32 bits: consecutive failures. */
static _Atomic uint64_t word;

static PyObject *guard(PyObject *self, PyObject *f) {
    (void)self;
    uint64_t seen = atomic_load_explicit(&word, memory_order_acquire);
    PyObject *result = PyObject_CallNoArgs(f);
    if (result == NULL) {
        atomic_store_explicit(&word, seen + 1, memory_order_release);
    } else if (seen != 0) {
        atomic_store_explicit(&word, 0, memory_order_release);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"guard", guard, METH_O, "guard(f): one atomic load, f(), a store only if the word changes"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_GIL_DISABLED
    /* Without this, importing the module on free-threaded CPython re-enables the GIL. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_insns_cguard", NULL, 0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__insns_cguard(void) { return PyModuleDef_Init(&module); }
