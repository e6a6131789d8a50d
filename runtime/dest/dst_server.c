/*
 * dst_server.c — tlm-uffd-server's daemon (dst_server.h): glue connections and their
 * REGION / UFFD messages, the event loop and its housekeeping (signals, the tick),
 * setting up and closing down.
 */
#include "dst_server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "ctl.h"
#include "dst_ctl.h"
#include "dst_fault.h"
#include "dst_fetch.h"
#include "dst_report.h"
#include "log.h"
#include "util.h"

#define TICK_MS 100

/* ---- regions and glues ---------------------------------------------------------------------- */

static struct tlm_tmpl *find_tmpl(struct dst_server *s, const uint8_t digest[16])
{
	for (size_t i = 0; i < s->ntmpls; i++)
		if (memcmp(tlm_tmpl_digest(s->tmpls[i])->b, digest, 16) == 0)
			return s->tmpls[i];
	return NULL;
}

static bool digest_zero(const uint8_t d[16])
{
	static const uint8_t zero[16];

	return memcmp(d, zero, 16) == 0;
}

static void glue_send(struct dst_glue *g, const struct tlm_local_msg *in, uint32_t type,
		      const char *text)
{
	struct tlm_local_msg m = *in;

	m.version = TLM_LOCAL_VERSION;
	m.type = type;
	m.flags = 0;
	m.uffd_features = 0;
	snprintf(m.text, sizeof(m.text), "%s", text ? text : "");
	if (tlm_local_send(g->fd, &m, -1) < 0)
		log_warn("glue pid %d: cannot send to it", (int)g->pid);
}

static void glue_refuse(struct dst_glue *g, const struct tlm_local_msg *m, int fd,
			const char *why)
{
	log_error("%s: region from pid %d refused: %s", m->vm_id, (int)g->pid, why);
	glue_send(g, m, TLM_LOCAL_ERROR, why);
	if (fd >= 0)
		close(fd);
}

/* Why a REGION cannot be taken, or NULL. */
static const char *region_refusal(struct dst_server *s, const struct tlm_local_msg *m, int fd,
				  struct tlm_tmpl **t, char *buf, size_t len)
{
	struct dst_region *old = dst_region_find(s->regions, m->vm_id);
	bool armed = m->flags & TLM_REGION_ARMED;

	if (old && dst_region_active(old))
		return "a region with this id is already active";
	if (!m->source[0] && !s->default_source)
		return "no source address (the REGION names none and no --source was given)";
	if (armed && fd < 0)
		return "REGION is flagged ARMED but carries no uffd";
	if (!armed && fd >= 0)
		return "REGION carries an fd but is not flagged ARMED";
	if (!digest_zero(m->digest) && !(*t = find_tmpl(s, m->digest))) {
		struct tlm_digest d;
		char hex[33];

		memcpy(d.b, m->digest, sizeof(d.b));
		tlm_digest_hex(&d, hex);
		snprintf(buf, len, "template %s not available on this host", hex);
		return buf;
	}
	if (old)
		old->dead = true;        /* finished earlier: the new migration replaces it */
	return NULL;
}

static void glue_region(struct dst_glue *g, const struct tlm_local_msg *m, int fd)
{
	struct dst_server *s = g->srv;
	struct tlm_tmpl *t = NULL;
	struct dst_region *r;
	char buf[320];
	const char *why = region_refusal(s, m, fd, &t, buf, sizeof(buf));

	if (why) {
		glue_refuse(g, m, fd, why);
		return;
	}
	r = dst_region_new(&s->loop, g, m, t, m->source[0] ? m->source : s->default_source,
			   buf, sizeof(buf));
	if (r && dst_peer_attach(r, &s->peer) < 0) {
		dst_region_free(r);
		r = NULL;
		snprintf(buf, sizeof(buf), "%s: out of memory for its link", m->vm_id);
	}
	if (!r) {
		glue_refuse(g, m, fd, buf);
		return;
	}
	r->stage.pool = &s->stage;
	r->fault_around = s->fault_around;
	r->next = s->regions;
	s->regions = r;
	log_info("%s: region from pid %d: %llu MiB at 0x%llx, offset %llu, %s, source %s",
		 r->id, (int)g->pid, (unsigned long long)(r->size >> 20),
		 (unsigned long long)m->base, (unsigned long long)m->offset,
		 t ? tlm_tmpl_pages_path(t) : "no template", r->source);
	if (fd >= 0)
		dst_region_attach_uffd(r, fd, m->uffd_features);
	else
		log_info("%s: not armed yet: waiting for `arm %s`", r->id, r->id);
}

