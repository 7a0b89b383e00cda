/* shm_metrics.publisher._scan: the every-interval sample's numbers without a Python object per number.
 *
 * At 1 Hz the publisher runs with cold caches, and there each Python object made per value (a token, an int,
 * a tuple per series) costs far more than the arithmetic: /proc/meminfo's 54 lines cost ~130 us of CPU in
 * Python and ~22 us through numbers() below, of which ~17 us is the kernel producing the file (issue 16).
 * These two functions know no file format: the collectors keep the meaning (which number is which series),
 * found by their Python parse whenever a file's structure changes; this only re-reads numbers at the same
 * places while it does not.
 *
 * numbers(fd, out, text=False) -> (count, signature, file bytes or None)
 *     Reads the whole file behind fd from offset 0 (pread until a read returns nothing: /proc tables come a
 *     page at a time) and splits it into tokens at blanks, tabs, newlines and colons.  A token that is a
 *     decimal number ([-]digits[.digits]) is stored as a double into out (a writable buffer of doubles,
 *     e.g. array('d')) in file order; every other token is a word.  count is how many numbers the file has
 *     (more than out holds: only the first ones stored; grow out and call again).  signature is a 64-bit
 *     FNV-1a hash of the file's structure: its words, and how many numbers stand between them and on each
 *     line.  Two reads with the same signature have their numbers at the same places.  With text true, the
 *     file's bytes come back too: the collector's Python parse of that very read then says which number is
 *     which, for this signature.
 *
 * values(fd, work, signature, count, index, factors) -> bytes or None
 *     numbers(fd, work), then, when the file has that signature and count, the doubles work[index[r]] *
 *     factors[r] as bytes; None when the structure differs.  The grid sample's one call per file.
 *
 * take(src, index, factors, dst, stride, offset) -> None
 *     dst[offset + r * stride] (a double) = src[index[r]] * factors[r], for every r; factors may be None (1).
 *     A negative factor divides by its opposite (src[index[r]] / -factors[r]).
 *     src: buffer of doubles, index: buffer of unsigned 32-bit ints, dst: writable buffer.  Every position
 *     is checked: ValueError rather than a write out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME 1099511628211ULL
#define STACK_BYTES 16384 /* most files the grid sample reads fit: no allocation then */
#define MAX_FILE (16 << 20) /* a /proc table larger than this is not one the every-interval sample reads */

static uint64_t fold(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

/* A factor below zero divides by its opposite: x / 100 is not always x * 0.01, and the collectors' Python
 * parsers divide (jiffies by USER_HZ). */
static double scaled(double v, double factor) { return factor < 0 ? v / -factor : v * factor; }

static int is_separator(char c) { return c == ' ' || c == '\t' || c == '\n' || c == ':' || c == '\r'; }

/* The token [p, end) as a number, or 0 when it is a word. */
static int parse_number(const char *p, const char *end, double *out) {
    const char *q = p;
    int negative = 0;
    if (q < end && *q == '-') {
        negative = 1;
        q++;
    }
    if (q == end || *q < '0' || *q > '9')
        return 0;
    uint64_t whole = 0;
    int digits = 0;
    for (; q < end && *q >= '0' && *q <= '9'; q++, digits++)
        whole = whole * 10 + (uint64_t)(*q - '0');
    if (q == end && digits <= 19) {
        *out = negative ? -(double)whole : (double)whole;
        return 1;
    }
    if (q < end && *q != '.')
        return 0;
    if (q < end) { /* a fraction: digits after the point, then the end */
        const char *f = q + 1;
        if (f == end)
            return 0;
        for (const char *r = f; r < end; r++)
            if (*r < '0' || *r > '9')
                return 0;
    }
    char text[64]; /* long or fractional: strtod of a bounded copy */
    size_t n = (size_t)(end - p);
    if (n >= sizeof text)
        return 0;
    memcpy(text, p, n);
    text[n] = 0;
    *out = strtod(text, NULL);
    return 1;
}

/* The whole file into stack (size cap) when it fits, else into a heap buffer (*buf != stack: free it). */
static int read_all(int fd, char *stack, Py_ssize_t cap, char **buf, Py_ssize_t *len) {
    Py_ssize_t n = 0;
    char *b = stack;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_FILE) {
                if (b != stack)
                    PyMem_RawFree(b);
                PyErr_SetString(PyExc_ValueError, "file larger than 16 MiB");
                return -1;
            }
            char *bigger = b == stack ? PyMem_RawMalloc((size_t)cap * 2) : PyMem_RawRealloc(b, (size_t)cap * 2);
            if (bigger == NULL) {
                if (b != stack)
                    PyMem_RawFree(b);
                PyErr_NoMemory();
                return -1;
            }
            if (b == stack)
                memcpy(bigger, stack, (size_t)n);
            b = bigger;
            cap *= 2;
        }
        ssize_t got;
        Py_BEGIN_ALLOW_THREADS
        got = pread(fd, b + n, (size_t)(cap - n), (off_t)n);
        Py_END_ALLOW_THREADS
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (b != stack)
                PyMem_RawFree(b);
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (got == 0)
            break;
        n += got;
    }
    *buf = b;
    *len = n;
    return 0;
}

