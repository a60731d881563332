/*
 * Prometheus metrics registry (see metrics.h) and its text exposition format
 * 0.0.4. Families and series are created under mutexes and never freed before
 * metrics_free, so a series handle stays valid; value updates are lock-free
 * atomics (a double is kept as its bit pattern in an _Atomic uint64_t).
 *
 * Misuse that can only be a programming error (invalid names, a counter name
 * without _total, a set on a counter, a series with the wrong label count)
 * aborts at once with a message, so it fails in the first test run rather
 * than producing a scrape Prometheus rejects.
 */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "xalloc.h"

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

static const char *const type_names[] = {"counter", "gauge", "histogram"};

static const double default_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1,     2.5,  5,     10};

struct metric_series {
    struct metric *fam;
    char **values;             /* one per label name */
    _Atomic uint64_t value;    /* counter/gauge: double bits */
    _Atomic uint64_t count;    /* histogram observations */
    _Atomic uint64_t sum;      /* histogram: double bits */
    _Atomic uint64_t *buckets; /* histogram: nbounds + 1 non-cumulative counts, last = +Inf */
    struct metric_series *next;
};

struct metric {
    char *name;
    char *help;
    enum metric_type type;
    size_t nlabels;
    char **labels;
    size_t nbounds;
    double *bounds;
    double (*fn)(void *); /* gauge computed at scrape time */
    void *ud;

    pthread_mutex_t mu; /* guards the series list, not the values */
    struct metric_series *series_head, *series_tail;
    struct metric_series *solo; /* the only series of a family without labels */
    struct metric *next;
};

struct metrics {
    pthread_mutex_t mu; /* guards the family list */
    struct metric *head, *tail;
};

static _Noreturn void misuse(const char *what, const char *name)
{
    fprintf(stderr, "metrics: %s: \"%s\"\n", what, name ? name : "(null)");
    abort();
}

/* ---- atomic doubles ------------------------------------------------------- */

static uint64_t dbl_bits(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof(u));
    return u;
}

static double bits_dbl(uint64_t u)
{
    double v;
    memcpy(&v, &u, sizeof(v));
    return v;
}

