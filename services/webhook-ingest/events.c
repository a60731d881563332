/*
 * Webhook body parsing and validation (see events.h).
 *
 * One strict pass over the bytes checks the whole document (a syntax error
 * anywhere is reported before any field error, as a tree parser would) and
 * remembers, for each event, its span and where its top-level "type",
 * "robot_id", "occurred_at", "id" and "data" members are. Like cJSON, the
 * first of two equal keys wins. Whatever is accepted here parses with cJSON,
 * which the consumers use: the fuzz target checks that.
 */
#include "events.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "timeutil.h"
#include "xalloc.h"

#define KEY_DECODE_MAX 32 /* escaped keys longer than this cannot be a field we read */

static const char *const known_types[] = {
    "robot.heartbeat", "robot.status", "robot.fault",
    "robot.booted",    "command.ack",  "command.result",
};

bool event_type_known(const char *type)
{
    for (size_t i = 0; i < sizeof(known_types) / sizeof(known_types[0]); i++)
        if (strcmp(type, known_types[i]) == 0)
            return true;
    return false;
}

/* ---- the scanner ---- */

/* A JSON string's raw content, between its quotes. */
struct jstr {
    const char *s;
    size_t len;
    bool escaped;
};

enum vkind { V_ABSENT = 0, V_STRING, V_OBJECT, V_OTHER };

struct member {
    enum vkind kind;
    struct jstr str; /* when kind is V_STRING */
};

enum field { F_TYPE, F_ROBOT_ID, F_OCCURRED_AT, F_ID, F_DATA, F_COUNT };
static const char *const field_names[F_COUNT] = {"type", "robot_id", "occurred_at", "id", "data"};

/* What the scan found about one event (a top-level value of the batch, or the body). */
struct scanned {
    const char *start, *end;
    bool object;
    bool empty;
    struct member fields[F_COUNT];
};

struct scanner {
    const char *p, *begin, *end;
    int depth;
    const char *what; /* the syntax error, NULL while fine */
    /* the events seen, up to max; count goes on past it */
    struct scanned *evs;
    size_t count, max, cap;
};

static bool syntax_error(struct scanner *sc, const char *what)
{
    if (!sc->what)
        sc->what = what;
    return false;
}

static void skip_ws(struct scanner *sc)
{
    while (sc->p < sc->end && (*sc->p == ' ' || *sc->p == '\n' || *sc->p == '\r' || *sc->p == '\t'))
        sc->p++;
}

static int hex4(const char *s)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Length of the well-formed UTF-8 sequence at p (first byte >= 0x80), 0 if malformed. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        else if (c == 0xed)
            hi = 0x9f; /* UTF-16 surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90; /* overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* beyond U+10FFFF */
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    return n;
}

/*
 * True when none of the 8 bytes needs a closer look: no control character, no
 * quote, no backslash, nothing above 0x7f (bit tricks from "Bit Twiddling
 * Hacks": haszero and hasless). Bodies are mostly long plain strings.
 */
