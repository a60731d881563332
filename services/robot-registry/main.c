/*
 * robot-registry: keeps the robot list, vendor sources and their secrets.
 * Its business lives in registry.c (publishing, worker), robots.c (robots) and
 * sources_api.c (vendor sources); this file wires the shared runtime together:
 * config, clients, routes, run, shutdown.
 */
#include <stdio.h>

#include "log.h"
#include "outbox.h"
#include "registry.h"
#include "service.h"

int main(int argc, char **argv)
{
    static const struct service_def def = {
        .name = "robot-registry",
        .default_port = 8082,
        .keys = registry_config_keys,
        .on_delivery = outbox_on_delivery, /* the outbox relay is its only producer */
    };
    char err[256];
    struct registry *reg = NULL;
    struct service_def d = def;
    d.nkeys = registry_config_nkeys;

    struct service *s = service_new(&d, argc, argv);
    if (!s)
        return 2;
    int rc = service_open(s);
    if (rc == 0 && !(reg = registry_new(s, err, sizeof(err)))) {
        LOG_ERROR("cannot start: %s", err);
        fprintf(stderr, "robot-registry: %s\n", err);
        rc = 2;
    }
    if (rc == 0)
        rc = registry_register_routes(reg);
    if (rc == 0) {
        service_on_shutdown(s, registry_stop, reg);
        rc = service_run(s);
    }
    service_free(s);
    registry_free(reg);
    return rc == 0 ? 0 : rc == 2 ? 2 : 1;
}
