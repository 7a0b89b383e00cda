/* shm_metrics.publisher._scan: the every-interval sample's numbers without a Python object per number.
 *
 * At 1 Hz the publisher runs with cold caches, and there each Python object made per value (a token, an int,
 * a tuple per series) costs far more than the arithmetic: /proc/meminfo's 54 lines cost ~130 us of CPU in
 * Python and ~22 us through numbers() below, of which ~17 us is the kernel producing the file (issue 16).
 * These two functions know no file format: the collectors keep the meaning (which number is which series),
 * found by their Python parse whenever a file's structure changes; this only re-reads numbers at the same
 * places while it does not.
 *
 * numbers(fd, out, text=False, hex=False, whole=False) -> (count, signature, file bytes or None)
 *     fd: a descriptor, or a tuple of them (a group of files, read as one text with "\n\x1f\n" between them:
 *     a word that keeps each file's numbers in their places; "\x1e" for a file whose read fails; each file of
 *     a group is read until a short read, as sysfs attributes come).  Reads the whole file behind fd from
 *     offset 0: pread until a read returns nothing (a /proc table comes a page at a time), or with whole true
 *     until a read shorter than asked (a file the kernel writes whole in one read: a single_open /proc file
 *     such as stat, meminfo or loadavg, a sysctl, a sysfs attribute, a regular file; no read more to find the
 *     end).  Splits it into tokens at blanks, tabs, newlines and colons.  A token that is a
 *     decimal number ([-]digits[.digits]) is stored as a double into out (a writable buffer of doubles,
 *     e.g. array('d')) in file order; every other token is a word.  count is how many numbers the file has
 *     (more than out holds: only the first ones stored; grow out and call again).  signature is a 64-bit
 *     FNV-1a hash of the file's structure: its words, and how many numbers stand between them and on each
 *     line.  Two reads with the same signature have their numbers at the same places.  With text true, the
 *     file's bytes come back too: the collector's Python parse of that very read then says which number is
 *     which, for this signature.
 *
 * values(fd, work, signature, count, index, factors, limit=inf, exact=b"", exact_text=b"", hex=False,
 *        whole=False) -> bytes, None or False
 *     numbers(fd, work), then, when the file has that signature and count, the doubles work[index[r]] *
 *     factors[r] as bytes; None when the structure differs, False when a number taken is limit or more in
 *     magnitude (a learned program's numbers beyond 2**53).  The grid sample's one call per file.  exact: the
 *     positions (unsigned 32-bit, ascending) of numbers that must be, byte for byte, the NUL-ended tokens of
 *     exact_text (else None): numbers beyond a double's integers, which a learned program keeps as they are.
 *     whole as for numbers(); hex (numbers() too): a token of 1 to 16 hexadecimal digits is the number (the
 *     files of /proc/net/stat, softnet_stat), a decimal fraction a word.
 *
 * take(src, index, factors, dst, stride, offset) -> None
 *     dst[offset + r * stride] (a double) = src[index[r]] * factors[r], for every r; factors may be None (1).
 *     A negative factor divides by its opposite (src[index[r]] / -factors[r]).
 *     src: buffer of doubles, index: buffer of unsigned 32-bit ints, dst: writable buffer.  Every position
 *     is checked: ValueError rather than a write out of bounds.
 *
 * run(sources, ops, registers, read) -> bool
 *     A compiled grid sample (publisher/compiled.py): reads its sources, then runs ops over the registers
 *     (doubles).  False, with nothing computed, when a source says the host's structure changed (a file's
 *     signature or count, a failed statvfs, a signalled poll): the Python path then samples and compiles
 *     anew.  With read false nothing is read: the sources' work buffers hold what the Python path just read
 *     (the check of a new program against the Python path's result).  Sources, each a tuple:
 *       (FILE, fd, work, signature, count, whole)  numbers() into work, the structure checked
 *       (STATVFS, path, work)               work[0..5] = f_bsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree
 *       (POLL, fd)                          a poll() for POLLPRI/POLLERR that returns at once (mountinfo)
 *       (DIR, path, work)                   work[0] = how many names of the directory are all digits (/proc),
 *                                           counted by a PIDS op only when its marks moved
 *       (BOOTTIME, work)                    work[0] = CLOCK_BOOTTIME as /proc/uptime prints it (centiseconds)
 *     Ops, five int64 each (op, a, b, c, d), every register index checked before anything runs:
 *       TAKE   dst src pos factor  R[dst] = work_src[pos] scaled by R[factor] (negative: divides)
 *       SUBPOS dst a b             R[dst] = max(0, R[a] - R[b])
 *       SUM    dst a n stride      R[dst] = R[a] + R[a + stride] + ... (n terms, in that order)
 *       BUSY   dst now prev        R[dst] = CPU busy percent between the 8 ticks at now and at prev (stat.py's
 *                                  busy_percent), then the 8 at prev = the 8 at now
 *       PIDS   dst marks prev src  when R[marks], R[marks+1] differ from R[prev], R[prev+1] (or marks < 0: no
 *                                  marks, every sample): (reading) count DIR source src, and R[prev..] = R[marks..];
 *                                  then R[dst] = work_src[0]
 *       MUL    dst a b             R[dst] = R[a] * R[b]
 *       SAME   dst a b             stop (false) unless R[a] == R[b]: a value whose bytes stay as the Python path
 *                                  wrote them (an integer a double cannot hold exactly) while it does not move
 *
 * publish(registers, sinks, buffer, plan, wall, monotonic, duration, overruns, full) -> None
 *     A compiled grid sample's whole write under the seqlock (the caller holds the semaphore): seq made odd,
 *     store(), the history ring's slot of the sample (its stamp, a copy of the scalars) and filled count, the
 *     header's times, seq made even.  plan: 13 int64 byte offsets and sizes of the layout (seq, scalars,
 *     scalars' size, history, its capacity, its record size, the stamp's size, the history's count in the
 *     directory, sample_time, sample_monotonic, sample_duration_seconds, overruns_total,
 *     full_sample_time), all checked before the first write.
 *
 * stat_states(fds, states, threads) -> (failed, counts, threads_total, multithreaded)
 *     node_exporter's processes collector's reads (publisher/processes.py, ProcessCounter): for each kept
 *     descriptor fds[i] (a buffer of int32; below 0: none kept) of a /proc/PID/stat or task/TID/stat, a pread
 *     from offset 0, then states[i] = the state letter after the last ")" and, with threads (a writable
 *     buffer of int64, or None), threads[i] = num_threads.  A line is taken only when its 21 fields after
 *     the state, up to rss, are integers; otherwise (a failed or empty read: the task exited; not a stat
 *     line) states[i] = 0 (threads[i] = 0) and i is in failed: the caller reads those again in Python, which decides (open
 *     anew, drop, or fail the sample).  counts: {state letter (int): lines taken}; threads_total: the sum of
 *     their num_threads; multithreaded: the positions whose num_threads is above 1 (both 0 and [] without
 *     threads).  One call for every task, counted too: at 1 Hz each Python bytecode per task costs more
 *     than the kernel's line.
 *
 * store(registers, sinks, buffer) -> None
 *     buffer[offset] = R[reg] for each sink, three int64 (reg, kind, offset): kind 0 a double, 1 an unsigned
 *     64-bit integer, 2 an unsigned 32-bit one (truncated toward zero, clamped into range, NaN as 0: the
 *     segment's own conversion).  Every offset is checked against the buffer first.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <limits.h>
#include <math.h>
#ifdef __linux__
#include <linux/futex.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <time.h>
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

/* A slash separates too: /proc/loadavg's "1/123" is two numbers (running and all tasks), not a word that
 * changes the file's signature every sample. */