/* Splits buf into numbers (stored into dst while there is room) and words; returns the count, sets *sig. */
static Py_ssize_t scan_buffer(const char *buf, Py_ssize_t len, double *dst, Py_ssize_t cap, uint64_t *sig) {
    Py_ssize_t count = 0;
    uint32_t since_word = 0;
    uint64_t h = FNV_OFFSET;
    const char *p = buf, *end = buf + len;
    while (p < end) {
        if (is_separator(*p)) {
            if (*p == '\n') { /* the numbers of each line count */
                h = fold(h, &since_word, sizeof since_word);
                h = fold(h, "\n", 1);
                since_word = 0;
            }
            p++;
            continue;
        }
        const char *start = p;
        while (p < end && !is_separator(*p))
            p++;
        double value;
        if (parse_number(start, p, &value)) {
            if (count < cap)
                dst[count] = value;
            count++;
            since_word++;
        } else {
            h = fold(h, &since_word, sizeof since_word);
            h = fold(h, start, (size_t)(p - start));
            h = fold(h, "", 1);
            since_word = 0;
        }
    }
    *sig = fold(h, &since_word, sizeof since_word);
    return count;
}

static PyObject *numbers(PyObject *self, PyObject *args) {
    int fd, text = 0;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "iw*|p:numbers", &fd, &out, &text))
        return NULL;
    char stack[STACK_BYTES], *buf;
    Py_ssize_t len;
    if (read_all(fd, stack, sizeof stack, &buf, &len) < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    uint64_t h;
    Py_ssize_t count = scan_buffer(buf, len, out.buf, out.len / (Py_ssize_t)sizeof(double), &h);
    PyObject *bytes = text ? PyBytes_FromStringAndSize(buf, len) : Py_NewRef(Py_None);
    if (buf != stack)
        PyMem_RawFree(buf);
    PyBuffer_Release(&out);
    if (bytes == NULL)
        return NULL;
    return Py_BuildValue("(nKN)", count, (unsigned long long)h, bytes);
}

