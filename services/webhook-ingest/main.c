/*
 * webhook-ingest: verifies vendor webhooks and accepts them into robot.events.v1.
 * Its business lives in the other files of this directory; this file wires the
 * shared runtime together: config, clients, routes, run, shutdown.
 */
#include "service.h"

int main(int argc, char **argv)
{
    static const struct service_def def = {
        .name = "webhook-ingest",
        .default_port = 8081,
    };
    struct service *s = service_new(&def, argc, argv);
    if (!s)
        return 2;
    int rc = service_open(s);
    if (rc == 0)
        rc = service_run(s);
    service_free(s);
    return rc == 0 ? 0 : 1;
}
