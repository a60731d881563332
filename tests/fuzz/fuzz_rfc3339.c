/*
 * Fuzzes the RFC 3339 timestamp parser (time_parse_rfc3339), which reads the
 * "time" of every CloudEvent. The input is copied to a NUL-terminated string,
 * as the parser expects; an accepted time formatted back must parse to the
 * same instant.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "timeutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    FUZZ_ASSERT(s != NULL);
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';

    int64_t ms = 0;
    if (time_parse_rfc3339(s, &ms) == 0) {
        char text[TIME_RFC3339_LEN];
        int64_t again = 0;
        /* Offsets can push an instant just outside 0000..9999, which has no 4-digit form. */
        if (time_format_rfc3339(ms, text, sizeof(text)) == 0 &&
            time_parse_rfc3339(text, &again) == 0)
            FUZZ_ASSERT(again == ms);
    }
    free(s);
    return 0;
}
