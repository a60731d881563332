/*
 * reboot-command: decides, schedules and dispatches robot reboots.
 * Its business lives in the other files of this directory (see reboot.h); this
 * file wires the shared runtime together: config, clients, routes, run, shutdown.
 */
#include <stdio.h>

#include "log.h"
#include "reboot.h"
#include "service.h"

int main(int argc, char **argv)
{
    static const struct service_def def = {
        .name = "reboot-command",
        .default_port = 8083,
        .keys = reboot_config_keys,
        .on_delivery = outbox_on_delivery, /* every opaque is a struct outbox_delivery */
        .producer_defaults = reboot_producer_defaults,
    };
    char err[256];
    struct reboot *rb = NULL;
    struct service_def d = def;
    d.nkeys = reboot_config_nkeys;
    d.nproducer_defaults = reboot_producer_ndefaults;

    struct service *s = service_new(&d, argc, argv);
    if (!s)
        return 2;
    int rc = service_open(s);
    if (rc == 0 &&
        (!(rb = reboot_new(s, err, sizeof(err))) || reboot_start(rb, err, sizeof(err)))) {
        LOG_ERROR("cannot start: %s", err);
        fprintf(stderr, "reboot-command: %s\n", err);
        rc = 2;
    }
    if (rc == 0)
        rc = reboot_register_routes(rb);
    if (rc == 0) {
        service_on_shutdown(s, reboot_stop, rb);
        rc = service_run(s);
    } else if (rb) {
        reboot_stop(rb);
    }
    service_free(s);
    reboot_free(rb);
    return rc == 0 ? 0 : rc == 2 ? 2 : 1;
}
