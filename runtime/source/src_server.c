/*
 * src_server.c — tlm-page-server's server: serves frozen guests' RAM to the destination's
 * tlm-uffd-server (docs/ARCHITECTURE.md; protocol in protocol/PROTOCOL.md).
 *
 * Single-threaded event loop (evloop.h) over: the TCP listening socket, one tlm_conn per destination
 * connection (src_session.c), the control socket (ctl.h), a signalfd for SIGTERM/SIGINT
 * (clean shutdown) and a 100 ms timerfd (PROGRESS).
 * Each iteration handles every ready event first (urgent demands are answered right
 * there), then gives each streaming bulk connection a bounded batch.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "ctl.h"
#include "json.h"
#include "live.h"
#include "log.h"
#include "src_server.h"
#include "src_session.h"
#include "util.h"

#define PROGRESS_NS (100 * 1000 * 1000)

/* ---- control commands ------------------------------------------------------------------ */

static struct tlm_src_region *region_by_id(struct tlm_ps *ps, const char *id)
{
	for (struct tlm_src_region *r = ps->regions; r; r = r->next)
		if (strcmp(r->id, id) == 0)
			return r;
	return NULL;
}

static int region_add(struct tlm_ps *ps, const char *spec, char *err, size_t errlen)
{
	struct tlm_src_region *r, **pp = &ps->regions;
	char id[TLM_PROTO_VMID_MAX + 2];
	int rc;

	snprintf(id, sizeof(id), "%.*s", (int)strcspn(spec, ","), spec);
	if (region_by_id(ps, id)) {
		snprintf(err, errlen, "region '%s' already exists", id);
		return -EEXIST;
	}
	rc = tlm_src_region_new(&r, spec, err, errlen);
	if (rc < 0)
		return rc;
	while (*pp)
		pp = &(*pp)->next;
	*pp = r;
	r->bulk_hold = ps->bulk_hold;
	r->policy = ps->presend.policy;
	log_info("%s: %s source, %llu pages, template %s", r->id, tlm_src_kind_name(r->kind),
		 (unsigned long long)r->page_count, r->tmpl ? r->tmpl_path : "none");
	return 0;
}

#define PS_READY_BACKLOG (256u << 10)   /* bulk bytes still on their way at "ready" */

/* Whether the orchestrator may stop the guest now, and why (presend.h). Once the policy
 * is satisfied the bulk queue must drain too: the fix map must not wait behind pre-sent
 * pages after the stop, nor the destination be busy holding them while QEMU loads. */
static bool stats_ready(const struct tlm_src_region *r, char *why, size_t len)
{
	uint64_t backlog;

	if (r->pre && r->pre->ready && r->phase == TLM_SRC_LIVE &&
	    (backlog = tlm_ps_bulk_backlog(r)) > PS_READY_BACKLOG) {
		snprintf(why, len, "%s; draining the bulk queue (%llu KiB)", r->pre->ready_why,
			 (unsigned long long)(backlog >> 10));
		return false;
	}
	if (r->pre) {
		snprintf(why, len, "%s", r->pre->ready ? r->pre->ready_why :
			 !r->pre->live ? "first pass" : !r->bulk ?
			 "first pass done; waiting for a destination's bulk session" :
			 r->pre->premap != TLM_PREMAP_SENT ? "sending the live map" :
			 "pre-sending");
		return r->pre->ready;
	}
	if (r->live_why[0] && !r->live) {
		snprintf(why, len, "no live phase (%s): post-copy", r->live_why);
		return true;
	}
	snprintf(why, len, "%s", r->live ? "live phase without pre-send state" :
		 "live not started");
	return r->live != NULL;
}