static bool word_plain(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t q = w ^ (ones * '"');
    uint64_t b = w ^ (ones * '\\');
    uint64_t special = ((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((b - ones) & ~b) | w;
    return (special & highs) == 0;
}

/* At the opening quote. */
static bool scan_string(struct scanner *sc, struct jstr *out)
{
    const unsigned char *p = (const unsigned char *)sc->p + 1;
    const unsigned char *end = (const unsigned char *)sc->end;
    out->s = (const char *)p;
    out->escaped = false;
    for (;;) {
        uint64_t w;
        while (end - p >= 8 && (memcpy(&w, p, 8), word_plain(w)))
            p += 8;
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        if (p == end)
            return syntax_error(sc, "unterminated string");
        if (*p == '"')
            break;
        if (*p < 0x20) {
            sc->p = (const char *)p;
            return syntax_error(sc, "control character in string");
        }
        if (*p >= 0x80) {
            size_t n = utf8_len(p, end);
            if (!n) {
                sc->p = (const char *)p;
                return syntax_error(sc, "invalid UTF-8");
            }
            p += n;
            continue;
        }
        /* a backslash */
        out->escaped = true;
        if (end - p < 2)
            return syntax_error(sc, "unterminated string");
        if (strchr("\"\\/bfnrt", p[1]) && p[1] != '\0') {
            p += 2;
            continue;
        }
        int u = p[1] == 'u' && end - p >= 6 ? hex4((const char *)p + 2) : -1;
        if (u < 0 || (u >= 0xdc00 && u <= 0xdfff)) {
            sc->p = (const char *)p;
            return syntax_error(sc, "invalid escape in string");
        }
        p += 6;
        if (u >= 0xd800 && u <= 0xdbff) {
            /* a high surrogate must be followed by a low one */
            int lo = end - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4((const char *)p + 2) : -1;
            if (lo < 0xdc00 || lo > 0xdfff) {
                sc->p = (const char *)p;
                return syntax_error(sc, "invalid escape in string");
            }
            p += 6;
        }
    }
    out->len = (size_t)(p - (const unsigned char *)out->s);
    sc->p = (const char *)p + 1;
    return true;
}

static bool scan_digits(struct scanner *sc)
{
    const char *start = sc->p;
    while (sc->p < sc->end && *sc->p >= '0' && *sc->p <= '9')
        sc->p++;
    return sc->p > start || syntax_error(sc, "invalid number");
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool scan_number(struct scanner *sc)
{
    if (*sc->p == '-')
        sc->p++;
    if (sc->p < sc->end && *sc->p == '0')
        sc->p++;
    else if (!scan_digits(sc))
        return false;
    if (sc->p < sc->end && *sc->p == '.') {
        sc->p++;
        if (!scan_digits(sc))
            return false;
    }
    if (sc->p < sc->end && (*sc->p == 'e' || *sc->p == 'E')) {
        sc->p++;
        if (sc->p < sc->end && (*sc->p == '+' || *sc->p == '-'))
            sc->p++;
        if (!scan_digits(sc))
            return false;
    }
    return true;
}

static bool scan_literal(struct scanner *sc, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(sc->end - sc->p) < n || memcmp(sc->p, word, n) != 0)
        return syntax_error(sc, "invalid value");
    sc->p += n;
    return true;
}

static bool scan_value(struct scanner *sc, struct scanned *ev);

/* Which field a member key names, F_COUNT for none. */
static enum field key_field(const struct jstr *k)
{
    char buf[KEY_DECODE_MAX];
    const char *s = k->s;
    size_t len = k->len;
    if (k->escaped) {
        /* only simple escapes can spell an ASCII field name; anything else matches none */
        size_t n = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < k->len; i++) {
            if (n == sizeof(buf))
                return F_COUNT;
            if (k->s[i] != '\\') {
                buf[n++] = k->s[i];
                continue;
            }
            if (k->s[i + 1] != 'u')
                return F_COUNT;
            int u = hex4(k->s + i + 2);
            if (u <= 0 || u >= 0x80)
                return F_COUNT;
            buf[n++] = (char)u;
            i += 5;
        }
        s = buf;
        len = n;
    }
    for (int f = 0; f < F_COUNT; f++)
        if (strlen(field_names[f]) == len && memcmp(field_names[f], s, len) == 0)
            return (enum field)f;
    return F_COUNT;
}

/* At '{'. With ev, records the members the platform reads (first occurrence wins). */
static bool scan_object(struct scanner *sc, struct scanned *ev)
{
    sc->p++;
    skip_ws(sc);
    if (sc->p < sc->end && *sc->p == '}') {
        sc->p++;
        if (ev)
            ev->empty = true;
        return true;
    }
    for (;;) {
        struct jstr key;
        if (sc->p == sc->end || *sc->p != '"')
            return syntax_error(sc, "object key expected");
        if (!scan_string(sc, &key))
            return false;
        skip_ws(sc);
        if (sc->p == sc->end || *sc->p != ':')
            return syntax_error(sc, "':' expected");
        sc->p++;
        skip_ws(sc);
        enum field f = ev ? key_field(&key) : F_COUNT;
        struct member *m = f < F_COUNT && ev->fields[f].kind == V_ABSENT ? &ev->fields[f] : NULL;
        if (m && sc->p < sc->end && *sc->p == '"') {
            m->kind = V_STRING;
            if (!scan_string(sc, &m->str))
                return false;
        } else {
            if (m)
                m->kind = sc->p < sc->end && *sc->p == '{' ? V_OBJECT : V_OTHER;
            if (!scan_value(sc, NULL))
                return false;
        }
        skip_ws(sc);
        if (sc->p < sc->end && *sc->p == ',') {
            sc->p++;
            skip_ws(sc);
            continue;
        }
        if (sc->p < sc->end && *sc->p == '}') {
            sc->p++;
            return true;
        }
        return syntax_error(sc, "',' or '}' expected");
    }
}

/* Records one event's span and members; past the limit only counts it. */
static bool scan_event(struct scanner *sc)
{
    struct scanned scratch;
    struct scanned *ev = &scratch;
    if (sc->count < sc->max) {
        if (sc->count == sc->cap) {
            sc->cap = sc->cap ? sc->cap * 2 : 4;
            if (sc->cap > sc->max)
                sc->cap = sc->max;
            sc->evs = xrealloc(sc->evs, sc->cap * sizeof(*sc->evs));
        }
        ev = &sc->evs[sc->count];
    }
    sc->count++;
    memset(ev, 0, sizeof(*ev));
    ev->start = sc->p;
    ev->object = sc->p < sc->end && *sc->p == '{';
    bool ok = scan_value(sc, ev->object ? ev : NULL);
    ev->end = sc->p;
    return ok;
}

/* At '['. top: the body's array, whose elements are events. */
static bool scan_array(struct scanner *sc, bool top)
{
    sc->p++;
    skip_ws(sc);
    if (sc->p < sc->end && *sc->p == ']') {
        sc->p++;
        return true;
    }
    for (;;) {
        if (!(top ? scan_event(sc) : scan_value(sc, NULL)))
            return false;
        skip_ws(sc);
        if (sc->p < sc->end && *sc->p == ',') {
            sc->p++;
            skip_ws(sc);
            continue;
        }
        if (sc->p < sc->end && *sc->p == ']') {
            sc->p++;
            return true;
        }
        return syntax_error(sc, "',' or ']' expected");
    }
}

static bool scan_value(struct scanner *sc, struct scanned *ev)
{
    struct jstr s;
    if (sc->p == sc->end)
        return syntax_error(sc, "value expected");
    switch (*sc->p) {
    case '{':
    case '[': {
        if (++sc->depth > EVENT_DEPTH_MAX)
            return syntax_error(sc, "nested too deeply");
        bool ok = *sc->p == '{' ? scan_object(sc, ev) : scan_array(sc, false);
        sc->depth--;
        return ok;
    }
    case '"':
        return scan_string(sc, &s);
    case 't':
        return scan_literal(sc, "true");
    case 'f':
        return scan_literal(sc, "false");
    case 'n':
        return scan_literal(sc, "null");
    default:
        if (*sc->p == '-' || (*sc->p >= '0' && *sc->p <= '9'))
            return scan_number(sc);
        return syntax_error(sc, "invalid value");
    }
}

/* ---- decoding and checks ---- */

static void put_utf8(char **w, unsigned cp)
{
    unsigned char *o = (unsigned char *)*w;
    if (cp < 0x80) {
        *o++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *o++ = (unsigned char)(0xc0 | (cp >> 6));
        *o++ = (unsigned char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *o++ = (unsigned char)(0xe0 | (cp >> 12));
        *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (unsigned char)(0x80 | (cp & 0x3f));
    } else {
        *o++ = (unsigned char)(0xf0 | (cp >> 18));
        *o++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (unsigned char)(0x80 | (cp & 0x3f));
    }
    *w = (char *)o;
}

/*
 * Decodes a scanned (hence well-formed) string into *arena, NUL-terminated,
 * and advances the arena. NULL when the value holds a NUL character: no
 * field we read may, and a C string would silently cut it.
 */
static const char *decode(const struct jstr *s, char **arena)
{
    char *start = *arena, *w = start;
    if (!s->escaped) {
        memcpy(w, s->s, s->len);
        w += s->len;
    } else {
        for (size_t i = 0; i < s->len; i++) {
            char c = s->s[i];
            if (c != '\\') {
                *w++ = c;
                continue;
            }
            c = s->s[++i];
            switch (c) {
            case 'b':
                *w++ = '\b';
                break;
            case 'f':
                *w++ = '\f';
                break;
            case 'n':
                *w++ = '\n';
                break;
            case 'r':
                *w++ = '\r';
                break;
            case 't':
                *w++ = '\t';
                break;
            case 'u': {
                unsigned cp = (unsigned)hex4(s->s + i + 1);
                i += 4;
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    unsigned lo = (unsigned)hex4(s->s + i + 3);
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    i += 6;
                }
                if (cp == 0)
                    return NULL;
                put_utf8(&w, cp);
                break;
            }
            default: /* '"', '\\', '/' */
                *w++ = c;
                break;
            }
        }
    }
    *w++ = '\0';
    *arena = w;
    return start; /* the scanner refused raw control characters, so no NUL hides inside */
}

/* Ids travel as Kafka keys, Redis keys and log fields: keep them plain. */
static bool id_chars_ok(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (n >= max || c <= 0x20 || c >= 0x7f)
            return false;
    }
    return n > 0;
}

