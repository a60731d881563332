/*
 * stream-processor's per-robot state: the record kept for each robot of the
 * assigned partitions, the table that finds it by robot id, the min-heap of
 * heartbeat deadlines, and the binary changelog record the state is saved as
 * (stream-processor.changelog.v1, documented in proto/schemas/sp-changelog.md).
 *
 * Memory per robot: sizeof(struct robot) (STATE_ROBOT_BYTES, checked at
 * compile time to stay <= 384 B) + the id string + 16 B of table slots,
 * under the 512 B target for ids up to ~100 characters.
 */
#ifndef SP_STATE_H
#define SP_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ROBOT_ID_MAX     128 /* longer ids are poison (DLQ) */
#define FAULT_SLOTS      16  /* also the highest stream.fault_threshold */
#define DEDUPE_SLOTS     8   /* recent event ids remembered per robot */
#define CHANGELOG_MAX    (8 + 8 * 12 + 8 * FAULT_SLOTS + 8 * DEDUPE_SLOTS + 8)
#define HEAP_NONE        UINT32_MAX
#define CHANGELOG_FORMAT 1 /* layout version of the binary record */

enum robot_status {
    ROBOT_UNKNOWN = 0,
    ROBOT_ONLINE,
    ROBOT_OFFLINE,
    ROBOT_FAULTED,
    ROBOT_REBOOTING,
    ROBOT_STATUS_COUNT
};

enum request_reason { REASON_NONE = 0, REASON_OFFLINE, REASON_FAULT_STORM };

/* policy bits */
#define POLICY_KNOWN       0x01 /* the registry described this robot */
#define POLICY_AUTO_REBOOT 0x02
#define POLICY_SOFT        0x04
#define POLICY_HARD        0x08

struct robot {
    char *id; /* owned; never changes */
    /* event time (occurred_at, ms since the epoch) */
    int64_t last_heartbeat_ms; /* newest heartbeat, 0 = none */
    int64_t last_alive_ms;     /* newest heartbeat/status/fault/booted: names an offline trigger */
    int64_t max_event_ms;      /* newest occurred_at seen: the lateness reference */
    int64_t fault_floor_ms;    /* faults at or before this were used by a storm */
    int64_t faults[FAULT_SLOTS]; /* ascending */
    /* processing time (wall clock ms) */
    int64_t last_seen_ms;    /* when the processor last heard the robot, 0 = never */
    int64_t reboot_since_ms; /* reboot requested or reported in progress, 0 = none */
    int64_t last_request_ms; /* last automatic request */
    int64_t last_trigger_ms; /* its trigger time: the command id is sp-{id}-{reason}-{trigger} */
    int64_t updated_ms;
    int64_t mirrored_ms; /* last Redis mirror write (not saved) */
    int64_t heap_key;    /* deadline the heap orders by (not saved) */
    int64_t grace_ms;    /* no offline before this: set on restore and rollback (not saved) */
    int64_t last_offset; /* robot.events.v1 offset of the last event applied, -1 */
    int64_t unsaved;     /* 1 + offset of its first heartbeat not in the changelog, 0 = none
                            (not saved) */
    uint64_t version;    /* +1 per change; guards the Redis mirror */
    uint64_t dedupe[DEDUPE_SLOTS];
    uint32_t heap_idx; /* HEAP_NONE when no deadline is armed (not saved) */
    int32_t partition;
    uint8_t status;
    uint8_t policy;
    uint8_t nfaults;
    uint8_t dedupe_next;
    uint8_t last_reason;
    uint8_t command_active; /* a non-terminal command status was seen */
    uint8_t flags;          /* ROBOT_F_*, transaction bookkeeping (not saved) */
    uint8_t idlen;          /* strlen(id), at most ROBOT_ID_MAX */
};

#define ROBOT_F_DIRTY   0x01 /* changed in the open transaction */
#define ROBOT_F_EMIT    0x02 /* derived state changed: robot.state.v1 at commit */
#define ROBOT_F_DELETED 0x04 /* tombstones at commit */
#define ROBOT_F_UNDO    0x08 /* has an undo record in the open transaction */
#define ROBOT_F_SAVE    0x10 /* its changelog record goes into the open transaction */

#define STATE_ROBOT_BYTES sizeof(struct robot)

const char *robot_status_name(enum robot_status s);
const char *request_reason_name(enum request_reason r);

/* ---- the table ---- */
struct robot_table;

struct robot_table *robot_table_new(void);
/* Frees every robot too. NULL-safe. */
void robot_table_free(struct robot_table *t);
struct robot *robot_table_get(const struct robot_table *t, const char *id, size_t idlen);
/* Creates a zeroed robot (status unknown) for id; the table owns it. */
struct robot *robot_table_add(struct robot_table *t, const char *id, size_t idlen,
                              int32_t partition);
/* A cache hint for a lookup of id: its slot, or (robot) the robot the slot holds. */
void robot_table_prefetch(const struct robot_table *t, const char *id, size_t idlen, bool robot);
/* Removes and frees r (the caller has taken it off the heap). */
void robot_table_remove(struct robot_table *t, struct robot *r);
size_t robot_table_count(const struct robot_table *t);
/* Bytes held: robots, ids and slots. */
size_t robot_table_bytes(const struct robot_table *t);
/* Calls fn for every robot; fn must not add or remove. */
void robot_table_foreach(const struct robot_table *t, void (*fn)(void *ud, struct robot *r),
                         void *ud);

/* ---- deadlines ---- */
struct deadline_heap;

struct deadline_heap *deadline_heap_new(void);
void deadline_heap_free(struct deadline_heap *h);
/* Arms or moves r's deadline to key. */
void deadline_heap_set(struct deadline_heap *h, struct robot *r, int64_t key);
void deadline_heap_remove(struct deadline_heap *h, struct robot *r);
/* The robot with the earliest deadline, or NULL. */
struct robot *deadline_heap_top(const struct deadline_heap *h);
size_t deadline_heap_count(const struct deadline_heap *h);

/* ---- changelog record ---- */
/* Encodes r's saved fields into out (CHANGELOG_MAX bytes); returns the length. */
size_t changelog_encode(const struct robot *r, uint8_t *out);
/* Fills r's saved fields from a record. 0, or -EINVAL for a record of another format. */
int changelog_decode(struct robot *r, const uint8_t *in, size_t len);

/* 64-bit FNV-1a, for remembering event and command ids cheaply. */
uint64_t state_hash(const char *s, size_t len);

#endif
