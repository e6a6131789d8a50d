/*
 * ctl.h — the daemons' control socket: a unix stream socket (0600, in a directory only we
 * can write), one command line per connection, one reply, then close. Both ends check the
 * other with SO_PEERCRED: root or the same uid only.
 *
 * Commands (each daemon documents the ones it takes in its --help):
 *   stats [VMID]      JSON stats of every region (or one)
 *   freeze VMID|all   (page server) the source is stopped: start serving
 *   arm VMID          (uffd server) ask the glue to register and hand over the uffd
 *   shutdown          clean exit, as on SIGTERM
 * Replies: JSON for stats, otherwise "ok ..." or "error: reason", newline-terminated.
 */
#ifndef TLM_CTL_H
#define TLM_CTL_H

#include <stddef.h>

struct tlm_sbuf;

/* Handler: fill reply; the return value is ignored beyond logging (<0 = error). */
typedef int (*tlm_ctl_fn)(void *ctx, char *line, struct tlm_sbuf *reply);

int tlm_ctl_listen(const char *path, char *err, size_t errlen);       /* fd or -errno */
/* Call when the listening fd is readable: accept one client, read one line (bounded, 1 s
 * timeout), run fn, send the reply, close. Never blocks the caller for more than ~1 s. */
void tlm_ctl_serve_one(int lfd, tlm_ctl_fn fn, void *ctx);
/* Client side (tlmctl, tests): send a command and collect the reply. 0 or -errno. */
int tlm_ctl_request(const char *path, const char *cmd, struct tlm_sbuf *reply, int timeout_ms);

#endif