static int is_separator(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == ':' || c == '\r' || c == '/';
}

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

/* The token [p, end) as a hexadecimal number (1 to 16 digits, no prefix: /proc/net/stat files, softnet_stat), or 0
 * when it is a word. */
static int parse_hex(const char *p, const char *end, double *out) {
    if (p == end || end - p > 16)
        return 0;
    uint64_t v = 0;
    for (const char *q = p; q < end; q++) {
        char c = *q;
        int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (digit < 0)
            return 0;
        v = v * 16 + (uint64_t)digit;
    }
    *out = (double)v;
    return 1;
}

static int token_number(const char *p, const char *end, int hex, double *out) {
    return hex ? parse_hex(p, end, out) : parse_number(p, end, out);
}

/* Room for ``more`` bytes at (*buf)[*len..]: *buf starts as stack and moves to the heap when it outgrows it. */
static int reserve(char *stack, char **buf, Py_ssize_t *cap, Py_ssize_t len, Py_ssize_t more) {
    while (len + more > *cap) {
        if (*cap >= MAX_FILE) {
            PyErr_SetString(PyExc_ValueError, "file larger than 16 MiB");
            return -1;
        }
        char *bigger = *buf == stack ? PyMem_RawMalloc((size_t)*cap * 2) : PyMem_RawRealloc(*buf, (size_t)*cap * 2);
        if (bigger == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (*buf == stack)
            memcpy(bigger, stack, (size_t)len);
        *buf = bigger;
        *cap *= 2;
    }
    return 0;
}

/* The whole file behind fd, appended at (*buf)[*len..] (see reserve).  On error *len is unchanged and *buf
 * still valid: the caller frees it.  ``short_is_end``: a read shorter than asked is the end (a sysfs attribute
 * comes whole in its first read: no second read, and no second call of its driver), else a read of nothing is
 * (a /proc table comes a page at a time). */
static int read_append(int fd, char *stack, char **buf, Py_ssize_t *cap, Py_ssize_t *len, int short_is_end) {
    Py_ssize_t start = *len, n = *len;
    for (;;) {
        Py_ssize_t room = short_is_end ? 4096 : 1; /* a page: a sysfs attribute's most */
        if (*cap - n < room && reserve(stack, buf, cap, n, room) < 0)
            return -1;
        ssize_t got;
        Py_BEGIN_ALLOW_THREADS
        got = pread(fd, *buf + n, (size_t)(*cap - n), (off_t)(n - start));
        Py_END_ALLOW_THREADS
        if (got < 0) {
            if (errno == EINTR)
                continue;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (got == 0)
            break;
        n += got;
        if (short_is_end && got < *cap - (n - got))
            break;
    }
    *len = n;
    return 0;
}

static int as_fd(PyObject *o) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a descriptor");
        return -1;
    }
    return (int)v;
}

