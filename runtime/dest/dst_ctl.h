/*
 * dst_ctl.h — tlm-uffd-server's control commands (the control socket, ctl.h):
 *   stats [ID]              JSON stats of every region, or of one
 *   arm ID                  ask the guest's glue to register the region and send the uffd
 *   resume ID [HOST:PORT]   a region paused by the outage limit connects again
 *   shutdown                clean exit, as on SIGTERM
 */
#ifndef TLM_DST_CTL_H
#define TLM_DST_CTL_H

struct tlm_sbuf;

#define DST_CTL_CMDS "stats [ID] | arm ID | resume ID [HOST:PORT] | shutdown"

/* A tlm_ctl_fn: ctx is the struct dst_server. */
int dst_ctl_command(void *ctx, char *line, struct tlm_sbuf *reply);

#endif /* TLM_DST_CTL_H */