static int fail(struct event_error *err, bool batch, size_t index, const char *field,
                const char *fmt, const char *arg)
{
    if (batch)
        snprintf(err->field, sizeof(err->field), "events[%zu]%s%s", index, field[0] ? "." : "",
                 field);
    else
        snprintf(err->field, sizeof(err->field), "%s", field[0] ? field : "body");
    snprintf(err->detail, sizeof(err->detail), fmt, err->field, arg);
    return -EINVAL;
}

/* A string member decoded, or NULL when absent, not a string, or holding a NUL. */
static const char *string_field(const struct scanned *sc, enum field f, char **arena)
{
    const struct member *m = &sc->fields[f];
    return m->kind == V_STRING ? decode(&m->str, arena) : NULL;
}

static int check_event(const struct scanned *sc, bool batch, size_t i, struct event *ev,
                       char **arena, struct event_error *err)
{
    int64_t ms;
    if (!sc->object)
        return fail(err, batch, i, "", "%s must be a JSON object%s", "");
    ev->raw = sc->start;
    ev->raw_len = (size_t)(sc->end - sc->start);
    ev->raw_empty = sc->empty;
    if (sc->fields[F_TYPE].kind != V_STRING)
        return fail(err, batch, i, "type", "%s is required and must be a string%s", "");
    ev->type = string_field(sc, F_TYPE, arena);
    if (!ev->type || !event_type_known(ev->type))
        return fail(err, batch, i, "type", "%s '%.64s' is not a known event type",
                    ev->type ? ev->type : "");
    if (sc->fields[F_ROBOT_ID].kind != V_STRING)
        return fail(err, batch, i, "robot_id", "%s is required and must be a string%s", "");
    ev->robot_id = string_field(sc, F_ROBOT_ID, arena);
    if (!ev->robot_id || !id_chars_ok(ev->robot_id, EVENT_ROBOT_ID_MAX))
        return fail(err, batch, i, "robot_id",
                    "%s must be 1-128 printable characters without spaces%s", "");
    if (sc->fields[F_OCCURRED_AT].kind != V_STRING)
        return fail(err, batch, i, "occurred_at", "%s is required and must be a string%s", "");
    ev->occurred_at = string_field(sc, F_OCCURRED_AT, arena);
    if (!ev->occurred_at || time_parse_rfc3339(ev->occurred_at, &ms) != 0)
        return fail(err, batch, i, "occurred_at", "%s must be an RFC 3339 date-time%s", "");
    ev->id = NULL;
    if (sc->fields[F_ID].kind != V_ABSENT) {
        ev->id = string_field(sc, F_ID, arena);
        if (!ev->id || !id_chars_ok(ev->id, EVENT_ID_MAX))
            return fail(err, batch, i, "id",
                        "%s must be a string of 1-128 printable characters without spaces%s", "");
    }
    if (sc->fields[F_DATA].kind != V_ABSENT && sc->fields[F_DATA].kind != V_OBJECT)
        return fail(err, batch, i, "data", "%s must be a JSON object%s", "");
    return 0;
}