/* Between the files of a group: a word of its own, so that each file's numbers keep their places. */
#define GROUP_SEPARATOR "\n\x1f\n"
/* In place of a file of a group that cannot be read now (a down link's carrier: EINVAL): a word, so the read
 * has another shape than one where the file has a value. */
#define GROUP_UNREADABLE "\x1e"

/* The whole file into stack (size cap) when it fits, else into a heap buffer (*buf != stack: free it).
 * ``fds`` is one descriptor (an int) or a tuple of them: a group, read as one text, GROUP_SEPARATOR between,
 * GROUP_UNREADABLE for a file whose read fails.  ``whole``: the one file comes whole in one read (see
 * numbers()), so a short read is its end. */
static int read_all(PyObject *fds, char *stack, Py_ssize_t cap, char **buf, Py_ssize_t *len, int whole) {
    *buf = stack;
    *len = 0;
    if (PyLong_Check(fds)) {
        int fd = as_fd(fds);
        if (fd == -1 || read_append(fd, stack, buf, &cap, len, whole) < 0)
            goto fail;
        return 0;
    }
    if (!PyTuple_Check(fds)) {
        PyErr_SetString(PyExc_TypeError, "a descriptor or a tuple of descriptors");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fds); i++) {
        int fd = as_fd(PyTuple_GET_ITEM(fds, i));
        if (fd == -1)
            goto fail;
        if (i > 0) {
            if (reserve(stack, buf, &cap, *len, 3) < 0)
                goto fail;
            memcpy(*buf + *len, GROUP_SEPARATOR, 3);
            *len += 3;
        }
        if (read_append(fd, stack, buf, &cap, len, 1) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_OSError) || reserve(stack, buf, &cap, *len, 1) < 0)
                goto fail;
            PyErr_Clear();
            (*buf)[(*len)++] = GROUP_UNREADABLE[0];
        }
    }
    return 0;
fail:
    if (*buf != stack)
        PyMem_RawFree(*buf);
    *buf = stack;
    return -1;
}

/* The next token of [*p, end) (a run of non-separators): its start, with *p past it; NULL at the end.
 * *newlines: how many newlines were passed before it (the signature counts the numbers of each line). */
static const char *next_token(const char **p, const char *end, int *newlines) {
    const char *q = *p;
    *newlines = 0;
    for (; q < end && is_separator(*q); q++)
        *newlines += *q == '\n';
    if (q == end) {
        *p = q;
        return NULL;
    }
    const char *start = q;
    while (q < end && !is_separator(*q))
        q++;
    *p = q;
    return start;
}

