/*
 * ECS JSON logging (see log.h). Each line is built in a local buffer and written
 * with one fwrite under a lock, so lines from different threads never mix.
 */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "str.h"
#include "timeutil.h"

#define LOG_LINE_MAX (16 * 1024)

static atomic_int current_level = LOG_LEVEL_INFO;
static char service_name[64] = "unknown";
static FILE *output;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local char trace_id[33];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *name, enum log_level level)
{
    str_copy(service_name, name, sizeof(service_name));
    atomic_store(&current_level, (int)level);
}

void log_set_level(enum log_level level)
{
    atomic_store(&current_level, (int)level);
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load(&current_level);
}

int log_level_parse(const char *s, enum log_level *out)
{
    if (!s)
        return -EINVAL;
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = LOG_LEVEL_WARN;
        return 0;
    }
    return -EINVAL;
}

void log_set_output(FILE *out)
{
    pthread_mutex_lock(&out_lock);
    output = out;
    pthread_mutex_unlock(&out_lock);
}

bool log_enabled(enum log_level level)
{
    return (int)level >= atomic_load(&current_level);
}

void log_set_trace_id(const char *id)
{
    if (id)
        str_copy(trace_id, id, sizeof(trace_id));
    else
        trace_id[0] = '\0';
}

const char *log_get_trace_id(void)
{
    return trace_id[0] ? trace_id : NULL;
}

static int append_field(struct buf *b, const char *key, const char *value)
{
    int rc = buf_append_str(b, ",\"");
    if (!rc)
        rc = buf_append_json_str(b, key);
    if (!rc)
        rc = buf_append_str(b, "\":\"");
    if (!rc)
        rc = buf_append_json_str(b, value ? value : "");
    if (!rc)
        rc = buf_append_str(b, "\"");
    return rc;
}

void log_write(enum log_level level, const struct log_field *fields, size_t nfields,
               const char *fmt, ...)
{
    char ts[TIME_RFC3339_LEN];
    char msg[4096];
    struct buf b;
    va_list ap;
    int rc;

    if ((unsigned)level > LOG_LEVEL_ERROR)
        level = LOG_LEVEL_ERROR;
    time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    buf_init(&b, LOG_LINE_MAX);
    rc = buf_appendf(&b, "{\"@timestamp\":\"%s\",\"log.level\":\"%s\",\"message\":\"", ts,
                     level_names[level]);
    if (!rc)
        rc = buf_append_json_str(&b, msg);
    if (!rc)
        rc = buf_append_str(&b, "\",\"ecs.version\":\"8.11.0\"");
    if (!rc)
        rc = append_field(&b, "service.name", service_name);
    if (!rc && trace_id[0])
        rc = append_field(&b, "trace.id", trace_id);
    for (size_t i = 0; i < nfields && !rc; i++)
        rc = append_field(&b, fields[i].key, fields[i].value);
    if (!rc)
        rc = buf_append_str(&b, "}\n");
    if (rc) {
        /*
         * Over the line cap: any failed append (not just the last) would leave
         * a line with a field missing or cut, so write a short valid line instead.
         */
        buf_reset(&b);
        buf_appendf(&b,
                    "{\"@timestamp\":\"%s\",\"log.level\":\"%s\",\"message\":\"log line too "
                    "long\",\"ecs.version\":\"8.11.0\",\"service.name\":\"",
                    ts, level_names[level]);
        buf_append_json_str(&b, service_name);
        buf_append_str(&b, "\"}\n");
    }

    pthread_mutex_lock(&out_lock);
    FILE *out = output ? output : stdout;
    fwrite(b.data, 1, b.len, out);
    fflush(out);
    pthread_mutex_unlock(&out_lock);
    buf_release(&b);
}
