/*
 * A strict, allocation-free reader of CloudEvent envelopes for the hot path of
 * the stream processor. Most input is heartbeats; building a cJSON tree for
 * each of them costs more than the rest of their processing. evscan_envelope
 * checks the whole text is JSON and reads the top-level attributes as spans
 * of the input, without copying.
 *
 * It is deliberately narrower than ce_parse: it accepts only what ce_parse
 * would accept too, and answers false for everything it is unsure of (any
 * escape sequence in a key or in an attribute it returns, a "\u" escape
 * anywhere, a duplicated attribute, a datacontenttype other than
 * "application/json", "data_base64", nesting deeper than EVSCAN_MAX_DEPTH,
 * whitespace other than space, tab, CR and LF). A false answer is no verdict:
 * the caller parses the message with ce_parse, which decides and names the
 * error for the dead letter.
 */
#ifndef SP_EVSCAN_H
#define SP_EVSCAN_H

#include <stdbool.h>
#include <stddef.h>

#define EVSCAN_MAX_DEPTH 32

struct evscan_span {
    const char *s; /* into the scanned text, not NUL-terminated; NULL when absent */
    size_t len;
};

struct evscan_envelope {
    struct evscan_span id, source, type, subject, time;
};

/*
 * True when json (len bytes) is one well-formed JSON object that ce_parse
 * would accept as a CloudEvent (specversion "1.0", non-empty id, source and
 * type, non-empty subject and time when present) and that uses none of the
 * constructs listed above; out then holds the attributes. The time is not
 * checked as RFC 3339 here: the caller parses it and falls back on failure.
 */
bool evscan_envelope(const char *json, size_t len, struct evscan_envelope *out);

/* True when the span holds exactly the NUL-terminated string lit. */
bool evscan_is(const struct evscan_span *sp, const char *lit);

#endif
