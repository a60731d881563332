/*
 * Structured logging: one ECS JSON object per line on stdout
 * (@timestamp, log.level, message, ecs.version, service.name, trace.id, plus
 * domain fields). The macros test the level before evaluating their arguments.
 * Messages are lowercase without a full stop and never carry secrets or payloads.
 */
#ifndef LOG_H
#define LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum log_level { LOG_LEVEL_DEBUG = 0, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* A domain field such as {"robot.id", "r-17"}; values are written as JSON strings. */
struct log_field {
    const char *key;
    const char *value;
};

/* Sets the service name written on every line (copied). */
void log_init(const char *service_name, enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* "debug", "info", "warn"/"warning", "error" -> 0, else -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);
/* Redirects output (tests); NULL restores stdout. The stream is not closed. */
void log_set_output(FILE *out);
bool log_enabled(enum log_level level);
/* Per-thread trace id (32 hex chars from traceparent) written as trace.id; NULL clears it. */
void log_set_trace_id(const char *trace_id);
const char *log_get_trace_id(void);

void log_write(enum log_level level, const struct log_field *fields, size_t nfields,
               const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define log_at(lvl, ...)                                                                           \
    do {                                                                                           \
        if (log_enabled(lvl))                                                                      \
            log_write(lvl, NULL, 0, __VA_ARGS__);                                                  \
    } while (0)
#define log_fields(lvl, fields, nfields, ...)                                                      \
    do {                                                                                           \
        if (log_enabled(lvl))                                                                      \
            log_write(lvl, fields, nfields, __VA_ARGS__);                                          \
    } while (0)

#define LOG_DEBUG(...) log_at(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define LOG_INFO(...)  log_at(LOG_LEVEL_INFO, __VA_ARGS__)
#define LOG_WARN(...)  log_at(LOG_LEVEL_WARN, __VA_ARGS__)
#define LOG_ERROR(...) log_at(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