static void glue_uffd(struct dst_glue *g, const struct tlm_local_msg *m, int fd)
{
	struct dst_region *r = dst_region_find(g->srv->regions, m->vm_id);

	if (fd < 0 || !r || r->glue != g || r->phase != DST_WAITING_UFFD ||
	    (uint64_t)(uintptr_t)r->base != m->base) {
		log_warn("%s: unexpected UFFD from pid %d (%s); ignored", m->vm_id, (int)g->pid,
			 fd < 0 ? "no fd attached" : "no region waiting for it");
		if (fd >= 0)
			close(fd);
		return;
	}
	dst_region_attach_uffd(r, fd, m->uffd_features);
}

static void glue_msg(struct dst_glue *g, const struct tlm_local_msg *m, int fd)
{
	struct dst_region *r;

	switch (m->type) {
	case TLM_LOCAL_REGION:
		glue_region(g, m, fd);
		return;
	case TLM_LOCAL_UFFD:
		glue_uffd(g, m, fd);
		return;
	case TLM_LOCAL_ERROR:
		log_error("%s: glue (pid %d) reports: %s", m->vm_id, (int)g->pid, m->text);
		r = dst_region_find(g->srv->regions, m->vm_id);
		if (r && r->glue == g && r->phase == DST_WAITING_UFFD)
			r->arm_sent = false;     /* arming failed: `arm` may be tried again */
		break;
	default:
		log_warn("%s: unexpected local message type %u from pid %d", m->vm_id, m->type,
			 (int)g->pid);
	}
	if (fd >= 0)
		close(fd);
}

static void glue_close(struct dst_glue *g, const char *why)
{
	log_info("glue pid %d: %s", (int)g->pid, why);
	for (struct dst_region *r = g->srv->regions; r; r = r->next)
		if (r->glue == g)
			dst_region_drop(r, "the guest process disconnected");
	tlm_evloop_del(&g->srv->loop, &g->src);
	close(g->fd);
	g->fd = -1;
	g->dead = true;
}

static void glue_input(struct dst_glue *g)
{
	char err[256];

	while (!g->dead) {
		struct tlm_local_msg m;
		int fd = -1;
		ssize_t n = tlm_local_recv(g->fd, &m, &fd);

		if (n == -EAGAIN || n == -EWOULDBLOCK)
			return;
		if (n == -EBADMSG) {
			log_warn("glue pid %d: malformed packet ignored", (int)g->pid);
			continue;
		}
		if (n <= 0) {
			glue_close(g, n == 0 ? "disconnected" : strerror((int)-n));
			return;
		}
		if (tlm_local_check(&m, (size_t)n, err, sizeof(err)) < 0) {
			log_warn("glue pid %d: %s", (int)g->pid, err);
			if (fd >= 0)
				close(fd);
			continue;
		}
		glue_msg(g, &m, fd);
	}
}

static void on_glue(struct tlm_evsrc *src, uint32_t events)
{
	struct dst_glue *g = TLM_EVSRC_OWNER(src, struct dst_glue, src);

	if (!g->dead)
		glue_input(g);
}

static void glue_accept(struct dst_server *s, int lfd)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct dst_glue *g;
		pid_t pid = 0;
		uid_t uid = 0;

		if (fd < 0)
			return;
		if (tlm_local_peer_ok(fd, &pid, &uid) < 0) {
			log_warn("glue connection from pid %d uid %u refused: not root or our uid",
				 (int)pid, (unsigned)uid);
			close(fd);
			continue;
		}
		g = calloc(1, sizeof(*g));
		if (!g) {
			close(fd);
			continue;
		}
		*g = (struct dst_glue){ .srv = s, .fd = fd, .pid = pid, .next = s->glues };
		g->src = (struct tlm_evsrc){ .fd = fd, .on_event = on_glue,
					     .prio = DST_PRIO_OTHER };
		if (tlm_evloop_add(&s->loop, &g->src, EPOLLIN) < 0) {
			close(fd);
			free(g);
			continue;
		}
		s->glues = g;
		log_debug("glue pid %d connected", (int)pid);
	}
}

/* ---- event loop ------------------------------------------------------------------------------- */

static void on_glue_listen(struct tlm_evsrc *src, uint32_t events)
{
	struct dst_server *s = TLM_EVSRC_OWNER(src, struct dst_server, ev_glue);

	glue_accept(s, s->glue_lfd);
}

static void on_ctl(struct tlm_evsrc *src, uint32_t events)
{
	struct dst_server *s = TLM_EVSRC_OWNER(src, struct dst_server, ev_ctl);

	tlm_ctl_serve_one(s->ctl_lfd, dst_ctl_command, s);
}

static void on_signal(struct tlm_evsrc *src, uint32_t events)
{
	struct dst_server *s = TLM_EVSRC_OWNER(src, struct dst_server, ev_sig);
	struct signalfd_siginfo si;

	while (read(s->sig_fd, &si, sizeof(si)) == sizeof(si)) {
		log_info("%s: shutting down (guest faults keep waiting on the glue's uffd)",
			 strsignal((int)si.ssi_signo));
		s->stop = true;
	}
}

