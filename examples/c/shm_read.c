/*
 * shm_read.c: a minimal shm-metrics reader written from docs/LAYOUT.md only.
 *
 *   gcc -O2 -Wall -o shm_read examples/c/shm_read.c
 *   ./shm_read [NAME [FAMILY]]  (default /sysmetrics, or $SHM_METRICS_NAME)
 *
 * Opens the segment safely, trusts it only if root, you or
 * $SHM_METRICS_PUBLISHER_USER owns it, validates the header and the section
 * directory against offsets it computes itself, reads a consistent snapshot
 * with the seqlock, checks its counts and times, tests the publisher's
 * liveness lock without taking it, and prints the process count; with FAMILY
 * (a node_exporter metric name such as node_load1), prints that family's
 * series instead, one `name{label="value",...} value` line each, found
 * through the segment's own catalog (docs/LAYOUT.md, "Metric families").
 * Exit codes follow shm-read: 0 ok, 2 usage, 3 no segment, 4 incompatible,
 * corrupt or untrusted, 5 stale, stopped, dead or busy.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Header offsets (docs/LAYOUT.md, table `header`). */
enum {
    H_MAGIC = 0, H_VERSION = 8, H_HEADER_SIZE = 12, H_TOTAL_SIZE = 16, H_TABLE_HASH = 24,
    H_STATE = 44, H_INTERVAL = 56, H_SECTION_COUNT = 64, H_SECTION_SIZE = 68, H_SECTIONS_OFFSET = 72,
    H_START_TIME = 48, H_GENERATION = 208, H_SEQ = 216, H_SAMPLE_TIME = 224, H_SAMPLE_MONOTONIC = 232,
    H_SAMPLE_DURATION = 240, H_FULL_SAMPLE_TIME = 256, HEADER_BYTES = 264,
};
/* Section directory entry (table `section`). */
enum { S_OFFSET = 0, S_RECORD_SIZE = 8, S_CAPACITY = 12, S_COUNT = 16, SECTION_BYTES = 24, SECTIONS = 13 };
/* scalars cpus net disks filesystems history top_cpu top_rss process_states metrics strings series labels */
static const uint32_t RECORD_SIZE[SECTIONS] = {296, 80, 96, 72, 440, 312, 80, 80, 24, 40, 8, 24, 8};
static const uint32_t MIN_CAPACITY[SECTIONS] = {1, 1, 1, 1, 1, 2, 0, 0, 0, 0, 0, 0, 0};
enum { SEC_METRICS = 9, SEC_STRINGS = 10, SEC_SERIES = 11, SEC_LABELS = 12 };
/* Tables `metrics` and `series`. */
enum { M_NAME_OFF = 0, M_NAME_LEN = 4, M_LABELS_OFF = 16, M_LABELS_LEN = 20, M_LABEL_COUNT = 28,
       M_FLAGS = 32, M_ON_DEMAND = 1, R_METRIC = 0, R_LABELS_OFF = 4, R_LABELS_LEN = 8, R_VALUE = 16 };
static const uint64_t TABLE_HASH = 0xa6570cad2700b9c0ULL;
enum { SCALAR_PROCS_TOTAL = 0, STATE_RUNNING = 2, STATE_STOPPED = 3, STATE_REPLACED = 4, STATE_MAX = 4 };
/* read_segment's answer when the segment says "replaced": a larger generation is under the name. */
enum { READ_AGAIN = -1 };

static uint32_t u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }   /* x86-64 and ARM64 */
static uint64_t u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }   /* are little-endian */
static double f64(const unsigned char *p) { double v; memcpy(&v, p, 8); return v; }
static uint64_t round_up(uint64_t n, uint64_t to) { return n + (to - n % to) % to; }

static int fail(int code, const char *name, const char *why)
{
    fprintf(stderr, "shm_read: %s: %s\n", name, why);
    return code;
}

