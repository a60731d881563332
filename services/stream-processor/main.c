/*
 * stream-processor: derives per-robot state and reboot requests from the event
 * stream with exactly-once transactions. Its business lives in processor.c
 * (Kafka, transactions, rebalances, Redis mirror, admin HTTP), rules.c (the
 * rules) and state.c (the per-robot records); this file wires the shared
 * runtime together: config, clients, routes, run, shutdown.
 */
#include <malloc.h>
#include <stdio.h>

#include "log.h"
#include "processor.h"
#include "service.h"

int main(int argc, char **argv)
{
    static const struct service_def def = {
        .name = "stream-processor",
        .default_port = 8085,
        .keys = processor_config_keys,
    };
    char err[256] = "";
    struct processor *sp = NULL;
    struct service_def d = def;
    d.nkeys = processor_config_nkeys;
    /*
     * One malloc arena, not one per thread: the processing and committer
     * threads allocate what librdkafka's threads free (and the reverse), and
     * per-thread arenas keep that memory apart: 10-15 MiB more peak RSS at 100k
     * robots, for no measurable speed.
     */
    mallopt(M_ARENA_MAX, 1);

    struct service *s = service_new(&d, argc, argv);
    if (!s)
        return 2;
    int rc = service_open(s);
    if (rc == 0 && !(sp = processor_new(s, err, sizeof(err)))) {
        LOG_ERROR("cannot start: %s", err);
        fprintf(stderr, "stream-processor: %s\n", err);
        rc = 2;
    }
    if (rc == 0)
        rc = processor_register_routes(sp);
    if (rc == 0)
        rc = service_on_reload(s, processor_reload, sp);
    if (rc == 0)
        rc = processor_start(sp);
    if (rc == 0) {
        service_on_shutdown(s, processor_stop, sp);
        rc = service_run(s);
    }
    service_free(s);
    if (processor_failed(sp))
        rc = 1;
    processor_free(sp);
    return rc == 0 ? 0 : rc == 2 ? 2 : 1;
}