static void atomic_add_double(_Atomic uint64_t *slot, double v)
{
    uint64_t old = atomic_load_explicit(slot, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(slot, &old, dbl_bits(bits_dbl(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* ---- names ---------------------------------------------------------------- */

static bool is_alpha_(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* */
static bool valid_metric_name(const char *s)
{
    if (!s || !(is_alpha_(*s) || *s == ':'))
        return false;
    for (s++; *s; s++) {
        if (!(is_alpha_(*s) || is_digit(*s) || *s == ':'))
            return false;
    }
    return true;
}

/* [a-zA-Z_][a-zA-Z0-9_]*, and not the "__" prefix Prometheus reserves. */
static bool valid_label_name(const char *s)
{
    if (!s || !is_alpha_(*s) || strncmp(s, "__", 2) == 0)
        return false;
    for (s++; *s; s++) {
        if (!(is_alpha_(*s) || is_digit(*s)))
            return false;
    }
    return true;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* ---- registry ------------------------------------------------------------- */

struct metrics *metrics_new(void)
{
    struct metrics *m = xcalloc(1, sizeof(*m));
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void series_free(struct metric_series *s, size_t nlabels)
{
    for (size_t i = 0; i < nlabels; i++)
        free(s->values[i]);
    free(s->values);
    free(s->buckets);
    free(s);
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    struct metric *f = m->head;
    while (f) {
        struct metric *fnext = f->next;
        struct metric_series *s = f->series_head;
        while (s) {
            struct metric_series *snext = s->next;
            series_free(s, f->nlabels);
            s = snext;
        }
        for (size_t i = 0; i < f->nlabels; i++)
            free(f->labels[i]);
        free(f->labels);
        free(f->bounds);
        free(f->name);
        free(f->help);
        pthread_mutex_destroy(&f->mu);
        free(f);
        f = fnext;
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static struct metric *find_family(struct metrics *m, const char *name)
{
    for (struct metric *f = m->head; f; f = f->next) {
        if (strcmp(f->name, name) == 0)
            return f;
    }
    return NULL;
}

/* A second registration must describe the same family, or two callers disagree on it. */
static void check_same_family(const struct metric *f, enum metric_type type, size_t nlabels,
                              const char *const *labels, size_t nbounds, const double *bounds)
{
    if (f->type != type || f->fn || f->nlabels != nlabels)
        misuse("registered again with another type or labels", f->name);
    for (size_t i = 0; i < nlabels; i++) {
        if (strcmp(f->labels[i], labels[i]) != 0)
            misuse("registered again with other label names", f->name);
    }
    if (type == METRIC_HISTOGRAM &&
        (f->nbounds != nbounds || memcmp(f->bounds, bounds, nbounds * sizeof(*bounds)) != 0))
        misuse("registered again with other buckets", f->name);
}

static struct metric_series *series_new(struct metric *f, const char *const *values)
{
    struct metric_series *s = xcalloc(1, sizeof(*s));
    s->fam = f;
    s->values = xcalloc(f->nlabels ? f->nlabels : 1, sizeof(*s->values));
    for (size_t i = 0; values && i < f->nlabels; i++)
        s->values[i] = xstrdup(values[i]);
    atomic_init(&s->value, dbl_bits(0.0));
    atomic_init(&s->count, 0);
    atomic_init(&s->sum, dbl_bits(0.0));
    if (f->type == METRIC_HISTOGRAM) {
        s->buckets = xcalloc(f->nbounds + 1, sizeof(*s->buckets));
        for (size_t i = 0; i <= f->nbounds; i++)
            atomic_init(&s->buckets[i], 0);
    }
    if (f->series_tail)
        f->series_tail->next = s;
    else
        f->series_head = s;
    f->series_tail = s;
    return s;
}

static struct metric *family_register(struct metrics *m, enum metric_type type, const char *name,
                                      const char *help, size_t nlabels, const char *const *labels,
                                      size_t nbounds, const double *bounds)
{
    if (!valid_metric_name(name))
        misuse("invalid metric name", name);
    if (type == METRIC_COUNTER && !has_suffix(name, "_total"))
        misuse("counter name must end in _total", name);
    if (nlabels && !labels)
        misuse("label names missing", name);
    for (size_t i = 0; i < nlabels; i++) {
        if (!valid_label_name(labels[i]))
            misuse("invalid label name", labels[i]);
        if (type == METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0)
            misuse("histogram label \"le\" is reserved", name);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(labels[i], labels[j]) == 0)
                misuse("duplicate label name", labels[i]);
        }
    }
    if (type == METRIC_HISTOGRAM) {
        if (!bounds || nbounds == 0) {
            bounds = default_bounds;
            nbounds = sizeof(default_bounds) / sizeof(default_bounds[0]);
        }
        for (size_t i = 0; i < nbounds; i++) {
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
                misuse("histogram bounds must be finite and strictly ascending", name);
        }
    }

    pthread_mutex_lock(&m->mu);
    struct metric *f = find_family(m, name);
    if (f) {
        check_same_family(f, type, nlabels, labels, nbounds, bounds);
        pthread_mutex_unlock(&m->mu);
        return f;
    }
    f = xcalloc(1, sizeof(*f));
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->type = type;
    f->nlabels = nlabels;
    f->labels = xcalloc(nlabels ? nlabels : 1, sizeof(*f->labels));
    for (size_t i = 0; i < nlabels; i++)
        f->labels[i] = xstrdup(labels[i]);
    if (type == METRIC_HISTOGRAM) {
        f->nbounds = nbounds;
        f->bounds = xmalloc(nbounds * sizeof(*f->bounds));
        memcpy(f->bounds, bounds, nbounds * sizeof(*f->bounds));
    }
    pthread_mutex_init(&f->mu, NULL);
    if (nlabels == 0)
        f->solo = series_new(f, NULL);
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    pthread_mutex_unlock(&m->mu);
    return f;
}

struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
                               size_t nlabels, const char *const *labels)
{
    return family_register(m, METRIC_COUNTER, name, help, nlabels, labels, 0, NULL);
}

struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help, size_t nlabels,
                             const char *const *labels)
{
    return family_register(m, METRIC_GAUGE, name, help, nlabels, labels, 0, NULL);
}

struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                 size_t nlabels, const char *const *labels, size_t nbounds,
                                 const double *bounds)
{
    return family_register(m, METRIC_HISTOGRAM, name, help, nlabels, labels, nbounds, bounds);
}

/* -EEXIST when the name is taken: a second callback could not share one value. */
int metrics_gauge_fn(struct metrics *m, const char *name, const char *help, double (*fn)(void *),
                     void *ud)
{
    if (!valid_metric_name(name))
        misuse("invalid metric name", name);
    if (!fn)
        misuse("gauge callback missing", name);
    pthread_mutex_lock(&m->mu);
    if (find_family(m, name)) {
        pthread_mutex_unlock(&m->mu);
        return -EEXIST;
    }
    struct metric *f = xcalloc(1, sizeof(*f));
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->type = METRIC_GAUGE;
    f->labels = xcalloc(1, sizeof(*f->labels));
    f->fn = fn;
    f->ud = ud;
    pthread_mutex_init(&f->mu, NULL);
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    pthread_mutex_unlock(&m->mu);
    return 0;
}

/* ---- series and values ---------------------------------------------------- */

struct metric_series *metric_series(struct metric *fam, const char *const *values)
{
    if (fam->fn)
        misuse("series of a callback gauge", fam->name);
    if (fam->nlabels == 0)
        return fam->solo;
    if (!values)
        misuse("label values missing", fam->name);
    for (size_t i = 0; i < fam->nlabels; i++) {
        if (!values[i])
            misuse("NULL label value", fam->name);
    }
    pthread_mutex_lock(&fam->mu);
    struct metric_series *s;
    for (s = fam->series_head; s; s = s->next) {
        size_t i = 0;
        while (i < fam->nlabels && strcmp(s->values[i], values[i]) == 0)
            i++;
        if (i == fam->nlabels)
            break;
    }
    if (!s)
        s = series_new(fam, values);
    pthread_mutex_unlock(&fam->mu);
    return s;
}

void metric_series_add(struct metric_series *s, double v)
{
    if (s->fam->type == METRIC_HISTOGRAM)
        misuse("add on a histogram", s->fam->name);
    /* A counter never goes down; a negative or NaN step would corrupt rate() for good. */
    if (s->fam->type == METRIC_COUNTER && !(v >= 0))
        return;
    atomic_add_double(&s->value, v);
}

void metric_series_set(struct metric_series *s, double v)
{
    if (s->fam->type != METRIC_GAUGE)
        misuse("set on a non-gauge", s->fam->name);
    atomic_store_explicit(&s->value, dbl_bits(v), memory_order_relaxed);
}

void metric_series_observe(struct metric_series *s, double v)
{
    const struct metric *f = s->fam;
    if (f->type != METRIC_HISTOGRAM)
        misuse("observe on a non-histogram", f->name);
    size_t i = 0;
    while (i < f->nbounds && !(v <= f->bounds[i])) /* NaN lands in +Inf */
        i++;
    atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
    atomic_add_double(&s->sum, v);
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
}

double metric_series_value(const struct metric_series *s)
{
    if (s->fam->type == METRIC_HISTOGRAM)
        return (double)atomic_load_explicit(&s->count, memory_order_relaxed);
    return bits_dbl(atomic_load_explicit(&s->value, memory_order_relaxed));
}

static struct metric_series *solo_series(struct metric *fam)
{
    if (!fam->solo)
        misuse("label-less shorthand on a family with labels", fam->name);
    return fam->solo;
}

void metric_add(struct metric *fam, double v)
{
    metric_series_add(solo_series(fam), v);
}

void metric_set(struct metric *fam, double v)
{
    metric_series_set(solo_series(fam), v);
}

void metric_observe(struct metric *fam, double v)
{
    metric_series_observe(solo_series(fam), v);
}

/* ---- exposition ----------------------------------------------------------- */

/* Shortest text that reads back as the same double; integers without exponent. */
static void format_double(double v, char *out, size_t size)
{
    if (isnan(v)) {
        snprintf(out, size, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, size, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == 0) { /* also -0 */
        snprintf(out, size, "0");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e17) {
        snprintf(out, size, "%.0f", v);
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, size, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

static int append_escaped(struct buf *out, const char *s, bool quote)
{
    int rc = 0;
    const char *run = s;
    for (; *s && rc == 0; s++) {
        const char *esc = NULL;
        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '\n')
            esc = "\\n";
        else if (quote && *s == '"')
            esc = "\\\"";
        if (!esc)
            continue;
        rc = buf_append(out, run, (size_t)(s - run));
        if (rc == 0)
            rc = buf_append_str(out, esc);
        run = s + 1;
    }
    if (rc == 0)
        rc = buf_append_str(out, run);
    return rc;
}

/* Writes name{labels[,le="x"]} value\n. le may be NULL. */
static int render_sample(struct buf *out, const struct metric *f, const char *suffix,
                         const struct metric_series *s, const char *le, double v)
{
    char num[64];
    int rc = buf_appendf(out, "%s%s", f->name, suffix);
    if (rc == 0 && (f->nlabels || le)) {
        rc = buf_append_str(out, "{");
        for (size_t i = 0; rc == 0 && i < f->nlabels; i++) {
            rc = buf_appendf(out, "%s%s=\"", i ? "," : "", f->labels[i]);
            if (rc == 0)
                rc = append_escaped(out, s->values[i], true);
            if (rc == 0)
                rc = buf_append_str(out, "\"");
        }
        if (rc == 0 && le)
            rc = buf_appendf(out, "%sle=\"%s\"", f->nlabels ? "," : "", le);
        if (rc == 0)
            rc = buf_append_str(out, "}");
    }
    format_double(v, num, sizeof(num));
    if (rc == 0)
        rc = buf_appendf(out, " %s\n", num);
    return rc;
}

static int render_histogram(struct buf *out, const struct metric *f, struct metric_series *s)
{
    char le[64];
    uint64_t cumulative = 0;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i <= f->nbounds; i++) {
        cumulative += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < f->nbounds)
            format_double(f->bounds[i], le, sizeof(le));
        else
            snprintf(le, sizeof(le), "+Inf");
        rc = render_sample(out, f, "_bucket", s, le, (double)cumulative);
    }
    /*
     * _count is the +Inf bucket, not s->count: observations racing the scrape
     * could otherwise make _count disagree with the buckets.
     */
    if (rc == 0)
        rc = render_sample(out, f, "_sum", s, NULL,
                           bits_dbl(atomic_load_explicit(&s->sum, memory_order_relaxed)));
    if (rc == 0)
        rc = render_sample(out, f, "_count", s, NULL, (double)cumulative);
    return rc;
}

static int render_family(struct buf *out, struct metric *f)
{
    int rc = buf_appendf(out, "# HELP %s ", f->name);
    if (rc == 0)
        rc = append_escaped(out, f->help, false);
    if (rc == 0)
        rc = buf_appendf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
    if (rc)
        return rc;
    if (f->fn)
        return render_sample(out, f, "", NULL, NULL, f->fn(f->ud));

    pthread_mutex_lock(&f->mu);
    for (struct metric_series *s = f->series_head; rc == 0 && s; s = s->next) {
        if (f->type == METRIC_HISTOGRAM)
            rc = render_histogram(out, f, s);
        else
            rc = render_sample(out, f, "", s, NULL, metric_series_value(s));
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

/*
 * Callback gauges run with the registry lock held: they must not register
 * metrics themselves.
 */
int metrics_render(struct metrics *m, struct buf *out)
{
    int rc = 0;
    pthread_mutex_lock(&m->mu);
    for (struct metric *f = m->head; rc == 0 && f; f = f->next)
        rc = render_family(out, f);
    pthread_mutex_unlock(&m->mu);
    return rc;
}
