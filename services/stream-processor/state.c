/*
 * The robot table (open addressing, linear probing, backward-shift deletion),
 * the deadline min-heap and the changelog codec (see state.h).
 */
#include "state.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

_Static_assert(sizeof(struct robot) <= 384, "a robot must stay within its memory budget");

#define TABLE_MIN_SLOTS  1024
#define CHANGELOG_MAGIC0 'S'
#define CHANGELOG_MAGIC1 'P'

static const char *const status_names[ROBOT_STATUS_COUNT] = {"unknown", "online", "offline",
                                                             "faulted", "rebooting"};

const char *robot_status_name(enum robot_status s)
{
    return (unsigned)s < ROBOT_STATUS_COUNT ? status_names[s] : "unknown";
}

const char *request_reason_name(enum request_reason r)
{
    switch (r) {
    case REASON_OFFLINE:
        return "offline";
    case REASON_FAULT_STORM:
        return "fault_storm";
    default:
        return "none";
    }
}

uint64_t state_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h ? h : 1; /* 0 marks an empty dedupe slot */
}

/* ---- table ---- */

struct robot_table {
    struct robot **slots;
    size_t nslots; /* power of two */
    size_t count;
    size_t id_bytes;
};

struct robot_table *robot_table_new(void)
{
    struct robot_table *t = xcalloc(1, sizeof(*t));
    t->nslots = TABLE_MIN_SLOTS;
    t->slots = xcalloc(t->nslots, sizeof(*t->slots));
    return t;
}

void robot_table_free(struct robot_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nslots; i++) {
        if (t->slots[i])
            free(t->slots[i]);
    }
    free(t->slots);
    free(t);
}

static size_t slot_of(const struct robot_table *t, const char *id, size_t idlen)
{
    return (size_t)state_hash(id, idlen) & (t->nslots - 1);
}

static bool id_equal(const struct robot *r, const char *id, size_t idlen)
{
    return r->idlen == idlen && memcmp(r->id, id, idlen) == 0;
}

struct robot *robot_table_get(const struct robot_table *t, const char *id, size_t idlen)
{
    for (size_t i = slot_of(t, id, idlen);; i = (i + 1) & (t->nslots - 1)) {
        struct robot *r = t->slots[i];
        if (!r)
            return NULL;
        if (id_equal(r, id, idlen))
            return r;
    }
}

void robot_table_prefetch(const struct robot_table *t, const char *id, size_t idlen, bool robot)
{
    struct robot *const *slot = &t->slots[slot_of(t, id, idlen)];
    if (!robot) {
        __builtin_prefetch(slot);
        return;
    }
    const char *r = (const char *)*slot;
    if (!r)
        return;
    for (size_t off = 0; off < sizeof(struct robot) + idlen + 1; off += 64)
        __builtin_prefetch(r + off, 1);
}

static void table_insert(struct robot_table *t, struct robot *r)
{
    size_t i = slot_of(t, r->id, r->idlen);
    while (t->slots[i])
        i = (i + 1) & (t->nslots - 1);
    t->slots[i] = r;
}

static void table_grow(struct robot_table *t)
{
    struct robot **old = t->slots;
    size_t n = t->nslots;
    t->nslots = n * 2;
    t->slots = xcalloc(t->nslots, sizeof(*t->slots));
    for (size_t i = 0; i < n; i++)
        if (old[i])
            table_insert(t, old[i]);
    free(old);
}

struct robot *robot_table_add(struct robot_table *t, const char *id, size_t idlen,
                              int32_t partition)
{
    if ((t->count + 1) * 2 > t->nslots)
        table_grow(t);
    /* the id lives right after the record: one allocation, one cache miss less per lookup */
    struct robot *r = xcalloc(1, sizeof(*r) + idlen + 1);
    r->id = (char *)(r + 1);
    memcpy(r->id, id, idlen);
    r->idlen = (uint8_t)idlen;
    r->partition = partition;
    r->heap_idx = HEAP_NONE;
    r->last_offset = -1;
    r->status = ROBOT_UNKNOWN;
    table_insert(t, r);
    t->count++;
    t->id_bytes += idlen + 1;
    return r;
}

void robot_table_remove(struct robot_table *t, struct robot *r)
{
    size_t mask = t->nslots - 1;
    size_t i = slot_of(t, r->id, r->idlen);
    while (t->slots[i] != r)
        i = (i + 1) & mask;
    /* Backward shift: move later members of the probe run into the hole. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; t->slots[j]; j = (j + 1) & mask) {
        size_t home = slot_of(t, t->slots[j]->id, t->slots[j]->idlen);
        bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            t->slots[hole] = t->slots[j];
            hole = j;
        }
    }
    t->slots[hole] = NULL;
    t->count--;
    t->id_bytes -= (size_t)r->idlen + 1;
    free(r);
}

size_t robot_table_count(const struct robot_table *t)
{
    return t->count;
}

size_t robot_table_bytes(const struct robot_table *t)
{
    return t->count * sizeof(struct robot) + t->id_bytes + t->nslots * sizeof(*t->slots);
}

void robot_table_foreach(const struct robot_table *t, void (*fn)(void *ud, struct robot *r),
                         void *ud)
{
    for (size_t i = 0; i < t->nslots; i++)
        if (t->slots[i])
            fn(ud, t->slots[i]);
}

/* ---- heap ---- */

struct deadline_heap {
    struct robot **v;
    size_t n, cap;
};

struct deadline_heap *deadline_heap_new(void)
{
    return xcalloc(1, sizeof(struct deadline_heap));
}

void deadline_heap_free(struct deadline_heap *h)
{
    if (!h)
        return;
    free(h->v);
    free(h);
}

static void heap_place(struct deadline_heap *h, size_t i, struct robot *r)
{
    h->v[i] = r;
    r->heap_idx = (uint32_t)i;
}

static void sift_up(struct deadline_heap *h, size_t i)
{
    struct robot *r = h->v[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h->v[parent]->heap_key <= r->heap_key)
            break;
        heap_place(h, i, h->v[parent]);
        i = parent;
    }
    heap_place(h, i, r);
}