/* Root, ourselves, or the user named by SHM_METRICS_PUBLISHER_USER (a name or a uid). */
static int trusted_owner(uid_t owner)
{
    if (owner == 0 || owner == geteuid())
        return 1;
    const char *who = getenv("SHM_METRICS_PUBLISHER_USER");
    if (!who || !*who)
        return 0;
    struct passwd *pw = getpwnam(who);
    if (pw)
        return pw->pw_uid == owner;
    char *end;
    unsigned long uid = strtoul(who, &end, 10);
    return *end == 0 && uid == owner;
}

static int valid_name(const char *name)
{
    const char *base = name[0] == '/' ? name + 1 : name;
    size_t n = strlen(base);
    if (n < 1 || n > 200 || !strcmp(base, ".") || !strcmp(base, ".."))
        return 0;
    return strspn(base, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

/* The family named `family`: found in the catalog (static: written before the magic), its series
 * copied with the seqlock, then printed.  Every offset from the file is checked against its blob. */
static int print_family(const unsigned char *m, const char *name, const char *family,
                        const uint64_t *off, const uint32_t *capacity, double interval)
{
    const unsigned char *strings = m + off[SEC_STRINGS];
    uint64_t strings_len = (uint64_t)capacity[SEC_STRINGS] * 8;
    size_t want = strlen(family);
    int64_t index = -1;
    uint32_t label_count = 0, lnames_off = 0, lnames_len = 0, flags = 0;
    for (uint32_t i = 0; i < capacity[SEC_METRICS] && index < 0; i++) {
        const unsigned char *row = m + off[SEC_METRICS] + (uint64_t)i * 40;
        uint32_t no = u32(row + M_NAME_OFF), nl = u32(row + M_NAME_LEN);
        if ((uint64_t)no + nl <= strings_len && nl == want && !memcmp(strings + no, family, want)) {
            index = i;
            label_count = u32(row + M_LABEL_COUNT);
            lnames_off = u32(row + M_LABELS_OFF);
            lnames_len = u32(row + M_LABELS_LEN);
            flags = u32(row + M_FLAGS);
        }
    }
    if (index < 0 || (uint64_t)lnames_off + lnames_len > strings_len)
        return fail(4, name, "no such family in the segment's catalog");

    size_t series_bytes = (size_t)capacity[SEC_SERIES] * 24, labels_bytes = (size_t)capacity[SEC_LABELS] * 8;
    unsigned char *series = malloc(series_bytes + 1), *labels = malloc(labels_bytes + 1);
    if (!series || !labels)
        return fail(4, name, "out of memory");
    const uint64_t *seq = (const uint64_t *)(m + H_SEQ);
    uint32_t count = 0, used = 0;
    double full_time = 0;
    struct timespec nap = {0, 500000};
    int ok = 0;
    for (int tries = 0; tries < 1000 && !ok; tries++) {
        uint64_t s1 = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        if (!(s1 & 1)) {
            count = u32(m + HEADER_BYTES + SEC_SERIES * SECTION_BYTES + S_COUNT);
            used = u32(m + HEADER_BYTES + SEC_LABELS * SECTION_BYTES + S_COUNT);
            full_time = f64(m + H_FULL_SAMPLE_TIME);
            if (count <= capacity[SEC_SERIES] && used <= capacity[SEC_LABELS]) {
                memcpy(series, m + off[SEC_SERIES], (size_t)count * 24);
                memcpy(labels, m + off[SEC_LABELS], (size_t)used * 8);
            }
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            ok = __atomic_load_n(seq, __ATOMIC_RELAXED) == s1;
            if (ok && (count > capacity[SEC_SERIES] || used > capacity[SEC_LABELS]))
                return fail(4, name, "a count exceeds its capacity");
        }
        if (!ok && tries >= 200)
            nanosleep(&nap, NULL);
    }
    if (!ok)
        return fail(5, name, "publisher stopped in the middle of a write");
    for (uint32_t r = 0; r < count; r++) {
        const unsigned char *row = series + (size_t)r * 24;
        uint32_t lo = u32(row + R_LABELS_OFF), ll = u32(row + R_LABELS_LEN);
        if (u32(row + R_METRIC) != index || (uint64_t)lo + ll > (uint64_t)used * 8)
            continue;
        /* Label names and values are both NUL-separated: walk them side by side. */
        printf("%s", family);
        const char *ln = (const char *)strings + lnames_off, *lend = ln + lnames_len;
        const char *lv = (const char *)labels + lo, *vend = lv + ll;
        for (uint32_t k = 0; k < label_count; k++) {
            const char *nz = memchr(ln, 0, lend - ln), *vz = memchr(lv, 0, vend - lv);
            int nlen = (int)((nz ? nz : lend) - ln), vlen = (int)((vz ? vz : vend) - lv);
            printf("%s%.*s=\"%.*s\"", k ? "," : "{", nlen, ln, vlen, lv);
            ln += nlen + 1;
            lv += vlen + 1;
        }
        printf("%s %.17g\n", label_count ? "}" : "", f64(row + R_VALUE));
    }
    /* A family sampled on demand dates from the last full sample: say how old it is when that is old. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double age = now.tv_sec + now.tv_nsec / 1e9 - full_time;
    if ((flags & M_ON_DEMAND) && isfinite(age) && age > 2 * interval + 1)
        fprintf(stderr, "shm_read: %s: %s is sampled on demand; these values are %.1f s old\n", name, family, age);
    return 0;
}

/* One attempt: open, validate, read, print.  READ_AGAIN (nothing printed) when the segment says it was
 * replaced by a larger generation (docs/LAYOUT.md, "Generations"): the caller opens the name again. */
static int read_segment(const char *name, const char *family)
{
    char path[256];
    snprintf(path, sizeof path, "/dev/shm/%s", name[0] == '/' ? name + 1 : name);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? fail(3, name, "no segment: is shm-publisher running under that name?")
                               : fail(4, name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 || (st.st_mode & 022))
        return fail(4, name, "not a regular, singly linked file writable only by its owner");
    if (!trusted_owner(st.st_uid))
        return fail(4, name, "owned by an untrusted user (set SHM_METRICS_PUBLISHER_USER to the publisher's user)");

    /* Validate from a plain read before mapping anything (a short file must never be mapped). */
    unsigned char head[576];
    if (st.st_size < (off_t)sizeof head || pread(fd, head, sizeof head, 0) != (ssize_t)sizeof head)
        return fail(4, name, "too small to hold a header");
    if (memcmp(head + H_MAGIC, "SHMMETR\0", 8))
        return fail(4, name, u64(head) == 0 ? "not initialised yet" : "bad magic: not a shm-metrics segment");
    if (u32(head + H_VERSION) != 4 || u64(head + H_TABLE_HASH) != TABLE_HASH)
        return fail(4, name, "another layout version or field table");
    if (u64(head + H_TOTAL_SIZE) != (uint64_t)st.st_size || u32(head + H_SECTION_COUNT) != SECTIONS ||
        u32(head + H_SECTION_SIZE) != SECTION_BYTES || u64(head + H_SECTIONS_OFFSET) != HEADER_BYTES ||
        u32(head + H_STATE) > STATE_MAX)
        return fail(4, name, "header does not match the layout");
    double interval = f64(head + H_INTERVAL), start_time = f64(head + H_START_TIME);
    if (!(interval >= 0.01 && interval <= 3600) || !(start_time >= 0 && start_time < 1e11))
        return fail(4, name, "interval or start time out of range");

    /* Recompute every section's offset from the capacities; trust none from the file. */
    uint64_t pos = round_up(HEADER_BYTES + SECTIONS * SECTION_BYTES, 64), scalars = 0;
    uint64_t off[SECTIONS];
    uint32_t capacity[SECTIONS];
    if (u32(head + H_HEADER_SIZE) != pos)
        return fail(4, name, "header size does not match the layout");
    for (int i = 0; i < SECTIONS; i++) {
        const unsigned char *e = head + HEADER_BYTES + i * SECTION_BYTES;
        uint32_t cap = u32(e + S_CAPACITY);
        if (u32(e + S_RECORD_SIZE) != RECORD_SIZE[i] || cap < MIN_CAPACITY[i] || cap > 65536 ||
            (i == 0 && cap != 1) || (i == 7 && cap != u32(e - SECTION_BYTES + S_CAPACITY)) ||
            u64(e + S_OFFSET) != pos)
            return fail(4, name, "section directory does not match the layout");
        if (i == 0)
            scalars = pos;
        off[i] = pos;
        capacity[i] = cap;
        pos = round_up(pos + (uint64_t)RECORD_SIZE[i] * cap, 64);
    }
    if (round_up(pos, 4096) != (uint64_t)st.st_size)
        return fail(4, name, "capacities do not add up to the segment size");

    const unsigned char *m = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return fail(4, name, strerror(errno));


    /* The seqlock: even and unchanged around the copy.  Bounded: a publisher stopped mid-write. */
    const uint64_t *seq = (const uint64_t *)(m + H_SEQ);
    uint64_t procs = 0, s1 = 0;
    double sample_time = 0, times_sum = 0;
    int counts_ok = 0;
    struct timespec nap = {0, 500000};
    int ok = 0;
    for (int tries = 0; tries < 1000 && !ok; tries++) {
        s1 = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        if (!(s1 & 1)) {
            procs = u64(m + scalars + 8 * SCALAR_PROCS_TOTAL);
            sample_time = f64(m + H_SAMPLE_TIME);
            times_sum = sample_time + f64(m + H_SAMPLE_MONOTONIC) + f64(m + H_SAMPLE_DURATION);
            counts_ok = 1;  /* every count within its capacity, in the same snapshot */
            for (int i = 0; i < SECTIONS; i++) {
                const unsigned char *e = m + HEADER_BYTES + i * SECTION_BYTES;
                counts_ok &= u32(e + S_COUNT) <= u32(e + S_CAPACITY);
            }
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            ok = __atomic_load_n(seq, __ATOMIC_RELAXED) == s1;
        }
        if (!ok && tries >= 200)
            nanosleep(&nap, NULL);
    }
    if (!ok)
        return fail(5, name, "publisher stopped in the middle of a write");
    if (!counts_ok || !isfinite(times_sum))
        return fail(4, name, "a count exceeds its capacity, or a sample time is not finite");
    if (u32(m + H_STATE) == STATE_REPLACED) {
        munmap((void *)m, st.st_size);
        close(fd);
        return READ_AGAIN;
    }

    /* Liveness: test the publisher's OFD lock without taking it. */
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0, .l_pid = 0};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return fail(4, name, strerror(errno));
    int alive = fl.l_type != F_UNLCK;
    close(fd);
    if (s1 == 0 && alive)
        return fail(5, name, "no sample written yet");

    /* The same checks (counts, times, liveness, freshness) whichever value is printed. */
    if (family) {
        int rc = print_family(m, name, family, off, capacity, interval);
        if (rc)
            return rc;
    } else {
        printf("%llu\n", (unsigned long long)procs);
    }
    if (!alive && u32(m + H_STATE) != STATE_STOPPED)
        return fail(5, name, "publisher not running: it died without stopping (no process holds the lock)");
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double age = now.tv_sec + now.tv_nsec / 1e9 - sample_time;
    if (u32(m + H_STATE) != STATE_RUNNING || age > 2 * interval + 1 || age < -1)
        return fail(5, name, "stale, stopped or future-dated sample: value printed is not fresh");
    return 0;
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : getenv("SHM_METRICS_NAME");
    if (!name)
        name = "/sysmetrics";
    const char *family = argc > 2 ? argv[2] : NULL;
    if (argc > 3 || !valid_name(name))
        return fail(2, name, "usage: shm_read [NAME [FAMILY]]; NAME is an optional '/' then 1-200 of [A-Za-z0-9._-]");
    /* Each generation at least doubles a capacity: more than a few in one read is a publisher gone mad. */
    for (int hops = 0; hops < 4; hops++) {
        int rc = read_segment(name, family);
        if (rc != READ_AGAIN)
            return rc;
    }
    return fail(5, name, "the segment keeps being replaced by new generations");
}