/* Splits buf into numbers (stored into dst while there is room) and words; returns the count, sets *sig. */
static Py_ssize_t scan_buffer(const char *buf, Py_ssize_t len, double *dst, Py_ssize_t cap, uint64_t *sig,
                              int hex) {
    Py_ssize_t count = 0;
    uint32_t since_word = 0;
    uint64_t h = FNV_OFFSET;
    const char *p = buf, *end = buf + len, *start;
    int newlines;
    do {
        start = next_token(&p, end, &newlines);
        for (; newlines > 0; newlines--) { /* the numbers of each line count */
            h = fold(h, &since_word, sizeof since_word);
            h = fold(h, "\n", 1);
            since_word = 0;
        }
        if (start == NULL)
            break;
        double value;
        if (token_number(start, p, hex, &value)) {
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
    } while (1);
    *sig = fold(h, &since_word, sizeof since_word);
    return count;
}

static PyObject *numbers(PyObject *self, PyObject *args) {
    PyObject *fd;
    int text = 0, hex = 0, whole = 0;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "Ow*|ppp:numbers", &fd, &out, &text, &hex, &whole))
        return NULL;
    char stack[STACK_BYTES], *buf;
    Py_ssize_t len;
    if (read_all(fd, stack, sizeof stack, &buf, &len, whole) < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    uint64_t h;
    Py_ssize_t count = scan_buffer(buf, len, out.buf, out.len / (Py_ssize_t)sizeof(double), &h, hex);
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

/* Whether the numbers at positions exact[0..n) (ascending) are, byte for byte, the tokens of text (each ended by
 * a NUL): numbers beyond a double's integers, which a double cannot tell apart. */
static int same_tokens(const char *buf, Py_ssize_t len, const uint32_t *exact, Py_ssize_t n, const char *text,
                       Py_ssize_t text_len, int hex) {
    const char *p = buf, *end = buf + len, *want = text, *want_end = text + text_len, *start;
    Py_ssize_t number = 0, r = 0;
    int newlines;
    while (r < n && (start = next_token(&p, end, &newlines)) != NULL) {
        double ignored;
        if (!token_number(start, p, hex, &ignored))
            continue;
        if ((uint32_t)number++ != exact[r])
            continue;
        size_t size = (size_t)(p - start);
        if (want + size >= want_end || memcmp(want, start, size) != 0 || want[size] != 0)
            return 0;
        want += size + 1;
        r++;
    }
    return r == n;
}

static PyObject *values(PyObject *self, PyObject *args) {
    PyObject *fd;
    Py_buffer work, index, factors, exact = {0}, exact_text = {0};
    unsigned long long expected;
    Py_ssize_t expected_count;
    double limit = HUGE_VAL;
    int hex = 0, whole = 0;
    if (!PyArg_ParseTuple(args, "Ow*Kny*y*|dy*y*pp:values", &fd, &work, &expected, &expected_count, &index, &factors,
                          &limit, &exact, &exact_text, &hex, &whole))
        return NULL;
    PyObject *result = NULL;
    char stack[STACK_BYTES], *buf;
    Py_ssize_t len;
    if (read_all(fd, stack, sizeof stack, &buf, &len, whole) < 0)
        goto done;
    double *nums = work.buf;
    Py_ssize_t cap = work.len / (Py_ssize_t)sizeof(double);
    uint64_t h;
    Py_ssize_t count = scan_buffer(buf, len, nums, cap, &h, hex);
    int same = h == expected && count == expected_count && count <= cap;
    if (same && exact.buf != NULL && exact.len > 0)
        same = same_tokens(buf, len, exact.buf, exact.len / (Py_ssize_t)sizeof(uint32_t), exact_text.buf,
                           exact_text.len, hex);
    if (buf != stack)
        PyMem_RawFree(buf);
    if (!same) {
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
        if (fabs(nums[at[r]]) >= limit) { /* a number the caller cannot trust to this program (as its parse reads it) */
            Py_CLEAR(result);
            result = Py_NewRef(Py_False);
            goto done;
        }
        out[r] = scaled(nums[at[r]], scale[r]);
    }
done:
    PyBuffer_Release(&work);
    PyBuffer_Release(&index);
    PyBuffer_Release(&factors);
    if (exact.buf != NULL)
        PyBuffer_Release(&exact);
    if (exact_text.buf != NULL)
        PyBuffer_Release(&exact_text);
    return result;
}


enum { SRC_FILE, SRC_STATVFS, SRC_POLL, SRC_DIR, SRC_BOOTTIME };
enum { OP_TAKE = 1, OP_SUBPOS, OP_SUM, OP_BUSY, OP_PIDS, OP_MUL, OP_SAME };
#define MAX_SOURCES 4096

typedef struct {
    long kind;
    Py_buffer work; /* .obj NULL when the source has none */
    double *nums;
    Py_ssize_t cap; /* doubles in work */
    Py_ssize_t count; /* numbers the last read found (FILE) */
} Source;

static int count_digit_names(const char *path, double *out) {
    DIR *dir = opendir(path);
    if (dir == NULL)
        return -1;
    long n = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        const char *c = entry->d_name;
        if (*c == 0)
            continue;
        while (*c >= '0' && *c <= '9')
            c++;
        n += *c == 0;
    }
    closedir(dir);
    *out = (double)n;
    return 0;
}

/* Reads one source; 1 when it kept its structure, 0 when not, -1 with an exception set. */
static int read_source(PyObject *spec, Source *src) {
    if (src->kind == SRC_FILE) {
        PyObject *fd = PyTuple_GET_ITEM(spec, 1);
        unsigned long long expected = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(spec, 3));
        Py_ssize_t expected_count = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 4));
        int whole = PyObject_IsTrue(PyTuple_GET_ITEM(spec, 5));
        if (PyErr_Occurred() || whole < 0)
            return -1;
        char stack[STACK_BYTES], *buf;
        Py_ssize_t len;
        if (read_all(fd, stack, sizeof stack, &buf, &len, whole) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_OSError))
                return -1;
            PyErr_Clear(); /* a file that cannot be read now: the Python path says why */
            return 0;
        }
        uint64_t h;
        Py_ssize_t count = scan_buffer(buf, len, src->nums, src->cap, &h, 0);
        if (buf != stack)
            PyMem_RawFree(buf);
        src->count = count;
        return h == expected && count == expected_count && count <= src->cap;
    }
    if (src->kind == SRC_STATVFS) {
        const char *path = PyBytes_AsString(PyTuple_GET_ITEM(spec, 1));
        if (path == NULL)
            return -1;
        if (src->cap < 6)
            return 0;
        struct statvfs st;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = statvfs(path, &st);
        Py_END_ALLOW_THREADS
        if (rc != 0)
            return 0; /* the Python path reports the mount's device error */
        double *w = src->nums;
        w[0] = (double)st.f_bsize, w[1] = (double)st.f_blocks, w[2] = (double)st.f_bfree;
        w[3] = (double)st.f_bavail, w[4] = (double)st.f_files, w[5] = (double)st.f_ffree;
        return 1;
    }
    if (src->kind == SRC_POLL) {
        struct pollfd p = {.fd = (int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 1)), .events = POLLPRI | POLLERR};
        if (PyErr_Occurred())
            return -1;
        return poll(&p, 1, 0) == 0;
    }
    if (src->kind == SRC_BOOTTIME) {
        struct timespec ts;
        if (src->cap < 1 || clock_gettime(CLOCK_BOOTTIME, &ts) != 0)
            return 0;
        char text[48]; /* the kernel's "%lu.%02lu", then strtod: the very double Python's float() makes */
        snprintf(text, sizeof text, "%lu.%02lu", (unsigned long)ts.tv_sec, (unsigned long)(ts.tv_nsec / 10000000));
        src->nums[0] = strtod(text, NULL);
        return 1;
    }
    return 1; /* DIR: counted by its PIDS op */
}