/* The live map, pre-sent DATA and the fix map (protocol version 3), in "live". */
static void stats_presend(struct tlm_json *j, const struct tlm_src_region *r)
{
	static const struct tlm_presend_stats none;
	const struct tlm_presend_stats *st = r->pre ? &r->pre->st : &none;
	char why[256];

	tlm_json_str(j, "policy", tlm_policy_name(r->policy));
	tlm_json_str(j, "premap", tlm_premap_name(r->pre ? r->pre->premap : TLM_PREMAP_NONE));
	tlm_json_obj_begin(j, "presend");
	tlm_json_u64(j, "round", st->round);
	tlm_json_u64(j, "sent", st->sent);
	tlm_json_u64(j, "resent", st->resent);
	tlm_json_u64(j, "left", st->left);
	tlm_json_double(j, "dirty_pps", st->dirty_pps);
	tlm_json_double(j, "send_pps", st->send_pps);
	tlm_json_obj_end(j);
	tlm_json_bool(j, "ready", stats_ready(r, why, sizeof(why)));
	tlm_json_str(j, "ready_why", why);
	tlm_json_u64(j, "presend_bytes", st->bytes);
	tlm_json_u64(j, "fix_runs", st->fix_runs);
	tlm_json_u64(j, "keep_pages", st->keep_pages);
	tlm_json_u64(j, "valid_at_freeze", st->valid);
	tlm_json_u64(j, "invalid_at_freeze", st->invalid);
}

static void stats_live(struct tlm_json *j, const struct tlm_src_region *r)
{
	struct tlm_live_stats st = { 0 };
	int state = 0;

	if (r->live)
		tlm_live_snapshot(r->live, &st, &state);
	tlm_json_obj_begin(j, "live");
	tlm_json_str(j, "method", r->live ? tlm_dirty_method_name(r->live->dirty.method) :
		     "none");
	tlm_json_str(j, "why", r->live_why);
	tlm_json_str(j, "state", tlm_live_state_name(state));
	tlm_json_bool(j, "pass_done", st.pass_ns && st.classified == r->page_count);
	tlm_json_u64(j, "classified", st.classified);
	tlm_json_u64(j, "rounds", st.rounds);
	tlm_json_u64(j, "dirty_last", st.dirty_last);
	tlm_json_u64(j, "redone", st.redone);
	tlm_json_double(j, "pass_ms", (double)st.pass_ns / 1e6);
	tlm_json_u64(j, "final_dirty", st.final_dirty);
	tlm_json_double(j, "final_ms", (double)st.final_ns / 1e6);
	stats_presend(j, r);
	tlm_json_obj_end(j);
}