static void on_timer(struct tlm_evsrc *src, uint32_t events)
{
	struct dst_server *s = TLM_EVSRC_OWNER(src, struct dst_server, ev_timer);
	uint64_t ticks, now = tlm_now_ns();
	bool progress = s->progress && now - s->last_progress_ns >= 1000000000ull;

	if (read(s->timer_fd, &ticks, sizeof(ticks)) < 0)
		return;
	for (struct dst_region *r = s->regions; r; r = r->next) {
		dst_region_tick(r, now);
		if (progress)
			dst_region_progress(r, now);
	}
	if (progress)
		s->last_progress_ns = now;
}

static void reap(struct dst_server *s)
{
	struct dst_region **rp = &s->regions;
	struct dst_glue **gp = &s->glues;

	while (*rp) {
		struct dst_region *r = *rp;

		if (r->dead) {
			*rp = r->next;
			dst_region_free(r);
		} else {
			rp = &r->next;
		}
	}
	while (*gp) {
		struct dst_glue *g = *gp;

		if (g->dead) {
			*gp = g->next;
			free(g);
		} else {
			gp = &g->next;
		}
	}
}

/* --exit-when-done: a region completed and none is still migrating. */
static bool all_done(const struct dst_server *s)
{
	bool completed = false;

	for (const struct dst_region *r = s->regions; r; r = r->next) {
		if (dst_region_active(r))
			return false;
		completed |= r->phase == DST_COMPLETE;
	}
	return completed;
}

static bool any_failed(const struct dst_server *s)
{
	for (const struct dst_region *r = s->regions; r; r = r->next)
		if (r->phase == DST_FAILED)
			return true;
	return false;
}

int dst_server_run(struct dst_server *s)
{
	bool busy = false;

	while (!s->stop) {
		int n = tlm_evloop_run_once(&s->loop, busy ? 0 : -1);

		if (n < 0) {
			log_error("epoll_wait: %s", strerror(-n));
			return 1;
		}
		busy = false;
		for (struct dst_region *r = s->regions; r; r = r->next)
			busy |= dst_region_work(r);
		reap(s);
		if (s->exit_when_done && all_done(s)) {
			log_info("every region finished; exiting (--exit-when-done)");
			break;
		}
	}
	return s->exit_when_done && any_failed(s);
}

/* ---- setup ------------------------------------------------------------------------------------- */

/*
 * Template pages are copied out of our mapping (REF pages, holes in the page cache) and
 * hashed there: mapped at once (MADV_POPULATE_READ, Linux 5.14), the first use of each
 * page takes no page fault in the daemon, which would delay a guest's fault. A kernel
 * without it says EINVAL: the pages are then mapped as they are used.
 */
static void populate_template(const struct tlm_tmpl *t, const char *path)
{
	size_t len = tlm_tmpl_page_count(t) * TLM_PAGE_SIZE;

	if (madvise((void *)tlm_tmpl_page(t, 0), len, MADV_POPULATE_READ) == 0)
		log_info("template %s: mapped at once (MADV_POPULATE_READ)", path);
	else if (errno == EINVAL)
		log_info("template %s: not populated (this kernel lacks MADV_POPULATE_READ): "
			 "pages are mapped as they are used", path);
	else
		log_warn("template %s: MADV_POPULATE_READ: %s; pages are mapped as they are used",
			 path, strerror(errno));
}

static int open_templates(struct dst_server *s, const struct dst_server_opts *o)
{
	char err[512], hex[33];

	s->tmpls = calloc(o->ntmpl ? o->ntmpl : 1, sizeof(*s->tmpls));
	if (!s->tmpls)
		return -ENOMEM;
	for (size_t i = 0; i < o->ntmpl; i++) {
		int rc = tlm_tmpl_open(&s->tmpls[i], o->tmpl[i], NULL, 0, err, sizeof(err));

		if (rc < 0) {
			log_error("--template %s: %s", o->tmpl[i], err);
			return rc;
		}
		s->ntmpls++;
		tlm_digest_hex(tlm_tmpl_digest(s->tmpls[i]), hex);
		log_info("template %s: %llu pages, digest %s", o->tmpl[i],
			 (unsigned long long)tlm_tmpl_page_count(s->tmpls[i]), hex);
		populate_template(s->tmpls[i], o->tmpl[i]);
	}
	return 0;
}

static int add_fd(struct dst_server *s, int fd, struct tlm_evsrc *src, tlm_evsrc_fn fn)
{
	*src = (struct tlm_evsrc){ .fd = fd, .on_event = fn, .prio = DST_PRIO_OTHER };
	return tlm_evloop_add(&s->loop, src, EPOLLIN);
}

