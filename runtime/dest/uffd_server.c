/*
 * uffd_server.c — tlm-uffd-server, the destination daemon: owns the guests' userfaultfds
 * and resolves their faults from the local template and the source page server.
 *
 * One thread, one epoll loop, level-triggered. Each iteration handles the ready events in
 * priority order — uffds (guest threads are waiting), urgent sessions (demand replies),
 * bulk sessions, everything else — then gives every region a bounded slice of background
 * work (class map sweep, buffered bulk frames). While background work remains, epoll does
 * not sleep.
 *
 * Glue protocol (protocol/tlm_proto.h, local messages): a guest process connects to
 * --sock (SOCK_SEQPACKET), we check SO_PEERCRED, it sends REGION (+ uffd when armed at
 * map time); a region without uffd waits for `arm ID`, which sends ARM, and the glue
 * answers UFFD + fd. We answer DONE when every page is present (after unregistering), or
 * ERROR with a reason.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "ctl.h"
#include "dst_region.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define TICK_MS     100
#define CTL_CMDS    "stats [ID] | arm ID | resume ID [HOST:PORT] | shutdown"

struct opts {
	const char *sock, *ctl, *key, *source;
	const char **tmpl;
	size_t ntmpl;
	bool exit_when_done, progress;
	int level;
	uint64_t outage_limit_ms, stall_ms;
};

/* The daemon: shared state plus its own fds. */
struct daemon {
	struct dst_server s;
	int glue_lfd, ctl_lfd, sig_fd, timer_fd;
	struct tlm_evsrc ev_glue, ev_ctl, ev_sig, ev_timer;
	uint64_t last_progress_ns;
};

static const char usage_text[] =
"usage: tlm-uffd-server --sock GLUESOCK --ctl CTLSOCK --key KEYFILE [--source HOST:PORT]\n"
"                       [--template PAGES]... [--outage-limit S] [--stall-timeout S]\n"
"                       [--exit-when-done] [--log-level L] [--progress]\n"
"\n"
"Destination daemon of tlm: receives guest RAM regions and their userfaultfds from\n"
"libtlm-glue.so over GLUESOCK and resolves the guest's page faults: template pages from the\n"
"local template (shared page-cache frames), zero pages, template references, and DATA\n"
"pages fetched from the source tlm-page-server (demand first, then the background stream).\n"
"\n"
"  --sock PATH        glue socket (SOCK_SEQPACKET, created 0600)\n"
"  --ctl PATH         control socket (tlmctl -s PATH COMMAND)\n"
"  --key FILE         pre-shared key for the source (0600, 16..64 bytes or hex)\n"
"  --source H:P       source page server, when a REGION names none\n"
"  --template PAGES   local template (index PAGES.tlmi) regions may use; repeatable\n"
"  --outage-limit S   source unreachable this long (seconds, default 60): the region\n"
"                     pauses (faults wait, phase \"paused\") until `resume ID`\n"
"  --stall-timeout S  demands unanswered and nothing received this long (default 10):\n"
"                     the source is taken as hung, its sessions are reconnected\n"
"  --exit-when-done   exit once a region completed and none is active\n"
"  --log-level L      error | warn | info (default) | debug\n"
"  --progress         one progress line per second and region (default on a TTY)\n"
"\n"
"Control commands: stats [ID] | arm ID | resume ID [HOST:PORT] | shutdown\n";

/* ---- options ------------------------------------------------------------------------------- */

static int opt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int opt_fail(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tlm-uffd-server: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see --help)\n");
	return -1;
}

static int opt_seconds(const char *name, const char *arg, uint64_t *ms)
{
	char *end;
	double v = strtod(arg, &end);

	if (end == arg || *end || !(v > 0) || v > 86400 * 365)
		return opt_fail("%s '%s': expected seconds > 0", name, arg);
	*ms = (uint64_t)(v * 1000);
	return 0;
}

static int opt_one(struct opts *o, int c, const char *arg)
{
	switch (c) {
	case 's': o->sock = arg; return 0;
	case 'c': o->ctl = arg; return 0;
	case 'k': o->key = arg; return 0;
	case 'S':
		if (!strrchr(arg, ':') || strrchr(arg, ':') == arg || !strrchr(arg, ':')[1])
			return opt_fail("--source '%s': expected HOST:PORT", arg);
		o->source = arg;
		return 0;
	case 't': {
		const char **t = realloc(o->tmpl, (o->ntmpl + 1) * sizeof(*t));

		if (!t)
			return opt_fail("%s", "out of memory");
		o->tmpl = t;
		o->tmpl[o->ntmpl++] = arg;
		return 0;
	}
	case 'o':
		return opt_seconds("--outage-limit", arg, &o->outage_limit_ms);
	case 'T':
		return opt_seconds("--stall-timeout", arg, &o->stall_ms);
	case 'x': o->exit_when_done = true; return 0;
	case 'p': o->progress = true; return 0;
	case 'l':
		o->level = tlm_log_parse_level(arg);
		if (o->level < 0)
			return opt_fail("--log-level '%s': expected error, warn, info or debug", arg);
		return 0;
	}
	return -1;
}

