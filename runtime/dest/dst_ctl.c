/*
 * dst_ctl.c — tlm-uffd-server's control commands (dst_ctl.h): one line in, one reply out
 * (JSON for stats, otherwise "ok ..." or "error: reason").
 */
#include "dst_ctl.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "dst_report.h"
#include "dst_server.h"
#include "json.h"
#include "log.h"
#include "util.h"

static void ctl_stats(struct dst_server *s, const char *id, struct tlm_sbuf *reply)
{
	struct tlm_json j;
	bool found = false;

	for (struct dst_region *r = s->regions; r && id; r = r->next)
		found |= !r->dead && strcmp(r->id, id) == 0;
	if (id && !found) {
		tlm_sbuf_printf(reply, "error: no region '%s'\n", id);
		return;
	}
	tlm_json_init(&j, reply);
	tlm_json_obj_begin(&j, NULL);
	tlm_json_arr_begin(&j, "regions");
	for (struct dst_region *r = s->regions; r; r = r->next)
		if (!r->dead && (!id || strcmp(r->id, id) == 0))
			dst_region_stats_json(r, &j);
	tlm_json_arr_end(&j);
	tlm_json_str(&j, "net_io", dst_net_io_name(s->peer.net_io));
	tlm_json_u64(&j, "cpu_us", tlm_cpu_us());
	tlm_json_obj_end(&j);
	tlm_sbuf_putc(reply, '\n');
}

static int ctl_arm(struct dst_server *s, const char *id, struct tlm_sbuf *reply)
{
	struct dst_region *r = id ? dst_region_find(s->regions, id) : NULL;

	if (!id) {
		tlm_sbuf_printf(reply, "error: usage: arm ID\n");
		return -EINVAL;
	}
	if (!r) {
		tlm_sbuf_printf(reply, "error: no region '%s'\n", id);
		return -ENOENT;
	}
	if (r->phase != DST_WAITING_UFFD || !r->glue) {
		tlm_sbuf_printf(reply, "error: %s is not waiting to be armed (phase %s)\n", id,
				dst_phase_name(r->phase));
		return -EINVAL;
	}
	dst_region_notify_glue(r, TLM_LOCAL_ARM, NULL);
	r->arm_sent = true;
	log_info("%s: ARM sent to pid %d", r->id, (int)r->glue->pid);
	tlm_sbuf_printf(reply, "ok arm sent to %s (pid %d)\n", id, (int)r->glue->pid);
	return 0;
}

/* resume ID [HOST:PORT]: a region paused by the outage limit connects again. */
static int ctl_resume(struct dst_server *s, const char *id, const char *source,
		      struct tlm_sbuf *reply)
{
	struct dst_region *r = id ? dst_region_find(s->regions, id) : NULL;

	if (!id) {
		tlm_sbuf_printf(reply, "error: usage: resume ID [HOST:PORT]\n");
		return -EINVAL;
	}
	if (!r || r->dead) {
		tlm_sbuf_printf(reply, "error: no region '%s'\n", id);
		return -ENOENT;
	}
	if (source && (!strrchr(source, ':') || strrchr(source, ':') == source ||
		       strlen(source) >= sizeof(r->source))) {
		tlm_sbuf_printf(reply, "error: resume: '%s' is not HOST:PORT\n", source);
		return -EINVAL;
	}
	if (!dst_region_active(r) || dst_peer_resume(r, source) < 0) {
		tlm_sbuf_printf(reply, "error: %s is not paused (phase %s)\n", id,
				dst_region_phase_name(r));
		return -EINVAL;
	}
	tlm_sbuf_printf(reply, "ok resuming %s from %s\n", id, r->source);
	return 0;
}

int dst_ctl_command(void *ctx, char *line, struct tlm_sbuf *reply)
{
	struct dst_server *s = ctx;
	char *save = NULL, *cmd = strtok_r(line, " \t", &save);
	char *arg = cmd ? strtok_r(NULL, " \t", &save) : NULL;
	char *extra = arg ? strtok_r(NULL, " \t", &save) : NULL;

	if (!cmd) {
		tlm_sbuf_printf(reply, "error: empty command (%s)\n", DST_CTL_CMDS);
		return -EINVAL;
	}
	if (strcmp(cmd, "resume") == 0 && !(extra && strtok_r(NULL, " \t", &save)))
		return ctl_resume(s, arg, extra, reply);
	if (extra) {
		tlm_sbuf_printf(reply, "error: %s: unexpected argument '%s'\n", cmd, extra);
		return -EINVAL;
	}
	if (strcmp(cmd, "stats") == 0) {
		ctl_stats(s, arg, reply);
		return 0;
	}
	if (strcmp(cmd, "arm") == 0)
		return ctl_arm(s, arg, reply);
	if (strcmp(cmd, "shutdown") == 0 && !arg) {
		log_info("shutdown requested on the control socket");
		s->stop = true;
		tlm_sbuf_printf(reply, "ok shutting down\n");
		return 0;
	}
	tlm_sbuf_printf(reply, "error: unknown command '%s' (%s)\n", cmd, DST_CTL_CMDS);
	return -EINVAL;
}

/* ---- event loop ------------------------------------------------------------------------------- */