static int open_fds(struct dst_server *s, const struct dst_server_opts *o)
{
	struct itimerspec its = { { 0, TICK_MS * 1000000L }, { 0, TICK_MS * 1000000L } };
	char err[320];

	s->sig_fd = tlm_term_signalfd(SFD_NONBLOCK);
	s->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (tlm_evloop_init(&s->loop) < 0 || s->sig_fd < 0 || s->timer_fd < 0 ||
	    timerfd_settime(s->timer_fd, 0, &its, NULL) < 0) {
		log_error("setting up the event loop: %s", strerror(errno));
		return -1;
	}
	s->glue_lfd = tlm_unix_listen(o->sock, SOCK_SEQPACKET, err, sizeof(err));
	if (s->glue_lfd < 0) {
		log_error("--sock %s", err);
		return -1;
	}
	tlm_set_nonblock(s->glue_lfd, 1);
	s->ctl_lfd = tlm_ctl_listen(o->ctl, err, sizeof(err));
	if (s->ctl_lfd < 0) {
		log_error("--ctl %s", err);
		return -1;
	}
	if (add_fd(s, s->sig_fd, &s->ev_sig, on_signal) || add_fd(s, s->timer_fd,
	    &s->ev_timer, on_timer) || add_fd(s, s->glue_lfd, &s->ev_glue, on_glue_listen) ||
	    add_fd(s, s->ctl_lfd, &s->ev_ctl, on_ctl)) {
		log_error("epoll: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Bulk input: io_uring or read(), by a probe of what this kernel lets us do. */
static int choose_net_io(struct dst_server *s, const struct dst_server_opts *o)
{
	char why[160];

	if (dst_net_io_choose(o->net_io, &s->peer.net_io, why, sizeof(why)) < 0) {
		log_error("--net-io uring: %s", why);
		return -1;
	}
	if (s->peer.net_io == DST_NET_IO_URING)
		log_info("bulk input: io_uring (IORING_OP_RECV kept armed)");
	else
		log_info("bulk input: read()%s%s%s", why[0] ? " (io_uring unavailable: " : "",
			 why, why[0] ? ")" : "");
	return 0;
}

/* Everything starts closed (-1) so that dst_server_close can run after any failure. */
int dst_server_open(struct dst_server *s, const struct dst_server_opts *o)
{
	char err[320];

	*s = (struct dst_server){ .glue_lfd = -1, .ctl_lfd = -1, .sig_fd = -1, .timer_fd = -1,
				  .loop.epfd = -1, .default_source = o->source,
				  .exit_when_done = o->exit_when_done, .progress = o->progress,
				  .sock_path = o->sock, .ctl_path = o->ctl };
	s->peer.outage_limit_ms = o->outage_limit_ms;
	s->peer.stall_ms = o->stall_ms;
	s->peer.bulk_rcvbuf = (int)o->bulk_rcvbuf;
	s->stage.max = o->stage_max;
	s->fault_around = (uint32_t)o->fault_around;
	if (tlm_key_load(o->key, &s->peer.key, err, sizeof(err)) < 0) {
		log_error("--key %s", err);
		return -1;
	}
	if (o->tls && tlm_tls_new(&s->peer.tls, false, &s->peer.key, err, sizeof(err)) < 0) {
		log_error("--tls: %s", err);
		return -1;
	}
	if (o->tls)
		log_info("tls: TLS 1.3 with the pre-shared key on both channels; %s",
			 tlm_tls_kernel());
	if (choose_net_io(s, o) < 0)
		return -1;
	if (open_templates(s, o) < 0 || open_fds(s, o) < 0)
		return -1;
	log_info("ready: glue socket %s, control socket %s, %zu template(s)%s%s", o->sock,
		 o->ctl, s->ntmpls, o->source ? ", default source " : "",
		 o->source ? o->source : "");
	return 0;
}

/* Regions are freed without unregistering (dst_server.h). */
void dst_server_close(struct dst_server *s)
{
	for (struct dst_region *r = s->regions; r; r = r->next)
		r->dead = true;
	for (struct dst_glue *g = s->glues; g; g = g->next)
		if (!g->dead) {
			tlm_evloop_del(&s->loop, &g->src);
			close(g->fd);
			g->dead = true;
		}
	reap(s);
	for (size_t i = 0; i < s->ntmpls; i++)
		tlm_tmpl_close(s->tmpls[i]);
	free(s->tmpls);
	if (s->glue_lfd >= 0) {
		close(s->glue_lfd);
		unlink(s->sock_path);
	}
	if (s->ctl_lfd >= 0) {
		close(s->ctl_lfd);
		unlink(s->ctl_path);
	}
	if (s->sig_fd >= 0)
		close(s->sig_fd);
	if (s->timer_fd >= 0)
		close(s->timer_fd);
	tlm_evloop_fini(&s->loop);
	tlm_tls_free(s->peer.tls);
	s->peer.tls = NULL;
}