/* 0 = run, 1 = --help printed, -1 = bad options (message printed). */
static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "sock", required_argument, NULL, 's' },
		{ "ctl", required_argument, NULL, 'c' },
		{ "key", required_argument, NULL, 'k' },
		{ "source", required_argument, NULL, 'S' },
		{ "template", required_argument, NULL, 't' },
		{ "outage-limit", required_argument, NULL, 'o' },
		{ "stall-timeout", required_argument, NULL, 'T' },
		{ "exit-when-done", no_argument, NULL, 'x' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "progress", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	opterr = 0;
	o->level = TLM_LOG_INFO;
	o->outage_limit_ms = 60000;
	o->stall_ms = 10000;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage_text, stdout);
			return 1;
		}
		if (c == '?' || c == ':')
			return opt_fail("bad option or missing argument: '%s'", argv[optind - 1]);
		if (opt_one(o, c, optarg) < 0)
			return -1;
	}
	if (optind < argc)
		return opt_fail("unexpected argument '%s'", argv[optind]);
	if (!o->sock)
		return opt_fail("%s is required", "--sock");
	if (!o->ctl)
		return opt_fail("%s is required", "--ctl");
	if (!o->key)
		return opt_fail("%s is required", "--key");
	return 0;
}

/* ---- regions and glues ---------------------------------------------------------------------- */

static struct dst_region *find_region(struct dst_server *s, const char *id)
{
	for (struct dst_region *r = s->regions; r; r = r->next)
		if (!r->dead && strcmp(r->id, id) == 0)
			return r;
	return NULL;
}

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
	struct dst_region *old = find_region(s, m->vm_id);
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
	r = dst_region_new(s, g, m, t, m->source[0] ? m->source : s->default_source, buf,
			   sizeof(buf));
	if (!r) {
		glue_refuse(g, m, fd, buf);
		return;
	}
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
	struct dst_region *r = find_region(g->srv, m->vm_id);

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
		r = find_region(g->srv, m->vm_id);
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

/* ---- control ---------------------------------------------------------------------------------- */

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
	tlm_json_obj_end(&j);
	tlm_sbuf_putc(reply, '\n');
}