static void sift_down(struct deadline_heap *h, size_t i)
{
    struct robot *r = h->v[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && h->v[c + 1]->heap_key < h->v[c]->heap_key)
            c++;
        if (h->v[c]->heap_key >= r->heap_key)
            break;
        heap_place(h, i, h->v[c]);
        i = c;
    }
    heap_place(h, i, r);
}

void deadline_heap_set(struct deadline_heap *h, struct robot *r, int64_t key)
{
    if (r->heap_idx == HEAP_NONE) {
        if (h->n == h->cap) {
            h->cap = h->cap ? h->cap * 2 : 1024;
            h->v = xrealloc(h->v, h->cap * sizeof(*h->v));
        }
        r->heap_key = key;
        heap_place(h, h->n++, r);
        sift_up(h, h->n - 1);
        return;
    }
    int64_t old = r->heap_key;
    r->heap_key = key;
    if (key < old)
        sift_up(h, r->heap_idx);
    else
        sift_down(h, r->heap_idx);
}

void deadline_heap_remove(struct deadline_heap *h, struct robot *r)
{
    size_t i = r->heap_idx;
    if (i == HEAP_NONE)
        return;
    r->heap_idx = HEAP_NONE;
    struct robot *last = h->v[--h->n];
    if (i == h->n)
        return;
    int64_t key = r->heap_key;
    heap_place(h, i, last);
    if (last->heap_key < key)
        sift_up(h, i);
    else
        sift_down(h, i);
}

struct robot *deadline_heap_top(const struct deadline_heap *h)
{
    return h->n ? h->v[0] : NULL;
}

size_t deadline_heap_count(const struct deadline_heap *h)
{
    return h->n;
}

/* ---- changelog ---- */

static uint8_t *put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static const uint8_t *get64(const uint8_t *p, uint64_t *v)
{
    *v = 0;
    for (int i = 0; i < 8; i++)
        *v |= (uint64_t)p[i] << (8 * i);
    return p + 8;
}

/*
 * Layout (little-endian): "SP", format 1, status, policy, nfaults, last_reason,
 * command_active; then 11 int64: last_heartbeat_ms, last_alive_ms,
 * max_event_ms, fault_floor_ms, last_seen_ms, reboot_since_ms, last_request_ms,
 * last_trigger_ms, updated_ms, last_offset, version; nfaults int64 fault
 * times; dedupe_next (1 byte) and DEDUPE_SLOTS uint64 event-id hashes.
 */
size_t changelog_encode(const struct robot *r, uint8_t *out)
{
    uint8_t *p = out;
    *p++ = CHANGELOG_MAGIC0;
    *p++ = CHANGELOG_MAGIC1;
    *p++ = CHANGELOG_FORMAT;
    *p++ = r->status;
    *p++ = r->policy;
    *p++ = r->nfaults;
    *p++ = r->last_reason;
    *p++ = r->command_active;
    const int64_t fields[] = {r->last_heartbeat_ms, r->last_alive_ms,   r->max_event_ms,
                              r->fault_floor_ms,    r->last_seen_ms,    r->reboot_since_ms,
                              r->last_request_ms,   r->last_trigger_ms, r->updated_ms,
                              r->last_offset,       (int64_t)r->version};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        p = put64(p, (uint64_t)fields[i]);
    for (unsigned i = 0; i < r->nfaults; i++)
        p = put64(p, (uint64_t)r->faults[i]);
    *p++ = r->dedupe_next;
    for (unsigned i = 0; i < DEDUPE_SLOTS; i++)
        p = put64(p, r->dedupe[i]);
    return (size_t)(p - out);
}

int changelog_decode(struct robot *r, const uint8_t *in, size_t len)
{
    if (len < 8 + 11 * 8 + 1 + DEDUPE_SLOTS * 8 || in[0] != CHANGELOG_MAGIC0 ||
        in[1] != CHANGELOG_MAGIC1 || in[2] != CHANGELOG_FORMAT || in[3] >= ROBOT_STATUS_COUNT ||
        in[5] > FAULT_SLOTS || len != 8 + 11 * 8 + (size_t)in[5] * 8 + 1 + DEDUPE_SLOTS * 8)
        return -EINVAL;
    const uint8_t *p = in + 3;
    r->status = *p++;
    r->policy = *p++;
    r->nfaults = *p++;
    r->last_reason = *p++;
    r->command_active = *p++;
    int64_t *fields[] = {&r->last_heartbeat_ms, &r->last_alive_ms,   &r->max_event_ms,
                         &r->fault_floor_ms,    &r->last_seen_ms,    &r->reboot_since_ms,
                         &r->last_request_ms,   &r->last_trigger_ms, &r->updated_ms,
                         &r->last_offset};
    uint64_t v;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        p = get64(p, &v);
        *fields[i] = (int64_t)v;
    }
    p = get64(p, &r->version);
    for (unsigned i = 0; i < r->nfaults; i++) {
        p = get64(p, &v);
        r->faults[i] = (int64_t)v;
    }
    r->dedupe_next = (uint8_t)(*p++ % DEDUPE_SLOTS);
    for (unsigned i = 0; i < DEDUPE_SLOTS; i++)
        p = get64(p, &r->dedupe[i]);
    return 0;
}
