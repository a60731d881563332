/*
 * Process lifecycle: SIGTERM and SIGINT only set a flag (the handler is
 * async-signal-safe); the service's loops poll it and shut down in order.
 * SIGPIPE is ignored so a closed socket is an error code, not a death.
 */
#ifndef LIFECYCLE_H
#define LIFECYCLE_H

#include <stdbool.h>

/* Installs the handlers; call once from main before starting threads. */
int lifecycle_install(void);
/* True once SIGTERM/SIGINT arrived or lifecycle_request_stop was called. */
bool lifecycle_stopping(void);
/* Asks the process to stop (used by fatal errors in worker threads and by tests). */
void lifecycle_request_stop(void);
/* Blocks until stopping or timeout_ms passed; returns lifecycle_stopping(). */
bool lifecycle_wait(int timeout_ms);

#endif