static int ctl_arm(struct dst_server *s, const char *id, struct tlm_sbuf *reply)
{
	struct dst_region *r = id ? find_region(s, id) : NULL;

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
	struct dst_region *r = id ? find_region(s, id) : NULL;

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

static int ctl_fn(void *ctx, char *line, struct tlm_sbuf *reply)
{
	struct dst_server *s = ctx;
	char *save = NULL, *cmd = strtok_r(line, " \t", &save);
	char *arg = cmd ? strtok_r(NULL, " \t", &save) : NULL;
	char *extra = arg ? strtok_r(NULL, " \t", &save) : NULL;

	if (!cmd) {
		tlm_sbuf_printf(reply, "error: empty command (%s)\n", CTL_CMDS);
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
	tlm_sbuf_printf(reply, "error: unknown command '%s' (%s)\n", cmd, CTL_CMDS);
	return -EINVAL;
}

/* ---- event loop ------------------------------------------------------------------------------- */

static void on_glue_listen(struct tlm_evsrc *src, uint32_t events)
{
	struct daemon *d = TLM_EVSRC_OWNER(src, struct daemon, ev_glue);

	glue_accept(&d->s, d->glue_lfd);
}

static void on_ctl(struct tlm_evsrc *src, uint32_t events)
{
	struct daemon *d = TLM_EVSRC_OWNER(src, struct daemon, ev_ctl);

	tlm_ctl_serve_one(d->ctl_lfd, ctl_fn, &d->s);
}

static void on_signal(struct tlm_evsrc *src, uint32_t events)
{
	struct daemon *d = TLM_EVSRC_OWNER(src, struct daemon, ev_sig);
	struct signalfd_siginfo si;

	while (read(d->sig_fd, &si, sizeof(si)) == sizeof(si)) {
		log_info("%s: shutting down (guest faults keep waiting on the glue's uffd)",
			 strsignal((int)si.ssi_signo));
		d->s.stop = true;
	}
}

static void on_timer(struct tlm_evsrc *src, uint32_t events)
{
	struct daemon *d = TLM_EVSRC_OWNER(src, struct daemon, ev_timer);
	uint64_t ticks, now = tlm_now_ns();
	bool progress = d->s.progress && now - d->last_progress_ns >= 1000000000ull;

	if (read(d->timer_fd, &ticks, sizeof(ticks)) < 0)
		return;
	for (struct dst_region *r = d->s.regions; r; r = r->next) {
		dst_region_tick(r, now);
		if (progress)
			dst_region_progress(r, now);
	}
	if (progress)
		d->last_progress_ns = now;
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

static int loop(struct daemon *d)
{
	struct dst_server *s = &d->s;
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
	return 0;
}

/* ---- setup ------------------------------------------------------------------------------------- */

static int open_templates(struct dst_server *s, const struct opts *o)
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
	}
	return 0;
}

static int add_fd(struct daemon *d, int fd, struct tlm_evsrc *src, tlm_evsrc_fn fn)
{
	*src = (struct tlm_evsrc){ .fd = fd, .on_event = fn, .prio = DST_PRIO_OTHER };
	return tlm_evloop_add(&d->s.loop, src, EPOLLIN);
}

static int open_fds(struct daemon *d, const struct opts *o)
{
	struct itimerspec its = { { 0, TICK_MS * 1000000L }, { 0, TICK_MS * 1000000L } };
	char err[320];
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	d->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	d->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (tlm_evloop_init(&d->s.loop) < 0 || d->sig_fd < 0 || d->timer_fd < 0 ||
	    timerfd_settime(d->timer_fd, 0, &its, NULL) < 0) {
		log_error("setting up the event loop: %s", strerror(errno));
		return -1;
	}
	d->glue_lfd = tlm_unix_listen(o->sock, SOCK_SEQPACKET, err, sizeof(err));
	if (d->glue_lfd < 0) {
		log_error("--sock %s", err);
		return -1;
	}
	tlm_set_nonblock(d->glue_lfd, 1);
	d->ctl_lfd = tlm_ctl_listen(o->ctl, err, sizeof(err));
	if (d->ctl_lfd < 0) {
		log_error("--ctl %s", err);
		return -1;
	}
	if (add_fd(d, d->sig_fd, &d->ev_sig, on_signal) || add_fd(d, d->timer_fd,
	    &d->ev_timer, on_timer) || add_fd(d, d->glue_lfd, &d->ev_glue, on_glue_listen) ||
	    add_fd(d, d->ctl_lfd, &d->ev_ctl, on_ctl)) {
		log_error("epoll: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Close everything without unregistering: the glue's uffd copy keeps guest faults
 * waiting for a daemon that may come back. */
static void teardown(struct daemon *d, const struct opts *o)
{
	struct dst_server *s = &d->s;

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
	if (d->glue_lfd >= 0) {
		close(d->glue_lfd);
		unlink(o->sock);
	}
	if (d->ctl_lfd >= 0) {
		close(d->ctl_lfd);
		unlink(o->ctl);
	}
	tlm_evloop_fini(&s->loop);
}

static bool any_failed(const struct dst_server *s)
{
	for (const struct dst_region *r = s->regions; r; r = r->next)
		if (r->phase == DST_FAILED)
			return true;
	return false;
}

int main(int argc, char **argv)
{
	struct daemon d = { .glue_lfd = -1, .ctl_lfd = -1, .sig_fd = -1, .timer_fd = -1 };
	struct opts o = { 0 };
	char err[320];
	int rc;

	d.s.loop.epfd = -1;
	tlm_log_init(argv[0], TLM_LOG_INFO);
	rc = parse_opts(argc, argv, &o);
	if (rc)
		return rc > 0 ? 0 : 2;
	tlm_log_set_level((enum tlm_log_level)o.level);
	d.s.default_source = o.source;
	d.s.exit_when_done = o.exit_when_done;
	d.s.outage_limit_ms = o.outage_limit_ms;
	d.s.stall_ms = o.stall_ms;
	d.s.progress = o.progress || isatty(STDERR_FILENO);
	if (tlm_key_load(o.key, &d.s.key, err, sizeof(err)) < 0) {
		log_error("--key %s", err);
		return 1;
	}
	rc = open_templates(&d.s, &o) < 0 || open_fds(&d, &o) < 0;
	if (!rc) {
		log_info("ready: glue socket %s, control socket %s, %zu template(s)%s%s", o.sock,
			 o.ctl, d.s.ntmpls, o.source ? ", default source " : "",
			 o.source ? o.source : "");
		rc = loop(&d);
		if (!rc && o.exit_when_done && any_failed(&d.s))
			rc = 1;
	}
	teardown(&d, &o);
	free(o.tmpl);
	return rc ? 1 : 0;
}