static double busy(const double *now, const double *before) {
    double deltas[8], total = 0.0;
    for (int i = 0; i < 8; i++) {
        double d = now[i] - before[i];
        deltas[i] = d > 0.0 ? d : 0.0;
        total += deltas[i];
    }
    if (total <= 0.0)
        return 0.0;
    double idle = deltas[3] + deltas[4];
    double share = 100.0 * (total - idle) / total;
    return share > 100.0 ? 100.0 : share < 0.0 ? 0.0 : share;
}

/* Every register and source index an op names, checked before any op runs. */
static int check_ops(const int64_t *op, Py_ssize_t n, Py_ssize_t nregs, Source *src, Py_ssize_t nsrc) {
#define REG(x, width) ((x) >= 0 && (x) + (width) <= nregs)
    for (Py_ssize_t i = 0; i < n; i++, op += 5) {
        int64_t a = op[2], b = op[3], c = op[4];
        int ok = REG(op[1], 1);
        switch (op[0]) {
        case OP_TAKE:
            ok = ok && a >= 0 && a < nsrc && src[a].kind != SRC_POLL && src[a].kind != SRC_DIR;
            ok = ok && b >= 0 && b < src[a].cap && REG(c, 1);
            break;
        case OP_SUBPOS:
        case OP_MUL:
        case OP_SAME:
            ok = ok && REG(a, 1) && REG(b, 1);
            break;
        case OP_SUM:
            ok = ok && b >= 0 && c >= 0 && REG(a, 1) && (b == 0 || REG(a + (b - 1) * c, 1));
            break;
        case OP_BUSY:
            ok = ok && REG(a, 8) && REG(b, 8);
            break;
        case OP_PIDS:
            ok = ok && (a < 0 || (REG(a, 2) && REG(b, 2))) && c >= 0 && c < nsrc && src[c].kind == SRC_DIR &&
                 src[c].cap >= 1;
            break;
        default:
            ok = 0;
        }
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "op %zd names a register or source out of range", i);
            return -1;
        }
    }
    return 0;
#undef REG
}

static int run_ops(const int64_t *op, Py_ssize_t n, double *R, Source *src, PyObject *sources, int read) {
    for (Py_ssize_t i = 0; i < n; i++, op += 5) {
        int64_t d = op[1], a = op[2], b = op[3], c = op[4];
        switch (op[0]) {
        case OP_TAKE:
            if (src[a].kind == SRC_FILE && b >= src[a].count)
                return 0; /* fewer numbers than the program was made for */
            R[d] = scaled(src[a].nums[b], R[c]);
            break;
        case OP_SUBPOS: {
            double v = R[a] - R[b];
            R[d] = v > 0.0 ? v : 0.0;
            break;
        }
        case OP_SUM: {
            double total = 0.0;
            for (int64_t k = 0; k < b; k++)
                total += R[a + k * c];
            R[d] = total;
            break;
        }
        case OP_BUSY:
            R[d] = busy(R + a, R + b);
            memcpy(R + b, R + a, 8 * sizeof(double));
            break;
        case OP_PIDS:
            if (a < 0 || R[a] != R[b] || R[a + 1] != R[b + 1]) {
                if (read) {
                    const char *path = PyBytes_AsString(PyTuple_GET_ITEM(PyTuple_GET_ITEM(sources, c), 1));
                    if (path == NULL)
                        return -1;
                    if (count_digit_names(path, src[c].nums) < 0)
                        return 0;
                }
                if (a >= 0)
                    R[b] = R[a], R[b + 1] = R[a + 1];
            }
            R[d] = src[c].nums[0];
            break;
        case OP_MUL:
            R[d] = R[a] * R[b];
            break;
        case OP_SAME:
            if (R[a] != R[b])
                return 0; /* a value kept as the Python path wrote it changed: that path writes it again */
            break;
        }
    }
    return 1;
}