static void stats_region(struct tlm_json *j, const struct tlm_src_region *r)
{
	const uint64_t *cnt = r->map.count;
	uint64_t wire = tlm_ps_wire_bytes(r), now = tlm_now_ns();
	char hex[33];

	tlm_json_obj_begin(j, NULL);
	tlm_json_str(j, "id", r->id);
	tlm_json_str(j, "state", tlm_src_phase_name(r->phase));
	tlm_json_bool(j, "bulk_held", r->bulk_hold);
	tlm_json_str(j, "source", tlm_src_kind_name(r->kind));
	if (r->kind == TLM_SRC_FILE) {
		tlm_json_str(j, "path", r->path);
		tlm_json_u64(j, "offset", r->offset);
	}
	if (r->pid) {
		tlm_json_i64(j, "pid", r->pid);
		tlm_json_u64(j, "addr", r->addr);
	}
	tlm_json_u64(j, "size", r->size);
	tlm_json_u64(j, "page_count", r->page_count);
	tlm_json_str(j, "template", r->tmpl ? r->tmpl_path : "");
	tlm_digest_hex(&r->digest, hex);
	tlm_json_str(j, "digest", r->tmpl ? hex : "");
	tlm_json_obj_begin(j, "pages");
	tlm_json_u64(j, "template", cnt[TLM_CLASS_TEMPLATE]);
	tlm_json_u64(j, "zero", cnt[TLM_CLASS_ZERO]);
	tlm_json_u64(j, "ref", cnt[TLM_CLASS_REF]);
	tlm_json_u64(j, "data", cnt[TLM_CLASS_DATA]);
	tlm_json_u64(j, "classified", r->map.added);
	tlm_json_u64(j, "known_from_pagemap", r->map.known_pages);
	/* zeros in holes of the RAM file (never written, or freed by the guest): not read */
	tlm_json_u64(j, "zero_holes", r->map.hole_pages);
	tlm_json_u64(j, "runs", r->map.nruns);
	tlm_json_obj_end(j);
	tlm_json_obj_begin(j, "bytes");
	tlm_json_u64(j, "payload", r->st.payload_bytes);
	/* Payload counts at queueing, wire bytes at writing: while frames wait behind a slow
	 * link (pre-sent pages) the difference is not the overhead yet; never below 0. */
	tlm_json_u64(j, "overhead", wire > r->st.payload_bytes ? wire - r->st.payload_bytes : 0);
	tlm_json_obj_end(j);
	tlm_json_u64(j, "bulk_rtt_us", tlm_ps_bulk_rtt_us(r));
	tlm_json_str(j, "bulk_pace", tlm_pace_state_str(r->st.bulk_pace_state));
	tlm_json_u64(j, "bulk_pace_bps", r->st.bulk_pace_bps);
	tlm_json_u64(j, "demand_requests", r->st.demand_requests);
	tlm_json_u64(j, "demand_pages", r->st.demand_pages);
	tlm_json_u64(j, "data_sent_bulk", r->st.data_sent_bulk);
	tlm_json_u64(j, "data_sent_urgent", r->st.data_sent_urgent);
	tlm_json_u64(j, "demand_on_bulk", r->st.demand_on_bulk);
	tlm_json_u64(j, "bulk_rounds", r->st.bulk_rounds);
	tlm_json_bool(j, "urgent_connected", r->urgent != NULL);
	tlm_json_bool(j, "bulk_connected", r->bulk != NULL);
	tlm_json_u64(j, "sessions_opened", r->st.sessions_opened);
	tlm_json_u64(j, "sessions_dropped", r->st.sessions_dropped);
	tlm_json_double(j, "elapsed_ms", r->st.freeze_ns ?
			(double)(now - r->st.freeze_ns) / 1e6 : 0.0);
	tlm_json_double(j, "classify_ms", (double)r->st.classify_ns / 1e6);
	tlm_json_double(j, "stream_ms", r->st.done_ns ?
			(double)(r->st.done_ns - r->st.freeze_ns) / 1e6 : 0.0);
	stats_live(j, r);
	if (r->phase == TLM_SRC_FAILED)
		tlm_json_str(j, "error", r->fail);
	tlm_json_obj_end(j);
}

static void cmd_stats(struct tlm_ps *ps, const char *id, struct tlm_sbuf *reply)
{
	struct tlm_json j;

	if (id && !region_by_id(ps, id)) {
		tlm_sbuf_printf(reply, "error: unknown region '%s'\n", id);
		return;
	}
	tlm_json_init(&j, reply);
	tlm_json_obj_begin(&j, NULL);
	tlm_json_arr_begin(&j, "regions");
	for (struct tlm_src_region *r = ps->regions; r; r = r->next)
		if (!id || strcmp(id, r->id) == 0)
			stats_region(&j, r);
	tlm_json_arr_end(&j);
	tlm_json_u64(&j, "cpu_us", tlm_cpu_us());
	tlm_json_obj_end(&j);
	tlm_sbuf_putc(reply, '\n');
}

/* How freeze got the class map, for the log. */
static const char *freeze_how(const struct tlm_src_region *r)
{
	static __thread char how[96];
	struct tlm_live_stats st;
	int state;

	if (!r->live)
		return "every page read after the stop";
	tlm_live_snapshot(r->live, &st, &state);
	snprintf(how, sizeof(how), "live, %llu pages written since their read",
		 (unsigned long long)st.final_dirty);
	return how;
}

/* The class map of a region that has just been frozen: from the live phase (the pages
 * written since their read redone) when it ran, else every page now. */
static int freeze_classify(struct tlm_src_region *r, char *err, size_t errlen)
{
	uint64_t t0 = tlm_now_ns();
	int rc;

	if (!tlm_live_usable(r->live))
		return tlm_src_classify(r, err, errlen);
	rc = tlm_live_finish(r, err, errlen);
	if (rc == 0 && tlm_presend_freeze(r) < 0)
		log_warn("%s: no memory for the fix map: the whole map goes", r->id);
	r->st.classify_ns = tlm_now_ns() - t0;
	if (rc == 0)
		return 0;
	log_warn("%s; the live result is discarded, classifying every page", err);
	return tlm_src_classify(r, err, errlen);
}

