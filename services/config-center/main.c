/*
 * config-center: serves versioned, hot-reloadable configuration.
 * Its business lives in api.c (the /v1 API), store.c (Redis), doc.c
 * (documents, secrets, diff) and watch.c (long polls); this file wires the
 * shared runtime together: config, clients, routes, run, shutdown.
 */
#include <stdio.h>

#include "api.h"
#include "log.h"
#include "service.h"
#include "watch.h"

static void tick(void *ud)
{
    watch_tick(ud);
}

static void stop(void *ud)
{
    watch_stop(ud);
}

int main(int argc, char **argv)
{
    static const struct service_def def = {
        .name = "config-center",
        .default_port = 8084,
        .on_delivery = api_on_delivery,
    };
    char err[256];
    struct watch *w = NULL;
    struct api *a = NULL;

    struct service *s = service_new(&def, argc, argv);
    if (!s)
        return 2;
    int rc = service_open(s);
    if (rc == 0 &&
        (!(w = watch_new(s, err, sizeof(err))) || !(a = api_new(s, w, err, sizeof(err))))) {
        LOG_ERROR("cannot start: %s", err);
        fprintf(stderr, "config-center: %s\n", err);
        rc = 2;
    }
    if (rc == 0)
        rc = api_register_routes(a);
    if (rc == 0) {
        service_on_tick(s, tick, w);
        service_on_shutdown(s, stop, w);
        rc = service_run(s);
    }
    if (rc == 2)
        watch_stop(w);
    service_free(s);
    api_free(a);
    watch_free(w);
    return rc == 0 ? 0 : rc == 2 ? 2 : 1;
}