static PyObject *run(PyObject *self, PyObject *args) {
    PyObject *sources;
    Py_buffer ops, regs;
    int read;
    if (!PyArg_ParseTuple(args, "O!y*w*p:run", &PyTuple_Type, &sources, &ops, &regs, &read))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t nsrc = PyTuple_GET_SIZE(sources), got = 0;
    Source *src = NULL;
    if (nsrc > MAX_SOURCES) {
        PyErr_SetString(PyExc_ValueError, "too many sources");
        goto done;
    }
    src = PyMem_Calloc(nsrc ? (size_t)nsrc : 1, sizeof(Source));
    if (src == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < nsrc; got++) {
        PyObject *spec = PyTuple_GET_ITEM(sources, got);
        if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 2) {
            PyErr_SetString(PyExc_TypeError, "a source is a tuple (kind, ...)");
            goto done;
        }
        Source *s = &src[got];
        s->kind = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
        static const Py_ssize_t sizes[] = {6, 3, 2, 3, 2};
        if (s->kind < SRC_FILE || s->kind > SRC_BOOTTIME || PyTuple_GET_SIZE(spec) != sizes[s->kind]) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "unknown source kind or arity");
            goto done;
        }
        if (s->kind != SRC_POLL) {
            PyObject *work = PyTuple_GET_ITEM(spec, s->kind == SRC_BOOTTIME ? 1 : 2);
            if (PyObject_GetBuffer(work, &s->work, PyBUF_WRITABLE) < 0)
                goto done;
            s->nums = s->work.buf;
            s->cap = s->work.len / (Py_ssize_t)sizeof(double);
            s->count = s->cap;
        }
    }
    Py_ssize_t nops = ops.len / (Py_ssize_t)(5 * sizeof(int64_t));
    if (check_ops(ops.buf, nops, regs.len / (Py_ssize_t)sizeof(double), src, nsrc) < 0)
        goto done;
    int ok = 1;
    for (Py_ssize_t i = 0; read && ok && i < nsrc; i++) {
        ok = read_source(PyTuple_GET_ITEM(sources, i), &src[i]);
        if (ok < 0)
            goto done;
    }
    if (!read) /* the Python path's read: its counts are the ones its programs were checked against */
        for (Py_ssize_t i = 0; i < nsrc; i++)
            if (src[i].kind == SRC_FILE)
                src[i].count = PyLong_AsSsize_t(PyTuple_GET_ITEM(PyTuple_GET_ITEM(sources, i), 4));
    if (PyErr_Occurred())
        goto done;
    if (ok)
        ok = run_ops(ops.buf, nops, regs.buf, src, sources, read);
    if (ok < 0)
        goto done;
    result = PyBool_FromLong(ok);
done:
    for (Py_ssize_t i = 0; src != NULL && i < got; i++)
        if (src[i].work.obj != NULL)
            PyBuffer_Release(&src[i].work);
    PyMem_Free(src);
    PyBuffer_Release(&ops);
    PyBuffer_Release(&regs);
    return result;
}

/* Sinks checked against the buffer and the registers; -1 with ValueError set. */
static int check_sinks(const int64_t *s, Py_ssize_t n, Py_ssize_t nregs, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t reg = s[3 * i], kind = s[3 * i + 1], offset = s[3 * i + 2];
        int64_t width = kind == 2 ? 4 : 8;
        if (reg < 0 || reg >= nregs || kind < 0 || kind > 2 || offset < 0 || offset + width > len) {
            PyErr_Format(PyExc_ValueError, "sink %zd out of range", i);
            return -1;
        }
    }
    return 0;
}

static void store_sinks(const double *R, const int64_t *s, Py_ssize_t n, char *to) {
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = R[s[3 * i]];
        char *at = to + s[3 * i + 2];
        switch (s[3 * i + 1]) {
        case 0:
            memcpy(at, &v, 8);
            break;
        case 1: {
            uint64_t u = !(v > 0.0) ? 0 : v >= 18446744073709551616.0 ? UINT64_MAX : (uint64_t)v;
            memcpy(at, &u, 8);
            break;
        }
        default: {
            uint32_t u = !(v > 0.0) ? 0 : v >= 4294967296.0 ? UINT32_MAX : (uint32_t)v;
            memcpy(at, &u, 4);
        }
        }
    }
}

enum { P_SEQ, P_SCALARS, P_SCALARS_SIZE, P_HISTORY, P_HISTORY_CAP, P_HISTORY_REC, P_STAMP, P_HISTORY_COUNT, P_WALL,
       P_MONO, P_DURATION, P_OVERRUNS, P_FULL, P_COUNT };

