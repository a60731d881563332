/*
 * The rules that turn one robot's events into its derived state and into
 * automatic reboot requests. Pure functions over a struct robot: no Kafka, no
 * locks, no clock of their own (now is passed in), so replaying the same input
 * over the same saved state gives the same state and the same request ids.
 *
 *   offline     silent for offline_after_ms -> status offline, request hard/offline
 *   fault storm >= fault_threshold faults whose occurred_at span <= fault_window_ms
 *               -> request soft/fault_storm (faults later than allowed_lateness_ms
 *               behind the robot's newest event are ignored)
 *   in progress a non-terminal command status, or within reboot_grace_ms of a
 *               request: no new automatic request
 *   grace over  reboot_grace_ms after a request that no command status took
 *               over and no booted event ended: the reboot is over; a robot
 *               still "rebooting" becomes unknown if it was heard within
 *               offline_after_ms, else offline (with an offline request)
 */
#ifndef SP_RULES_H
#define SP_RULES_H

#include <stdbool.h>
#include <stdint.h>

#include "state.h"

struct rules_settings {
    int64_t offline_after_ms;
    int64_t fault_window_ms;
    int64_t allowed_lateness_ms;
    int64_t reboot_grace_ms;
    int fault_threshold; /* 1..FAULT_SLOTS */
    bool default_auto_reboot;
};

enum event_kind {
    EVENT_HEARTBEAT,
    EVENT_STATUS,
    EVENT_FAULT,
    EVENT_BOOTED,
    EVENT_COMMAND_ACK,
    EVENT_COMMAND_RESULT,
    EVENT_OTHER,
    EVENT_KIND_COUNT
};

struct robot_event {
    enum event_kind kind;
    int64_t occurred_ms;
    uint64_t id_hash;          /* of the CloudEvent id; 0 = none */
    const char *vendor_status; /* robot.status: data.data.status, may be NULL */
};

/* A request the rules decided on, or why one was not made. */
struct rules_request {
    enum request_reason reason; /* REASON_NONE: no request */
    bool hard;
    int64_t trigger_ms;
    const char *suppressed; /* "policy" or "in_progress" when a trigger did not request */
    enum request_reason suppressed_reason;
};

enum rules_check { RULES_OK, RULES_DUPLICATE, RULES_LATE };

enum event_kind rules_event_kind(const char *type);
const char *rules_event_kind_name(enum event_kind k);
/* Whether ev should be applied at all (read-only). */
enum rules_check rules_check_event(const struct robot *r, const struct robot_event *ev,
                                   const struct rules_settings *s);
/* Applies a robot event; fills req when a reboot is requested. */
void rules_apply_event(struct robot *r, const struct robot_event *ev,
                       const struct rules_settings *s, int64_t now, struct rules_request *req);
/* Applies a command lifecycle state ("dispatched", "succeeded", ...). -EINVAL for an unknown one.
 */
int rules_apply_command_status(struct robot *r, const char *state, int64_t now);
/* Applies the registry's policy: auto_reboot and the modes it allows. */
void rules_apply_policy(struct robot *r, bool auto_reboot, bool soft, bool hard);
/* The wall-clock time the robot becomes offline if nothing is heard, 0 if no timer applies. */
int64_t rules_offline_deadline(const struct robot *r, const struct rules_settings *s);
/* The deadline passed: status offline and perhaps a request. False when nothing changed. */
bool rules_fire_offline(struct robot *r, const struct rules_settings *s, int64_t now,
                        struct rules_request *req);
/* When the reboot grace of r runs out (wall clock), 0 if no grace is running. */
int64_t rules_grace_deadline(const struct robot *r, const struct rules_settings *s);
/* The earliest of the offline and grace deadlines, 0 if neither applies. */
int64_t rules_next_deadline(const struct robot *r, const struct rules_settings *s);
/*
 * The grace deadline passed: ends the reboot and settles a "rebooting" status;
 * fills req when the robot, silent, becomes offline and may be rebooted again.
 * False when no grace had run out.
 */
bool rules_expire_grace(struct robot *r, const struct rules_settings *s, int64_t now,
                        struct rules_request *req);
bool rules_in_progress(const struct robot *r, const struct rules_settings *s, int64_t now);
int rules_faults_in_window(const struct robot *r, const struct rules_settings *s);

#endif