/* The ID|all argument of a control command: true with *only = the region (NULL: all),
 * false after an error reply. */
static bool regions_arg(struct tlm_ps *ps, const char *cmd, const char *id,
			struct tlm_src_region **only, struct tlm_sbuf *reply)
{
	*only = NULL;
	if (id && (strcmp(id, "all") == 0 || (*only = region_by_id(ps, id))))
		return true;
	tlm_sbuf_printf(reply, "error: %s needs a known region id or 'all' (got '%s')\n", cmd,
			id ? id : "");
	return false;
}

/* Freeze one region: classify it now and start serving. 0 or -errno (err filled). */
static int freeze_one(struct tlm_ps *ps, struct tlm_src_region *r, struct tlm_sbuf *ok,
		      char *err, size_t errlen)
{
	const uint64_t *c = r->map.count;
	int rc;

	if (r->phase != TLM_SRC_CONFIGURED && r->phase != TLM_SRC_LIVE &&
	    r->phase != TLM_SRC_FAILED) {
		tlm_sbuf_printf(ok, "%s%s: already frozen (%s)", ok->len ? "; " : "", r->id,
				tlm_src_phase_name(r->phase));
		return 0;
	}
	r->phase = TLM_SRC_FROZEN;
	r->st.freeze_ns = tlm_now_ns();
	rc = freeze_classify(r, err, errlen);
	if (rc < 0) {
		r->phase = TLM_SRC_FAILED;
		snprintf(r->fail, sizeof(r->fail), "%.150s", err);
		log_error("%s", err);
		tlm_ps_region_ready(ps, r);
		return rc;
	}
	r->phase = TLM_SRC_CLASSIFIED;
	log_info("%s: frozen, %llu pages classified in %.1f ms (%s): %llu template, %llu zero, "
		 "%llu ref, %llu data, %zu runs (%llu known from pagemap, %llu in holes)", r->id,
		 (unsigned long long)r->page_count, (double)r->st.classify_ns / 1e6,
		 freeze_how(r),
		 (unsigned long long)c[TLM_CLASS_TEMPLATE], (unsigned long long)c[TLM_CLASS_ZERO],
		 (unsigned long long)c[TLM_CLASS_REF], (unsigned long long)c[TLM_CLASS_DATA],
		 r->map.nruns, (unsigned long long)r->map.known_pages,
		 (unsigned long long)r->map.hole_pages);
	tlm_sbuf_printf(ok, "%s%s: %llu template, %llu zero, %llu ref, %llu data in %.1f ms",
			ok->len ? "; " : "", r->id, (unsigned long long)c[TLM_CLASS_TEMPLATE],
			(unsigned long long)c[TLM_CLASS_ZERO], (unsigned long long)c[TLM_CLASS_REF],
			(unsigned long long)c[TLM_CLASS_DATA], (double)r->st.classify_ns / 1e6);
	tlm_ps_region_ready(ps, r);
	return 0;
}

static void cmd_freeze(struct tlm_ps *ps, const char *id, struct tlm_sbuf *reply)
{
	struct tlm_src_region *only = NULL;
	struct tlm_sbuf ok;
	char err[256];
	int failed = 0;

	if (!regions_arg(ps, "freeze", id, &only, reply))
		return;
	tlm_sbuf_init(&ok);
	for (struct tlm_src_region *r = ps->regions; r; r = r->next) {
		if (only && r != only)
			continue;
		if (freeze_one(ps, r, &ok, err, sizeof(err)) < 0 && !failed++)
			tlm_sbuf_printf(reply, "error: %s\n", err);
	}
	if (!failed)
		tlm_sbuf_printf(reply, "ok frozen %s\n", ok.len ? ok.p : "(no regions)");
	tlm_sbuf_fini(&ok);
}

/* Start the live phase of one region; one reply line either way. */
static int live_one(struct tlm_ps *ps, struct tlm_src_region *r, int policy,
		    struct tlm_sbuf *out)
{
	struct tlm_presend_cfg cfg = ps->presend;
	int rc;