static PyObject *publish(PyObject *self, PyObject *args) {
    Py_buffer regs, sinks, buffer, plan;
    double wall, mono, duration, full;
    unsigned long long overruns;
    long long wake_at; /* the futex word's offset (readers sleep on it), or -1: nobody to wake */
    if (!PyArg_ParseTuple(args, "y*y*w*y*dddKdL:publish", &regs, &sinks, &buffer, &plan, &wall, &mono, &duration,
                          &overruns, &full, &wake_at))
        return NULL;
    PyObject *result = NULL;
    const int64_t *p = plan.buf;
    Py_ssize_t len = buffer.len, n = sinks.len / (Py_ssize_t)(3 * sizeof(int64_t));
    if (plan.len != P_COUNT * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "a publish plan is 13 int64");
        goto done;
    }
    int ok = p[P_HISTORY_CAP] > 0 && p[P_STAMP] >= 16 && p[P_HISTORY_REC] >= p[P_STAMP] + p[P_SCALARS_SIZE] &&
             p[P_SCALARS_SIZE] >= 0 && p[P_SEQ] % 8 == 0 && p[P_HISTORY_COUNT] % 4 == 0;
    const int64_t eight[] = {P_SEQ, P_WALL, P_MONO, P_DURATION, P_OVERRUNS, P_FULL};
    for (int i = 0; ok && i < 6; i++)
        ok = p[eight[i]] >= 0 && p[eight[i]] % 8 == 0 && p[eight[i]] + 8 <= len;
    ok = ok && p[P_SCALARS] >= 0 && p[P_SCALARS] + p[P_SCALARS_SIZE] <= len && p[P_HISTORY] >= 0 &&
         p[P_HISTORY_CAP] <= (len - p[P_HISTORY]) / p[P_HISTORY_REC] && p[P_HISTORY_COUNT] >= 0 &&
         p[P_HISTORY_COUNT] + 4 <= len && (wake_at == -1 || (wake_at >= 0 && wake_at % 4 == 0 && wake_at + 4 <= len));
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "a publish plan beyond the buffer");
        goto done;
    }
    if (check_sinks(sinks.buf, n, regs.len / (Py_ssize_t)sizeof(double), len) < 0)
        goto done;
    char *b = buffer.buf;
    uint64_t *seqp = (uint64_t *)(b + p[P_SEQ]);
    uint64_t seq = __atomic_load_n(seqp, __ATOMIC_RELAXED);
    __atomic_store_n(seqp, seq % 2 == 0 ? seq + 1 : seq, __ATOMIC_RELAXED); /* odd: write in progress */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    store_sinks(regs.buf, sinks.buf, n, b);
    uint64_t after = (seq | 1) + 1, cap = (uint64_t)p[P_HISTORY_CAP];
    char *slot = b + p[P_HISTORY] + (int64_t)((after / 2 - 1) % cap) * p[P_HISTORY_REC];
    memcpy(slot, &after, 8);
    memcpy(slot + 8, &wall, 8);
    memcpy(slot + p[P_STAMP], b + p[P_SCALARS], (size_t)p[P_SCALARS_SIZE]);
    uint32_t filled = (uint32_t)(after / 2 < cap ? after / 2 : cap);
    memcpy(b + p[P_HISTORY_COUNT], &filled, 4);
    memcpy(b + p[P_WALL], &wall, 8);
    memcpy(b + p[P_MONO], &mono, 8);
    memcpy(b + p[P_DURATION], &duration, 8);
    uint64_t over = overruns;
    memcpy(b + p[P_OVERRUNS], &over, 8);
    memcpy(b + p[P_FULL], &full, 8);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(seqp, after, __ATOMIC_RELEASE); /* even: done */
#if defined(__linux__) && defined(SYS_futex)
    /* Readers sleeping on the word (shm_wake.py): one syscall here, where a ctypes call from Python cost a
       1 Hz publisher ~25 us of CPU.  Not private: the waiters are other processes.  Its result is no error
       of ours (a seccomp filter, no waiter: the readers' bounded waits cover it). */
    if (wake_at >= 0)
        syscall(SYS_futex, (uint32_t *)(b + wake_at), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
#endif
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&regs);
    PyBuffer_Release(&sinks);
    PyBuffer_Release(&buffer);
    PyBuffer_Release(&plan);
    return result;
}

static PyObject *store(PyObject *self, PyObject *args) {
    Py_buffer regs, sinks, buffer;
    if (!PyArg_ParseTuple(args, "y*y*w*:store", &regs, &sinks, &buffer))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = sinks.len / (Py_ssize_t)(3 * sizeof(int64_t));
    if (check_sinks(sinks.buf, n, regs.len / (Py_ssize_t)sizeof(double), buffer.len) == 0) {
        store_sinks(regs.buf, sinks.buf, n, buffer.buf);
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&regs);
    PyBuffer_Release(&sinks);
    PyBuffer_Release(&buffer);
    return result;
}

#define STAT_FIELDS_CHECKED 21 /* after the state: ppid .. rss, the fields the Python parse looks at */
#define STAT_NUM_THREADS 17    /* num_threads, counted from the state (0) */

/* The state letter and num_threads of a stat line, or 0 when it is not one (see stat_states). */
static int stat_line(const char *buf, ssize_t len, char *state, int64_t *threads) {
    const char *end = buf + len, *r = NULL;
    for (const char *p = end; p > buf; p--)
        if (p[-1] == ')') {
            r = p - 1;
            break;
        }
    if (r == NULL || end - r < 4 || r[1] != ' ' || r[3] != ' ')
        return 0;
    *state = r[2];
    const char *p = r + 4;
    for (int field = 1; field <= STAT_FIELDS_CHECKED; field++) {
        int negative = p < end && *p == '-';
        const char *digits = p + negative;
        uint64_t value = 0; /* unsigned: a planted line's 30 digits wrap instead of overflowing */
        for (p = digits; p < end && *p >= '0' && *p <= '9'; p++)
            value = value * 10 + (uint64_t)(*p - '0'); /* num_threads is small; the others are only checked */
        if (p == digits || (p < end && *p != ' ' && *p != '\n'))
            return 0;
        if (field == STAT_NUM_THREADS)
            *threads = negative ? -(int64_t)value : (int64_t)value;
        if (p < end)
            p++;
        else if (field < STAT_FIELDS_CHECKED)
            return 0;
    }
    return 1;
}

