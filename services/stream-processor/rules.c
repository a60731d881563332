/*
 * Per-robot rules (see rules.h). Status changes:
 *   heartbeat, status (busy/idle/...)  -> online (rebooting stays while in progress;
 *                                         faulted stays while faults are in the window)
 *   status fault/faulted/error         -> faulted;  status offline/shutdown -> offline
 *   fault                              -> faulted (rebooting while in progress)
 *   booted                             -> online, reboot over
 *   command dispatched/acknowledged    -> rebooting; failed/timed_out/... -> unknown
 *   silence for offline_after          -> offline
 *   reboot_grace over, still rebooting -> unknown if heard within offline_after, else offline
 */
#include "rules.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

static const char *const kind_names[EVENT_KIND_COUNT] = {
    "robot.heartbeat", "robot.status",   "robot.fault", "robot.booted",
    "command.ack",     "command.result", "other"};

enum event_kind rules_event_kind(const char *type)
{
    for (int k = 0; k < EVENT_OTHER; k++)
        if (type && strcmp(type, kind_names[k]) == 0)
            return (enum event_kind)k;
    return EVENT_OTHER;
}

const char *rules_event_kind_name(enum event_kind k)
{
    return (unsigned)k < EVENT_KIND_COUNT ? kind_names[k] : "other";
}

bool rules_in_progress(const struct robot *r, const struct rules_settings *s, int64_t now)
{
    return r->command_active ||
           (r->reboot_since_ms > 0 && now < r->reboot_since_ms + s->reboot_grace_ms);
}

int rules_faults_in_window(const struct robot *r, const struct rules_settings *s)
{
    int n = 0;
    for (unsigned i = 0; i < r->nfaults; i++)
        if (r->faults[i] > r->fault_floor_ms &&
            r->faults[i] >= r->max_event_ms - s->fault_window_ms)
            n++;
    return n;
}

enum rules_check rules_check_event(const struct robot *r, const struct robot_event *ev,
                                   const struct rules_settings *s)
{
    if (ev->id_hash)
        for (unsigned i = 0; i < DEDUPE_SLOTS; i++)
            if (r->dedupe[i] == ev->id_hash)
                return RULES_DUPLICATE;
    if (r->max_event_ms > 0 && ev->occurred_ms < r->max_event_ms - s->allowed_lateness_ms)
        return RULES_LATE;
    return RULES_OK;
}

static bool mode_allowed(const struct robot *r, const struct rules_settings *s, bool hard)
{
    if (!(r->policy & POLICY_KNOWN))
        return s->default_auto_reboot;
    if (!(r->policy & POLICY_AUTO_REBOOT))
        return false;
    return (r->policy & (hard ? POLICY_HARD : POLICY_SOFT)) != 0;
}

static bool request(struct robot *r, enum request_reason reason, bool hard, int64_t trigger_ms,
                    const struct rules_settings *s, int64_t now, struct rules_request *req)
{
    if (!mode_allowed(r, s, hard)) {
        req->suppressed = "policy";
        req->suppressed_reason = reason;
        return false;
    }
    if (rules_in_progress(r, s, now)) {
        req->suppressed = "in_progress";
        req->suppressed_reason = reason;
        return false;
    }
    r->reboot_since_ms = now;
    r->last_request_ms = now;
    r->last_reason = (uint8_t)reason;
    r->last_trigger_ms = trigger_ms;
    req->reason = reason;
    req->hard = hard;
    req->trigger_ms = trigger_ms;
    return true;
}

/* Signs of life: the offline timer restarts, a rebooting robot that is done comes back. */
static void alive(struct robot *r, const struct robot_event *ev, const struct rules_settings *s,
                  int64_t now)
{
    r->last_seen_ms = now;
    if (ev->occurred_ms > r->last_alive_ms)
        r->last_alive_ms = ev->occurred_ms;
    if (r->status == ROBOT_REBOOTING && rules_in_progress(r, s, now))
        return;
    if (r->status == ROBOT_FAULTED && rules_faults_in_window(r, s) > 0)
        return;
    r->status = ROBOT_ONLINE;
}

static void prune_faults(struct robot *r, const struct rules_settings *s)
{
    /* No future window that a non-late fault can open reaches these. */
    int64_t horizon = r->max_event_ms - s->allowed_lateness_ms - s->fault_window_ms;
    unsigned keep = 0;
    for (unsigned i = 0; i < r->nfaults; i++)
        if (r->faults[i] > r->fault_floor_ms && r->faults[i] >= horizon)
            r->faults[keep++] = r->faults[i];
    r->nfaults = (uint8_t)keep;
}

static void fault(struct robot *r, const struct robot_event *ev, const struct rules_settings *s,
                  int64_t now, struct rules_request *req)
{
    int64_t t = ev->occurred_ms;
    if (t <= r->fault_floor_ms)
        return; /* already part of a storm */
    if (r->nfaults == FAULT_SLOTS) {
        if (t <= r->faults[0])
            return;
        memmove(r->faults, r->faults + 1, (FAULT_SLOTS - 1) * sizeof(r->faults[0]));
        r->nfaults--;
    }
    unsigned at = r->nfaults;
    while (at > 0 && r->faults[at - 1] > t)
        at--;
    memmove(r->faults + at + 1, r->faults + at, (r->nfaults - at) * sizeof(r->faults[0]));
    r->faults[at] = t;
    r->nfaults++;

    /* Windows that end at the new fault or at a later one may now be full. */
    for (unsigned j = at, i = 0; j < r->nfaults; j++) {
        while (r->faults[j] - r->faults[i] > s->fault_window_ms)
            i++;
        if ((int)(j - i + 1) >= s->fault_threshold) {
            int64_t end = r->faults[j];
            r->fault_floor_ms = end;
            if (request(r, REASON_FAULT_STORM, false, end, s, now, req))
                r->status = ROBOT_REBOOTING;
            break;
        }
    }
    prune_faults(r, s);
}

