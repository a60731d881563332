/*
 * Fuzzes the stream-processor's envelope reader (evscan_envelope), which reads
 * every event on its hot path, against ce_parse: whatever evscan accepts with
 * a time that is RFC 3339 or none (the processor parses the time itself and
 * falls back on ce_parse when it is not), ce_parse must accept too, with the
 * same id, source, type, subject and time.
 */
#include <string.h>

#include "../../services/stream-processor/evscan.h"
#include "cloudevents.h"
#include "fuzz.h"
#include "timeutil.h"

/* Whether the span and the parsed attribute are both absent or hold the same text. */
static bool span_is(const struct evscan_span *sp, const char *s)
{
    return sp->s ? s && evscan_is(sp, s) : s == NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct evscan_envelope env;
    struct cloudevent ev;
    char err[256];

    if (!evscan_envelope((const char *)data, size, &env))
        return 0;
    if (env.time.s) {
        char t[64];
        int64_t ms;
        if (env.time.len >= sizeof(t))
            return 0;
        memcpy(t, env.time.s, env.time.len);
        t[env.time.len] = '\0';
        if (time_parse_rfc3339(t, &ms) != 0)
            return 0;
    }
    cJSON *root = ce_parse((const char *)data, size, &ev, err, sizeof(err));
    FUZZ_ASSERT(root != NULL);
    FUZZ_ASSERT(span_is(&env.id, ev.id));
    FUZZ_ASSERT(span_is(&env.source, ev.source));
    FUZZ_ASSERT(span_is(&env.type, ev.type));
    FUZZ_ASSERT(span_is(&env.subject, ev.subject));
    FUZZ_ASSERT(span_is(&env.time, ev.time));
    cJSON_Delete(root);
    return 0;
}