static PyObject *take(PyObject *self, PyObject *args) {
    Py_buffer src, index, dst, factors = {0};
    PyObject *factors_obj;
    Py_ssize_t stride, offset;
    if (!PyArg_ParseTuple(args, "y*y*Ow*nn:take", &src, &index, &factors_obj, &dst, &stride, &offset))
        return NULL;
    PyObject *result = NULL;
    int have_factors = factors_obj != Py_None;
    if (have_factors && PyObject_GetBuffer(factors_obj, &factors, PyBUF_SIMPLE) < 0)
        goto done_nofactors;
    Py_ssize_t n = index.len / (Py_ssize_t)sizeof(uint32_t);
    Py_ssize_t nsrc = src.len / (Py_ssize_t)sizeof(double);
    if (have_factors && factors.len / (Py_ssize_t)sizeof(double) < n) {
        PyErr_SetString(PyExc_ValueError, "fewer factors than positions");
        goto done;
    }
    if (stride < (Py_ssize_t)sizeof(double) || offset < 0 ||
        (n > 0 && offset + (n - 1) * stride + (Py_ssize_t)sizeof(double) > dst.len)) {
        PyErr_SetString(PyExc_ValueError, "destination too small for the positions");
        goto done;
    }
    const uint32_t *at = index.buf;
    const double *from = src.buf, *scale = have_factors ? factors.buf : NULL;
    char *to = (char *)dst.buf + offset;
    for (Py_ssize_t r = 0; r < n; r++) {
        if ((Py_ssize_t)at[r] >= nsrc) {
            PyErr_SetString(PyExc_ValueError, "position beyond the source");
            goto done;
        }
        double v = from[at[r]];
        if (scale)
            v = scaled(v, scale[r]);
        memcpy(to + r * stride, &v, sizeof v);
    }
    result = Py_NewRef(Py_None);
done:
    if (have_factors)
        PyBuffer_Release(&factors);
done_nofactors:
    PyBuffer_Release(&src);
    PyBuffer_Release(&index);
    PyBuffer_Release(&dst);
    return result;
}

static PyObject *values(PyObject *self, PyObject *args) {
    int fd;
    Py_buffer work, index, factors;
    unsigned long long expected;
    Py_ssize_t expected_count;
    if (!PyArg_ParseTuple(args, "iw*Kny*y*:values", &fd, &work, &expected, &expected_count, &index, &factors))
        return NULL;
    PyObject *result = NULL;
    char stack[STACK_BYTES], *buf;
    Py_ssize_t len;
    if (read_all(fd, stack, sizeof stack, &buf, &len) < 0)
        goto done;
    double *nums = work.buf;
    Py_ssize_t cap = work.len / (Py_ssize_t)sizeof(double);
    uint64_t h;
    Py_ssize_t count = scan_buffer(buf, len, nums, cap, &h);
    if (buf != stack)
        PyMem_RawFree(buf);
    if (h != expected || count != expected_count || count > cap) {
        result = Py_NewRef(Py_None); /* another structure: the collector's Python parse makes a new program */
        goto done;
    }
    Py_ssize_t n = index.len / (Py_ssize_t)sizeof(uint32_t);
    if (factors.len / (Py_ssize_t)sizeof(double) < n) {
        PyErr_SetString(PyExc_ValueError, "fewer factors than positions");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(double));
    if (result == NULL)
        goto done;
    double *out = (double *)PyBytes_AS_STRING(result);
    const uint32_t *at = index.buf;
    const double *scale = factors.buf;
    for (Py_ssize_t r = 0; r < n; r++) {
        if ((Py_ssize_t)at[r] >= count) {
            Py_CLEAR(result);
            PyErr_SetString(PyExc_ValueError, "position beyond the numbers");
            goto done;
        }
        out[r] = scaled(nums[at[r]], scale[r]);
    }
done:
    PyBuffer_Release(&work);
    PyBuffer_Release(&index);
    PyBuffer_Release(&factors);
    return result;
}

static PyMethodDef methods[] = {
    {"numbers", numbers, METH_VARARGS, "numbers(fd, out, text=False) -> (count, signature, bytes or None): a file's numbers, in order."},
    {"values", values, METH_VARARGS,
     "values(fd, work, signature, count, index, factors) -> bytes or None: numbers() and take() in one call."},
    {"take", take, METH_VARARGS, "take(src, index, factors, dst, stride, offset): dst slots = src[index] * factors."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