/* Positions as a Python list. */
static PyObject *position_list(const Py_ssize_t *at, Py_ssize_t n) {
    PyObject *list = PyList_New(n);
    for (Py_ssize_t k = 0; list != NULL && k < n; k++) {
        PyObject *position = PyLong_FromSsize_t(at[k]);
        if (position == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, k, position);
    }
    return list;
}

static PyObject *stat_states(PyObject *self, PyObject *args) {
    Py_buffer fds, states, threads = {0};
    PyObject *threads_obj, *result = NULL;
    if (!PyArg_ParseTuple(args, "y*w*O:stat_states", &fds, &states, &threads_obj))
        return NULL;
    int have_threads = threads_obj != Py_None;
    if (have_threads && PyObject_GetBuffer(threads_obj, &threads, PyBUF_WRITABLE) < 0)
        goto done_nothreads;
    Py_ssize_t n = fds.len / (Py_ssize_t)sizeof(int32_t);
    if (states.len < n || (have_threads && threads.len / (Py_ssize_t)sizeof(int64_t) < n)) {
        PyErr_SetString(PyExc_ValueError, "states or threads shorter than fds");
        goto done;
    }
    /* failed positions from the front, multithreaded ones from the back: n slots hold both */
    Py_ssize_t *at = PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1)), nfailed = 0, nmulti = 0;
    if (at == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t counts[256] = {0};
    long long threads_total = 0;
    const int32_t *fd = fds.buf;
    unsigned char *state = states.buf;
    int64_t *thread = threads.buf;
    Py_BEGIN_ALLOW_THREADS
    char buf[4096];
    for (Py_ssize_t i = 0; i < n; i++) {
        ssize_t got = -1;
        if (fd[i] >= 0)
            do
                got = pread(fd[i], buf, sizeof buf, 0);
            while (got < 0 && errno == EINTR);
        int64_t count = 0;
        char letter;
        if (got <= 0 || !stat_line(buf, got, &letter, &count)) {
            state[i] = 0;
            if (have_threads)
                thread[i] = 0;
            at[nfailed++] = i;
            continue;
        }
        state[i] = (unsigned char)letter;
        counts[(unsigned char)letter]++;
        if (have_threads) {
            thread[i] = count;
            threads_total += count;
            if (count > 1)
                at[n - ++nmulti] = i;
        }
    }
    Py_END_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < nmulti / 2; k++) { /* the multithreaded back in ascending order */
        Py_ssize_t swap = at[n - nmulti + k];
        at[n - nmulti + k] = at[n - 1 - k];
        at[n - 1 - k] = swap;
    }
    PyObject *failed = position_list(at, nfailed), *multi = position_list(at + n - nmulti, nmulti);
    PyObject *by_state = PyDict_New();
    PyMem_RawFree(at);
    for (int letter = 1; by_state != NULL && letter < 256; letter++) {
        if (!counts[letter])
            continue;
        PyObject *key = PyLong_FromLong(letter), *value = PyLong_FromSsize_t(counts[letter]);
        if (key == NULL || value == NULL || PyDict_SetItem(by_state, key, value) < 0)
            Py_CLEAR(by_state);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    if (failed != NULL && multi != NULL && by_state != NULL)
        result = Py_BuildValue("(OOLO)", failed, by_state, threads_total, multi);
    Py_XDECREF(failed);
    Py_XDECREF(multi);
    Py_XDECREF(by_state);
done:
    if (have_threads)
        PyBuffer_Release(&threads);
done_nothreads:
    PyBuffer_Release(&fds);
    PyBuffer_Release(&states);
    return result;
}

static PyMethodDef methods[] = {
    {"numbers", numbers, METH_VARARGS,
     "numbers(fd, out, text=False, hex=False, whole=False) -> (count, signature, bytes or None): a file's numbers, "
     "in order."},
    {"values", values, METH_VARARGS,
     "values(fd, work, signature, count, index, factors, limit=inf, exact=b'', exact_text=b'', hex=False, "
     "whole=False) -> "
     "bytes, None or False: numbers() and take() in one call."},
    {"run", run, METH_VARARGS, "run(sources, ops, registers, read) -> bool: a compiled grid sample's values."},
    {"publish", publish, METH_VARARGS,
     "publish(registers, sinks, buffer, plan, ..., wake_at): a compiled sample's write, then a futex wake."},
    {"store", store, METH_VARARGS, "store(registers, sinks, buffer): the registers into the buffer's bytes."},
    {"take", take, METH_VARARGS, "take(src, index, factors, dst, stride, offset): dst slots = src[index] * factors."},
    {"stat_states", stat_states, METH_VARARGS,
     "stat_states(fds, states, threads) -> (failed, counts, threads_total, multithreaded): stat files' states."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
