/*
 * Fuzzes the length-bounded JSON parser (json_parse) and the typed getters
 * used on request bodies. Every member of an accepted object is read through
 * every getter, and the compact print of an accepted document must parse back.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "fuzz.h"
#include "json.h"

static void read_members(const cJSON *obj)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, obj)
    {
        if (!item->string)
            continue;
        int64_t i;
        bool b;
        const char *s = json_get_str(obj, item->string);
        int irc = json_get_int(obj, item->string, &i);
        int brc = json_get_bool(obj, item->string, &b);
        FUZZ_ASSERT(irc == 0 || irc == -EINVAL);
        FUZZ_ASSERT(brc == 0 || brc == -EINVAL);
        /* Duplicate names: the getters see the first one, which may differ in type. */
        if (cJSON_GetObjectItemCaseSensitive(obj, item->string) == item) {
            FUZZ_ASSERT((s != NULL) == (cJSON_IsString(item) != 0));
            FUZZ_ASSERT((brc == 0) == (cJSON_IsBool(item) != 0));
            if (irc == 0)
                FUZZ_ASSERT(cJSON_IsNumber(item));
        }
    }
    static const char absent[] = "\001absent";
    if (!cJSON_GetObjectItemCaseSensitive(obj, absent)) {
        int64_t i;
        bool b;
        FUZZ_ASSERT(json_get_int(obj, absent, &i) == -ENOENT);
        FUZZ_ASSERT(json_get_bool(obj, absent, &b) == -ENOENT);
        FUZZ_ASSERT(json_get_str(obj, absent) == NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[128];

    err[0] = '\0';
    cJSON *root = json_parse((const char *)data, size, err, sizeof(err));
    if (!root) {
        FUZZ_ASSERT(err[0] != '\0');
        return 0;
    }
    if (cJSON_IsObject(root))
        read_members(root);

    size_t len = 0;
    char *text = json_print(root, &len);
    FUZZ_ASSERT(text != NULL);
    cJSON *again = json_parse(text, len, err, sizeof(err));
    FUZZ_ASSERT(again != NULL);
    cJSON_Delete(again);
    free(text);
    cJSON_Delete(root);
    return 0;
}