	r->policy = cfg.policy = policy;
	rc = tlm_live_start(r, ps->live_rate, r->live_why, sizeof(r->live_why));
	/* Without it the destination gets the whole map after freeze, as before. */
	if (rc == 1 && tlm_presend_new(r, &cfg) < 0)
		log_warn("%s: no memory to pre-send: no live map", r->id);

	if (rc < 0) {
		tlm_sbuf_printf(out, "error: %s\n", r->live_why);
		return rc;
	}
	if (rc == 0) {
		log_info("%s: no live phase, pages are classified after the stop: %s", r->id,
			 r->live_why);
		tlm_sbuf_printf(out, "%s post-copy: no dirty tracking (%s)\n", r->id,
				r->live_why);
	} else {
		log_info("%s: live phase: classifying while the guest runs, dirty tracking by "
			 "%s (%s)", r->id, tlm_dirty_method_name(r->live->dirty.method),
			 r->live_why);
		tlm_sbuf_printf(out, "%s live: %s (%s), policy %s\n", r->id,
				tlm_dirty_method_name(r->live->dirty.method), r->live_why,
				tlm_policy_name(policy));
	}
	return 0;
}

/* `live ID|all [post|hybrid|auto]`: classify while the guest runs (regions in phase
 * configured), with this switch policy (default: --policy). */
static void cmd_live(struct tlm_ps *ps, const char *id, const char *pol,
		     struct tlm_sbuf *reply)
{
	struct tlm_src_region *only = NULL;
	struct tlm_sbuf lines;
	int failed = 0, policy = pol ? tlm_policy_parse(pol) : ps->presend.policy;

	if (policy < 0) {
		tlm_sbuf_printf(reply, "error: live: unknown policy '%s' (post, hybrid, auto)\n",
				pol);
		return;
	}
	if (!regions_arg(ps, "live", id, &only, reply))
		return;
	tlm_sbuf_init(&lines);
	for (struct tlm_src_region *r = ps->regions; r; r = r->next) {
		if ((only && r != only) || (!only && r->phase != TLM_SRC_CONFIGURED))
			continue;
		failed |= live_one(ps, r, policy, &lines) < 0;
	}
	/* An error first: the control client reads a leading "error:" as failure. */
	if (failed)
		tlm_sbuf_printf(reply, "error: live: %s", lines.len ? lines.p : "\n");
	else
		tlm_sbuf_printf(reply, "%s", lines.len ? lines.p : "ok no region to start\n");
	tlm_sbuf_fini(&lines);
}

/* `bulk-hold ID|all` / `bulk-release ID|all`: hold a region's DATA stream after freeze
 * (the class map still goes, demands are answered) or let it start now. With 'all' the
 * choice also applies to regions added later. */
static void cmd_bulk(struct tlm_ps *ps, const char *id, bool hold, struct tlm_sbuf *reply)
{
	struct tlm_src_region *only = NULL;

	if (!regions_arg(ps, hold ? "bulk-hold" : "bulk-release", id, &only, reply))
		return;
	for (struct tlm_src_region *r = ps->regions; r; r = r->next) {
		if (only && r != only)
			continue;
		r->bulk_hold = hold;
		if (!hold && r->bulk)
			tlm_ps_bulk_pump(r->bulk);
	}
	if (!only)
		ps->bulk_hold = hold;
	tlm_sbuf_printf(reply, "ok %s %s\n", hold ? "holding" : "released", id);
}

