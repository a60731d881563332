/*
 * Prometheus metrics: counters, gauges and histograms with labels, rendered in
 * the text exposition format (passes `promtool check metrics`). Updates are
 * lock-free atomics on a series handle; look a series up once and keep it.
 * Families and series live until metrics_free.
 */
#ifndef METRICS_H
#define METRICS_H

#include <stddef.h>

struct buf;
struct metrics;
struct metric;        /* a family: name, help, type, label names */
struct metric_series; /* one label-value combination of a family */

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* Registers a family; registering the same name again returns the existing family. */
struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
                               size_t nlabels, const char *const *labels);
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help, size_t nlabels,
                             const char *const *labels);
/* bounds: ascending upper bounds without +Inf; NULL/0 = a default latency ladder in seconds. */
struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                 size_t nlabels, const char *const *labels, size_t nbounds,
                                 const double *bounds);
/* A gauge computed at scrape time by fn(ud). */
int metrics_gauge_fn(struct metrics *m, const char *name, const char *help, double (*fn)(void *),
                     void *ud);

/* Gets or creates the series for these label values (one per label name). */
struct metric_series *metric_series(struct metric *fam, const char *const *values);
void metric_series_add(struct metric_series *s, double v);     /* counter or gauge */
void metric_series_set(struct metric_series *s, double v);     /* gauge */
void metric_series_observe(struct metric_series *s, double v); /* histogram */
double
metric_series_value(const struct metric_series *s); /* counter/gauge value, histogram count */

/* Shorthands for families without labels. */
void metric_add(struct metric *fam, double v);
void metric_set(struct metric *fam, double v);
void metric_observe(struct metric *fam, double v);

/* Appends the exposition text; -E2BIG if out's cap is reached. */
int metrics_render(struct metrics *m, struct buf *out);

#endif
