/*
 * Fuzzes the W3C traceparent parser (trace_parent_parse) and the child
 * derivation (trace_parent_child) on header values taken off the network.
 * Whatever the parent, the child is a valid traceparent, and it keeps the
 * trace id of a valid parent.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    FUZZ_ASSERT(s != NULL);
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';

    char trace_id[TRACE_ID_LEN];
    int prc = trace_parent_parse(s, trace_id);
    FUZZ_ASSERT(trace_parent_parse(s, NULL) == prc);

    char child[TRACE_PARENT_LEN];
    FUZZ_ASSERT(trace_parent_child(s, child) == 0);
    FUZZ_ASSERT(strlen(child) == TRACE_PARENT_LEN - 1);
    char child_id[TRACE_ID_LEN];
    FUZZ_ASSERT(trace_parent_parse(child, child_id) == 0);
    if (prc == 0)
        FUZZ_ASSERT(strcmp(child_id, trace_id) == 0);
    free(s);
    return 0;
}
