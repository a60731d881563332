/*
 * webhook-ingest: verifies vendor webhooks and accepts them into robot.events.v1.
 * Its business lives in ingest.c (the request), verify.c (signatures) and
 * events.c (body validation); this file wires the shared runtime together.
 */
#include <stdio.h>

#include "http_server.h"
#include "ingest.h"
#include "log.h"
#include "service.h"

int main(int argc, char **argv)
{
    static const struct service_def def = {
        .name = "webhook-ingest",
        .default_port = 8081,
        .keys = ingest_config_keys,
        .on_delivery = ingest_on_delivery,
        .producer_defaults = ingest_producer_defaults,
    };
    char err[256];
    struct ingest *in = NULL;
    struct service_def d = def;
    d.nkeys = ingest_config_nkeys;
    d.nproducer_defaults = ingest_producer_ndefaults;

    struct service *s = service_new(&d, argc, argv);
    if (!s)
        return 2;
    int rc = service_open(s);
    if (rc == 0 && !(in = ingest_new(s, err, sizeof(err)))) {
        LOG_ERROR("cannot start: %s", err);
        fprintf(stderr, "webhook-ingest: %s\n", err);
        rc = 2;
    }
    if (rc == 0)
        rc = ingest_register_routes(in);
    if (rc == 0) {
        service_on_tick(s, ingest_tick, in);
        service_on_shutdown(s, ingest_stop, in);
        rc = service_run(s);
    }
    service_free(s);
    ingest_free(in);
    return rc == 0 ? 0 : rc == 2 ? 2 : 1;
}