int event_batch_parse(const char *body, size_t len, size_t max_batch, struct event_batch *out,
                      struct event_error *err)
{
    memset(out, 0, sizeof(*out));
    if (max_batch == 0)
        max_batch = 1;
    /*
     * One block: the body's copy (the events' raw spans point into it) and
     * room for the decoded fields, which are never longer than their raw text.
     */
    out->mem = xmalloc(2 * len + 2);
    if (len)
        memcpy(out->mem, body, len);
    out->mem[len] = '\0';
    char *arena = out->mem + len + 1;

    struct scanner sc = {.p = out->mem, .begin = out->mem, .end = out->mem + len, .max = max_batch};
    skip_ws(&sc);
    bool batch = sc.p < sc.end && *sc.p == '[';
    bool object = sc.p < sc.end && *sc.p == '{';
    bool ok;
    if (batch) {
        sc.depth = 1;
        ok = scan_array(&sc, true);
    } else if (object) {
        ok = scan_event(&sc);
    } else {
        ok = scan_value(&sc, NULL);
    }
    if (ok) {
        skip_ws(&sc);
        if (sc.p != sc.end)
            ok = syntax_error(&sc, "unexpected data after json value");
    }
    int rc = 0;
    if (!ok) {
        snprintf(err->field, sizeof(err->field), "body");
        snprintf(err->detail, sizeof(err->detail), "body is not valid JSON: %s at byte offset %zu",
                 sc.what ? sc.what : "invalid json", (size_t)(sc.p - sc.begin));
        rc = -EINVAL;
        goto out;
    }
    if (!batch && !object) {
        rc = fail(err, false, 0, "body", "%s must be an event object or an array of events%s", "");
        goto out;
    }
    if (batch && sc.count == 0) {
        rc = fail(err, false, 0, "body", "%s is an empty batch%s", "");
        goto out;
    }
    if (sc.count > max_batch) {
        char limit[32];
        snprintf(limit, sizeof(limit), "%zu", max_batch);
        rc = fail(err, false, 0, "body", "%s holds more events than the batch limit of %s", limit);
        goto out;
    }
    out->n = sc.count;
    out->events = xcalloc(out->n, sizeof(*out->events));
    for (size_t i = 0; i < out->n && !rc; i++)
        rc = check_event(&sc.evs[i], batch, i, &out->events[i], &arena, err);
out:
    free(sc.evs);
    if (rc)
        event_batch_release(out);
    return rc;
}

void event_batch_release(struct event_batch *b)
{
    free(b->events);
    free(b->mem);
    memset(b, 0, sizeof(*b));
}