void rules_apply_event(struct robot *r, const struct robot_event *ev,
                       const struct rules_settings *s, int64_t now, struct rules_request *req)
{
    if (ev->id_hash) {
        r->dedupe[r->dedupe_next] = ev->id_hash;
        r->dedupe_next = (uint8_t)((r->dedupe_next + 1) % DEDUPE_SLOTS);
    }
    if (ev->occurred_ms > r->max_event_ms)
        r->max_event_ms = ev->occurred_ms;
    switch (ev->kind) {
    case EVENT_HEARTBEAT:
        if (ev->occurred_ms > r->last_heartbeat_ms)
            r->last_heartbeat_ms = ev->occurred_ms;
        alive(r, ev, s, now);
        break;
    case EVENT_STATUS: {
        const char *st = ev->vendor_status ? ev->vendor_status : "";
        alive(r, ev, s, now);
        if (!strcasecmp(st, "fault") || !strcasecmp(st, "faulted") || !strcasecmp(st, "error"))
            r->status = ROBOT_FAULTED;
        else if (!strcasecmp(st, "offline") || !strcasecmp(st, "shutdown"))
            r->status = ROBOT_OFFLINE;
        else if (!strcasecmp(st, "rebooting") || !strcasecmp(st, "booting"))
            r->status = ROBOT_REBOOTING;
        break;
    }
    case EVENT_FAULT:
        r->last_seen_ms = now;
        if (ev->occurred_ms > r->last_alive_ms)
            r->last_alive_ms = ev->occurred_ms;
        if (r->status != ROBOT_REBOOTING || !rules_in_progress(r, s, now))
            r->status = ROBOT_FAULTED;
        fault(r, ev, s, now, req);
        break;
    case EVENT_BOOTED:
        r->command_active = 0;
        r->reboot_since_ms = 0;
        r->status = ROBOT_UNKNOWN; /* alive() decides from here */
        alive(r, ev, s, now);
        break;
    default:
        break; /* command.ack/result: reboot-command turns them into command status */
    }
    prune_faults(r, s);
}

int rules_apply_command_status(struct robot *r, const char *state, int64_t now)
{
    static const char *const active[] = {"requested", "scheduled", "queued", "dispatched",
                                         "acknowledged"};
    static const char *const ended[] = {"succeeded", "failed", "timed_out", "cancelled",
                                        "rejected"};
    if (!state)
        return -EINVAL;
    for (size_t i = 0; i < sizeof(active) / sizeof(active[0]); i++) {
        if (strcmp(state, active[i]) == 0) {
            r->command_active = 1;
            if (r->reboot_since_ms == 0)
                r->reboot_since_ms = now;
            if (i >= 3)
                r->status = ROBOT_REBOOTING;
            return 0;
        }
    }
    for (size_t i = 0; i < sizeof(ended) / sizeof(ended[0]); i++) {
        if (strcmp(state, ended[i]) == 0) {
            r->command_active = 0;
            r->reboot_since_ms = 0;
            /* succeeded: rebooting until the robot is heard again */
            if (i > 0 && r->status == ROBOT_REBOOTING)
                r->status = ROBOT_UNKNOWN;
            return 0;
        }
    }
    return -EINVAL;
}

void rules_apply_policy(struct robot *r, bool auto_reboot, bool soft, bool hard)
{
    r->policy = (uint8_t)(POLICY_KNOWN | (auto_reboot ? POLICY_AUTO_REBOOT : 0) |
                          (soft ? POLICY_SOFT : 0) | (hard ? POLICY_HARD : 0));
}

int64_t rules_offline_deadline(const struct robot *r, const struct rules_settings *s)
{
    if (r->last_seen_ms == 0 || r->status == ROBOT_OFFLINE)
        return 0;
    int64_t due = r->last_seen_ms + s->offline_after_ms;
    return due > r->grace_ms ? due : r->grace_ms;
}

bool rules_fire_offline(struct robot *r, const struct rules_settings *s, int64_t now,
                        struct rules_request *req)
{
    if (r->status == ROBOT_OFFLINE)
        return false;
    if (r->status == ROBOT_REBOOTING && rules_in_progress(r, s, now))
        return false; /* silence is expected while it reboots */
    r->status = ROBOT_OFFLINE;
    request(r, REASON_OFFLINE, true, r->last_alive_ms, s, now, req);
    return true;
}

int64_t rules_grace_deadline(const struct robot *r, const struct rules_settings *s)
{
    if (r->reboot_since_ms <= 0 || r->command_active)
        return 0; /* a command's terminal status ends what it took over */
    return r->reboot_since_ms + s->reboot_grace_ms;
}

int64_t rules_next_deadline(const struct robot *r, const struct rules_settings *s)
{
    int64_t off = rules_offline_deadline(r, s), grace = rules_grace_deadline(r, s);
    if (off == 0 || (grace != 0 && grace < off))
        return grace;
    return off;
}

bool rules_expire_grace(struct robot *r, const struct rules_settings *s, int64_t now,
                        struct rules_request *req)
{
    int64_t due = rules_grace_deadline(r, s);
    if (due == 0 || now < due)
        return false;
    r->reboot_since_ms = 0;
    if (r->status == ROBOT_REBOOTING) {
        if (r->last_seen_ms > 0 && now - r->last_seen_ms < s->offline_after_ms)
            r->status = ROBOT_UNKNOWN; /* alive() decides at the next sign of life */
        else
            rules_fire_offline(r, s, now, req);
    }
    return true;
}