static int ctl_handler(void *ctx, char *line, struct tlm_sbuf *reply)
{
	struct tlm_ps *ps = ctx;
	char *save = NULL, *cmd = strtok_r(line, " \t\r\n", &save);
	char *arg = strtok_r(NULL, " \t\r\n", &save), err[512];
	char *arg2 = arg ? strtok_r(NULL, " \t\r\n", &save) : NULL;

	if (!cmd) {
		tlm_sbuf_printf(reply, "error: empty command\n");
	} else if (strcmp(cmd, "stats") == 0) {
		cmd_stats(ps, arg, reply);
	} else if (strcmp(cmd, "freeze") == 0) {
		cmd_freeze(ps, arg, reply);
	} else if (strcmp(cmd, "live") == 0) {
		cmd_live(ps, arg, arg2, reply);
	} else if (strcmp(cmd, "bulk-hold") == 0 || strcmp(cmd, "bulk-release") == 0) {
		cmd_bulk(ps, arg, cmd[5] == 'h', reply);
	} else if (strcmp(cmd, "add-region") == 0) {
		if (!arg)
			tlm_sbuf_printf(reply, "error: add-region needs a SPEC\n");
		else if (region_add(ps, arg, err, sizeof(err)) < 0)
			tlm_sbuf_printf(reply, "error: %s\n", err);
		else
			tlm_sbuf_printf(reply, "ok added %.*s\n", (int)strcspn(arg, ","), arg);
	} else if (strcmp(cmd, "shutdown") == 0) {
		ps->stop = true;
		tlm_sbuf_printf(reply, "ok shutting down\n");
	} else {
		tlm_sbuf_printf(reply, "error: unknown command '%s' (stats [ID] | live ID|all [post|hybrid|auto] | freeze ID|all | "
				"bulk-hold|bulk-release ID|all | add-region SPEC | shutdown)\n", cmd);
	}
	return reply->len && reply->p[0] == 'e' ? -1 : 0;
}

/* ---- event loop ------------------------------------------------------------------------ */

static void on_signal(struct tlm_evsrc *src, uint32_t events)
{
	struct tlm_ps *ps = TLM_EVSRC_OWNER(src, struct tlm_ps, src_sig);
	struct signalfd_siginfo si;

	if (read(ps->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		log_info("signal %u: shutting down", si.ssi_signo);
		ps->stop = true;
	}
}

static void on_timer(struct tlm_evsrc *src, uint32_t events)
{
	struct tlm_ps *ps = TLM_EVSRC_OWNER(src, struct tlm_ps, src_timer);
	uint64_t ticks;

	if (read(ps->tfd, &ticks, sizeof(ticks)) == (ssize_t)sizeof(ticks))
		tlm_ps_progress_tick(ps);
}

static void on_listen(struct tlm_evsrc *src, uint32_t events)
{
	tlm_ps_accept(TLM_EVSRC_OWNER(src, struct tlm_ps, src_listen));
}

static void on_ctl(struct tlm_evsrc *src, uint32_t events)
{
	struct tlm_ps *ps = TLM_EVSRC_OWNER(src, struct tlm_ps, src_ctl);

	tlm_ctl_serve_one(ps->ctlfd, ctl_handler, ps);
}

static void on_handshake(struct tlm_evsrc *src, uint32_t events)
{
	tlm_ps_handshakes_done(TLM_EVSRC_OWNER(src, struct tlm_ps, src_hs));
}

int tlm_ps_run(struct tlm_ps *ps)
{
	while (!ps->stop) {
		int n = tlm_evloop_run_once(&ps->loop, -1);

		if (n < 0) {
			log_error("epoll_wait: %s", strerror(-n));
			return n;
		}
		/* Bulk after every urgent request of this round has been answered. */
		for (struct tlm_src_region *r = ps->regions; r; r = r->next)
			if (r->bulk)
				tlm_ps_bulk_pump(r->bulk);
		tlm_ps_reap(ps, false);
	}
	return 0;
}

/* ---- setup ----------------------------------------------------------------------------- */

static int watch(struct tlm_ps *ps, struct tlm_evsrc *src, int fd, tlm_evsrc_fn fn)
{
	*src = (struct tlm_evsrc){ .fd = fd, .on_event = fn, .prio = PS_PRIO_OTHER };
	return tlm_evloop_add(&ps->loop, src, EPOLLIN);
}

static int setup_fds(struct tlm_ps *ps)
{
	struct itimerspec its = { .it_interval = { 0, PROGRESS_NS }, .it_value = { 0, PROGRESS_NS } };

	ps->sigfd = tlm_term_signalfd(SFD_NONBLOCK);
	ps->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (tlm_evloop_init(&ps->loop) < 0 || ps->sigfd < 0 || ps->tfd < 0 ||
	    pipe2(ps->hs_pipe, O_CLOEXEC | O_NONBLOCK) < 0 ||
	    timerfd_settime(ps->tfd, 0, &its, NULL) < 0)
		return -errno;
	if (tlm_set_nonblock(ps->lfd, 1) < 0)
		return -errno;
	if (watch(ps, &ps->src_listen, ps->lfd, on_listen) < 0 ||
	    watch(ps, &ps->src_ctl, ps->ctlfd, on_ctl) < 0 ||
	    watch(ps, &ps->src_sig, ps->sigfd, on_signal) < 0 ||
	    watch(ps, &ps->src_timer, ps->tfd, on_timer) < 0 ||
	    watch(ps, &ps->src_hs, ps->hs_pipe[0], on_handshake) < 0)
		return -errno;
	return 0;
}

/* "listening on HOST:PORT" (log) and "port N" on stdout for the chosen port. */
void tlm_ps_announce(struct tlm_ps *ps)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[NI_MAXHOST], serv[NI_MAXSERV];

	if (getsockname(ps->lfd, (struct sockaddr *)&ss, &len) < 0 ||
	    getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), serv, sizeof(serv),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		log_warn("cannot tell the listening address: %s", strerror(errno));
		return;
	}
	log_info("listening on %s%s%s:%s", strchr(host, ':') ? "[" : "", host,
		 strchr(host, ':') ? "]" : "", serv);
	printf("port %s\n", serv);
	fflush(stdout);
}

