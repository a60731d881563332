/*
 * W3C Trace Context `traceparent` values ("00-<32 hex trace id>-<16 hex span id>-<2 hex flags>"),
 * carried in HTTP headers and Kafka headers end to end.
 */
#ifndef TRACE_H
#define TRACE_H

#define TRACE_PARENT_LEN 56 /* 55 chars + NUL */
#define TRACE_ID_LEN     33 /* 32 hex + NUL */

/* A new trace: random trace id and span id, sampled flag set. */
int trace_parent_new(char out[TRACE_PARENT_LEN]);
/* Validates s; fills trace_id (may be NULL). 0 or -EINVAL. */
int trace_parent_parse(const char *s, char trace_id[TRACE_ID_LEN]);
/* Same trace as parent with a new span id; a new trace when parent is NULL or invalid. */
int trace_parent_child(const char *parent, char out[TRACE_PARENT_LEN]);

#endif
