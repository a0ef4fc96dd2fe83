/*
 * Conversions every file of the binding uses: a number of seconds (a timeout, a deadline,
 * a budget) to the core's microseconds, and text that came from a peer to a str.
 */
#include "module.h"

#include <math.h>
#include <string.h>

/* A str from bytes that may not be valid UTF-8 (they come from a peer); None for NULL. */
PyObject *
tether_py_text_or_none(const char *s)
{
    if (!s) {
        Py_RETURN_NONE;
    }
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

/*
 * Seconds (int or float) to microseconds. None gives none_usec; infinity (or anything too
 * large) TETHER_TIMEOUT_INFINITE; a positive value never rounds down to 0. Negative and
 * NaN raise ValueError.
 */
int
tether_py_usec_from_seconds(PyObject *o, uint64_t none_usec, const char *what, uint64_t *ret)
{
    if (!o || o == Py_None) {
        *ret = none_usec;
        return 0;
    }
    double s = PyFloat_AsDouble(o);
    if (s == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(s) || s < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-negative number of seconds or None", what);
        return -1;
    }
    if (s * 1e6 >= 1.8e19) {
        *ret = TETHER_TIMEOUT_INFINITE;
        return 0;
    }
    uint64_t usec = (uint64_t)(s * 1e6);
    *ret = usec == 0 && s > 0 ? 1 : usec;
    return 0;
}