void tlm_ps_cleanup(struct tlm_ps *ps)
{
	tlm_ps_handshakes_drain(ps);
	tlm_ps_reap(ps, true);
	while (ps->regions) {
		struct tlm_src_region *r = ps->regions;

		ps->regions = r->next;
		tlm_live_free(r->live);   /* its worker reads the region */
		tlm_presend_free(r->pre);
		tlm_src_region_free(r);
	}
	if (ps->ctlfd >= 0) {
		close(ps->ctlfd);
		unlink(ps->ctl_path);
	}
	if (ps->lfd >= 0)
		close(ps->lfd);
	if (ps->sigfd >= 0)
		close(ps->sigfd);
	if (ps->tfd >= 0)
		close(ps->tfd);
	tlm_evloop_fini(&ps->loop);
	tlm_tls_free(ps->tls);              /* after the handshake threads: drained above */
	for (int i = 0; i < 2; i++)
		if (ps->hs_pipe[i] >= 0)
			close(ps->hs_pipe[i]);
	memset(&ps->key, 0, sizeof(ps->key));
}

int tlm_ps_start(struct tlm_ps *ps, const struct tlm_ps_config *o)
{
	char err[512], kerr[400];
	int rc;

	ps->bulk_hold_ns = o->bulk_delay_ms * 1000000ull;
	ps->bulk_hold = o->bulk_hold;
	ps->bulk_ahead_max = o->bulk_ahead;
	ps->pace = o->pace;
	ps->bulk_lowat = (int)o->bulk_lowat;
	ps->live_rate = o->live_rate;
	ps->presend = o->presend;
	rc = tlm_key_load(o->key, &ps->key, kerr, sizeof(kerr));
	if (rc < 0)
		snprintf(err, sizeof(err), "--key: %s", kerr);
	if (rc == 0 && o->tls && (rc = tlm_tls_new(&ps->tls, true, &ps->key, err,
						     sizeof(err))) == 0)
		log_info("tls: TLS 1.3 with the pre-shared key on both channels; %s",
			 tlm_tls_kernel());
	for (int i = 0; rc == 0 && i < o->nregions; i++)
		rc = region_add(ps, o->regions[i], err, sizeof(err));
	if (rc == 0 && (ps->lfd = tlm_tcp_listen(o->listen, err, sizeof(err))) < 0)
		rc = ps->lfd;
	if (rc == 0 && (ps->ctlfd = tlm_ctl_listen(o->ctl, err, sizeof(err))) < 0)
		rc = ps->ctlfd;
	if (rc == 0)
		ps->ctl_path = o->ctl;
	if (rc == 0 && (rc = setup_fds(ps)) < 0)
		snprintf(err, sizeof(err), "event loop setup: %s", strerror(-rc));
	if (rc < 0)
		log_error("%s", err);
	return rc;
}

