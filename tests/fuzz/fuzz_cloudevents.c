/*
 * Fuzzes the CloudEvents envelope parser (ce_parse), which sees every Kafka
 * message on the platform. An accepted envelope must carry its required
 * attributes and survive a rebuild with ce_build and a second parse.
 */
#include <string.h>

#include "buf.h"
#include "cloudevents.h"
#include "fuzz.h"

#define REBUILD_MAX (1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cloudevent ev;
    char err[256];

    err[0] = '\0';
    cJSON *root = ce_parse((const char *)data, size, &ev, err, sizeof(err));
    if (!root) {
        FUZZ_ASSERT(err[0] != '\0');
        FUZZ_ASSERT(!ev.id && !ev.source && !ev.type && !ev.data);
        return 0;
    }
    FUZZ_ASSERT(ev.id && *ev.id && ev.source && *ev.source && ev.type && *ev.type);

    struct buf out;
    buf_init(&out, REBUILD_MAX);
    if (ce_build(&ev, &out) == 0) {
        struct cloudevent again;
        cJSON *root2 = ce_parse(out.data, out.len, &again, err, sizeof(err));
        FUZZ_ASSERT(root2 != NULL);
        FUZZ_ASSERT(strcmp(again.id, ev.id) == 0);
        FUZZ_ASSERT(strcmp(again.source, ev.source) == 0);
        FUZZ_ASSERT(strcmp(again.type, ev.type) == 0);
        FUZZ_ASSERT((again.subject == NULL) == (ev.subject == NULL));
        FUZZ_ASSERT((again.time == NULL) == (ev.time == NULL));
        cJSON_Delete(root2);
    }
    buf_release(&out);
    cJSON_Delete(root);
    return 0;
}
