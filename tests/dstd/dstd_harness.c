/*
 * dstd_harness.c — see dstd_harness.h.
 */
#include "dstd_harness.h"
#include "tlm_io.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "ctl.h"
#include "util.h"
#include "tlm_test.h"

static char bin_path[512];

const char *h_uffd_unavailable(void)
{
	static char why[600];
	struct statfs sf;

	if (tt_uffd_missing(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_EVENT_REMOVE, why,
			    sizeof(why)))
		return why;
	if (statfs("/dev/shm", &sf) < 0 || sf.f_type != TMPFS_MAGIC)
		return "/dev/shm is not tmpfs (MINOR faults need shmem)";
	return NULL;
}

const char *h_bin_missing(void)
{
	static char why[600];
	const char *dir = getenv("TLM_BIN_DIR");

	if (!dir)
		return "TLM_BIN_DIR not set (run through ctest)";
	snprintf(bin_path, sizeof(bin_path), "%s/tlm-uffd-server", dir);
	if (access(bin_path, X_OK) < 0) {
		snprintf(why, sizeof(why), "%s not built", bin_path);
		return why;
	}
	return NULL;
}

/* ---- files ------------------------------------------------------------------------------ */

int h_env_init(struct h_env *e)
{
	static const char hexkey[] =
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
	int fd;

	memset(e, 0, sizeof(*e));
	snprintf(e->dir, sizeof(e->dir), "/dev/shm/tlm-dstd-XXXXXX");
	if (!mkdtemp(e->dir))
		return -errno;
	snprintf(e->key, sizeof(e->key), "%s/key", e->dir);
	snprintf(e->pages, sizeof(e->pages), "%s/base.pages", e->dir);
	snprintf(e->glue_sock, sizeof(e->glue_sock), "%s/glue.sock", e->dir);
	snprintf(e->ctl_sock, sizeof(e->ctl_sock), "%s/ctl.sock", e->dir);
	snprintf(e->log, sizeof(e->log), "%s/daemon.log", e->dir);
	fd = open(e->key, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (tlm_write_full(fd, hexkey, strlen(hexkey)) < 0) {
		close(fd);
		return -EIO;
	}
	close(fd);
	return 0;
}

void h_env_fini(struct h_env *e)
{
	char cmd[400];

	if (e->daemon > 0)
		h_daemon_stop(e, SIGKILL, 2000);
	if (e->dir[0] && !getenv("TLM_KEEP")) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", e->dir);
	}
}

int h_load_key(const struct h_env *e, struct tlm_key *k)
{
	char err[256];
	int rc = tlm_key_load(e->key, k, err, sizeof(err));

	if (rc < 0)
		fprintf(stderr, "key: %s\n", err);
	return rc;
}

void h_tmpl_page(uint64_t k, uint8_t *out)
{
	uint64_t x = (k + 1) * 0x9e3779b97f4a7c15ull;

	for (unsigned i = 0; i < H_PS; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(out + i, &x, 8);
	}
	memcpy(out, &k, 8);       /* distinct even if the generator repeated */
	out[8] = 0xa5;            /* never all zero */
}

int h_make_template(struct h_env *e, uint64_t npages)
{
	uint8_t page[H_PS];
	char err[512];
	int fd = open(e->pages, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc;

	if (fd < 0)
		return -errno;
	for (uint64_t k = 0; k < npages; k++) {
		h_tmpl_page(k, page);
		if (tlm_write_full(fd, page, H_PS) < 0) {
			close(fd);
			return -EIO;
		}
	}
	close(fd);
	rc = tlm_tmpl_build_index(e->pages, NULL, 1, &e->digest, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "template index: %s\n", err);
	e->tmpl_pages = npages;
	return rc;
}

/* ---- the daemon ---------------------------------------------------------------------------- */

static bool is_sock(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

int h_daemon_start(struct h_env *e, const char *source, bool with_template,
		   const char *const *extra)
{
	const char *argv[32];
	int n = 0, status;

	argv[n++] = bin_path;
	argv[n++] = "--sock";
	argv[n++] = e->glue_sock;
	argv[n++] = "--ctl";
	argv[n++] = e->ctl_sock;
	argv[n++] = "--key";
	argv[n++] = e->key;
	argv[n++] = "--log-level";
	argv[n++] = "debug";
	if (getenv("TLM_TEST_NET_IO")) {         /* the bulk input path under test */
		argv[n++] = "--net-io";
		argv[n++] = getenv("TLM_TEST_NET_IO");
	}
	if (source) {
		argv[n++] = "--source";
		argv[n++] = source;
	}
	if (with_template) {
		argv[n++] = "--template";
		argv[n++] = e->pages;
	}
	for (; extra && *extra && n < 30; extra++)
		argv[n++] = *extra;
	argv[n] = NULL;
	e->daemon = fork();
	if (e->daemon < 0)
		return -errno;
	if (e->daemon == 0) {
		int fd = open(e->log, O_WRONLY | O_CREAT | O_APPEND, 0644);

		if (fd >= 0) {
			dup2(fd, 2);
			dup2(fd, 1);
		}
		execv(bin_path, (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		if (is_sock(e->glue_sock) && is_sock(e->ctl_sock))
			return 0;
		if (waitpid(e->daemon, &status, WNOHANG) == e->daemon) {
			e->daemon = 0;
			return -ECHILD;
		}
		tt_sleep_ms(10);
	}
	return -ETIMEDOUT;
}

int h_daemon_wait(struct h_env *e, int timeout_ms)
{
	int status;

	for (int i = 0; e->daemon > 0 && i < timeout_ms / 10; i++) {
		if (waitpid(e->daemon, &status, WNOHANG) == e->daemon) {
			e->daemon = 0;
			return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		}
		tt_sleep_ms(10);
	}
	return -ETIMEDOUT;
}

int h_daemon_stop(struct h_env *e, int sig, int timeout_ms)
{
	int status;

	if (e->daemon <= 0)
		return -1;
	kill(e->daemon, sig);
	for (int i = 0; i < timeout_ms / 10; i++) {
		if (waitpid(e->daemon, &status, WNOHANG) == e->daemon) {
			e->daemon = 0;
			return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		}
		tt_sleep_ms(10);
	}
	kill(e->daemon, SIGKILL);
	waitpid(e->daemon, &status, 0);
	e->daemon = 0;
	return -1;
}

void h_dump_log(const struct h_env *e)
{
	char buf[4096];
	FILE *f = fopen(e->log, "r");

	if (!f)
		return;
	fprintf(stderr, "---- %s ----\n", e->log);
	while (fgets(buf, sizeof(buf), f))
		fputs(buf, stderr);
	fprintf(stderr, "---- end ----\n");
	fclose(f);
}

int h_run_daemon_args(const char *const *argv, char *err, size_t errlen)
{
	int p[2], status;
	size_t len = 0;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid == 0) {
		dup2(p[1], 2);
		dup2(p[1], 1);
		execv(bin_path, (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	for (;;) {
		ssize_t r = read(p[0], err + len, errlen - 1 - len);

		if (r <= 0)
			break;
		len += (size_t)r;
		if (len == errlen - 1)
			break;
	}
	err[len] = '\0';
	close(p[0]);
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int h_ctl(const struct h_env *e, const char *cmd, char **out)
{
	struct tlm_sbuf b;
	int rc;

	tlm_sbuf_init(&b);
	rc = tlm_ctl_request(e->ctl_sock, cmd, &b, 3000);
	*out = strdup(b.p ? b.p : "");
	tlm_sbuf_fini(&b);
	return rc;
}

/* ---- the fake glue ----------------------------------------------------------------------- */

int h_guest_map(struct h_guest *g, const struct h_env *e, uint64_t npages)
{
	int rc;

	h_guest_init(g);
	g->npages = npages;
	g->tmpl_fd = open(e->pages, O_RDONLY | O_CLOEXEC);
	if (g->tmpl_fd < 0)
		return -errno;
	g->ram = mmap(NULL, npages * H_PS, PROT_READ | PROT_WRITE, MAP_PRIVATE, g->tmpl_fd, 0);
	if (g->ram == MAP_FAILED)
		return -errno;
	rc = tlm_uffd_open(&g->uffd, TLM_UFFD_NONBLOCK,
			   UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_EVENT_REMOVE);
	if (rc < 0)
		return rc;
	return tlm_uffd_register(&g->uffd, g->ram, npages * H_PS,
				 TLM_UFFD_MODE_MISSING | TLM_UFFD_MODE_MINOR, NULL);
}

int h_guest_send_region(struct h_guest *g, const struct h_env *e, const char *vm_id,
			bool with_uffd)
{
	struct tlm_local_msg m;
	char err[256];

	if (g->sock < 0)
		g->sock = tlm_unix_connect(e->glue_sock, SOCK_SEQPACKET, err, sizeof(err));
	if (g->sock < 0)
		return g->sock;
	memset(&m, 0, sizeof(m));
	m.version = TLM_LOCAL_VERSION;
	m.type = TLM_LOCAL_REGION;
	m.flags = TLM_REGION_TEMPLATE | (with_uffd ? TLM_REGION_ARMED : 0);
	m.page_size = H_PS;
	m.base = (uint64_t)(uintptr_t)g->ram;
	m.size = g->npages * H_PS;
	m.uffd_features = with_uffd ? g->uffd.features : 0;
	memcpy(m.digest, e->digest.b, 16);
	snprintf(m.vm_id, sizeof(m.vm_id), "%s", vm_id);
	return tlm_local_send(g->sock, &m, with_uffd ? g->uffd.fd : -1);
}

int h_guest_recv(struct h_guest *g, struct tlm_local_msg *m, int *fd, int timeout_ms)
{
	struct pollfd p = { .fd = g->sock, .events = POLLIN };
	ssize_t n;

	if (poll(&p, 1, timeout_ms) <= 0)
		return -ETIMEDOUT;
	n = tlm_local_recv(g->sock, m, fd);
	if (n == 0)
		return -ECONNRESET;
	return n < 0 ? (int)n : 0;
}

void h_guest_init(struct h_guest *g)
{
	memset(g, 0, sizeof(*g));
	g->sock = g->tmpl_fd = g->uffd.fd = -1;
}

void h_guest_unmap(struct h_guest *g)
{
	if (g->sock >= 0)
		close(g->sock);
	tlm_uffd_close(&g->uffd);
	if (g->ram && g->ram != MAP_FAILED)
		munmap(g->ram, g->npages * H_PS);
	if (g->tmpl_fd >= 0)
		close(g->tmpl_fd);
	h_guest_init(g);
}

static void *touch_thread(void *arg)
{
	struct h_touch *t = arg;

	memcpy(t->data, t->addr, H_PS);     /* faults until the daemon places the page */
	__atomic_store_n(&t->done, true, __ATOMIC_RELEASE);
	return NULL;
}

void h_touch_start(struct h_touch *t, const void *addr)
{
	t->addr = addr;
	t->done = false;
	t->joined = false;
	t->started = pthread_create(&t->th, NULL, touch_thread, t) == 0;
}

bool h_touch_wait(struct h_touch *t, int timeout_ms)
{
	struct timespec ts;

	ts = tt_deadline(timeout_ms);
	if (!t->started || t->joined)
		return t->joined;
	t->joined = pthread_timedjoin_np(t->th, NULL, &ts) == 0;
	return t->joined;
}

static char watchdog_msg[512];

static void watchdog_fire(int sig)
{
	(void)sig;
	if (write(2, watchdog_msg, strlen(watchdog_msg)) < 0)
		_exit(3);
	_exit(1);
}

void h_watchdog(const struct h_env *e, unsigned seconds)
{
	struct sigaction sa = { .sa_handler = watchdog_fire };

	snprintf(watchdog_msg, sizeof(watchdog_msg), "\nwatchdog: the test hung for %u s (a "
		 "fault nobody answered?); daemon log: %s (set TLM_KEEP=1 to keep it)\n",
		 seconds, e->log);
	sigaction(SIGALRM, &sa, NULL);
	alarm(seconds);
}

uint64_t h_pagemap(const void *addr)
{
	uint64_t v = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	if (pread(fd, &v, 8, (off_t)((uintptr_t)addr / H_PS * 8)) != 8)
		v = 0;
	close(fd);
	return v;
}

/* ---- the fake source ----------------------------------------------------------------------- */

static int src_send(int fd, const struct tlm_msg *m)
{
	return fd < 0 ? -EBADF : tlm_proto_send(fd, m, 5000);
}

static int src_page(struct h_src *s, int fd, uint64_t p, bool bad)
{
	const struct h_page *pg = &s->pages[p];
	struct tlm_msg m = { .type = TLM_MSG_PAGE };

	m.u.page.page = p;
	m.u.page.data = pg->data;
	m.u.page.xxh64 = tlm_proto_page_sum(pg->data) ^ (bad ? 0x5a5a5a5aull : 0);
	return src_send(fd, &m);
}

/* The demand reply for one page, by class. */
static int src_reply(struct h_src *s, uint64_t p)
{
	const struct h_page *pg = &s->pages[p];
	struct tlm_msg m;

	memset(&m, 0, sizeof(m));
	switch (pg->cls) {
	case TLM_CLASS_DATA:
		s->sent_urgent[p] = true;
		return src_page(s, s->urg, p, s->bad_always && s->bad_page_set && p == s->bad_page);
	case TLM_CLASS_ZERO:
		m.type = TLM_MSG_ZERO;
		m.u.zero.page = p;
		m.u.zero.count = 1;
		return src_send(s->urg, &m);
	default:
		m.type = TLM_MSG_REF;
		m.u.ref.page = p;
		m.u.ref.count = 1;
		m.u.ref.tmpl_page = pg->k;
		return src_send(s->urg, &m);
	}
}

static void src_demand(struct h_src *s, const struct tlm_msg *m)
{
	for (uint64_t p = m->u.demand.page; p < m->u.demand.page + m->u.demand.count; p++) {
		bool hold;

		if (p >= s->npages)
			break;
		pthread_mutex_lock(&s->mu);
		s->demands[p]++;
		hold = p == s->hold_page;
		if (hold)
			s->held = true;
		pthread_cond_broadcast(&s->cv);
		pthread_mutex_unlock(&s->mu);
		if (!hold)
			src_reply(s, p);
	}
}

/* Run-length map of pages [first, end) as CLASS_MAP runs. */
static uint32_t src_runs(const struct h_src *s, uint64_t first, uint64_t end,
			 struct tlm_run *runs)
{
	uint32_t n = 0;

	for (uint64_t p = first; p < end; p++) {
		const struct h_page *pg = &s->pages[p];
		struct tlm_run *last = n ? &runs[n - 1] : NULL;

		if (last && last->cls == pg->cls &&
		    (pg->cls != TLM_CLASS_REF || last->arg + last->len == pg->k)) {
			last->len++;
			continue;
		}
		runs[n++] = (struct tlm_run){ .cls = pg->cls, .len = 1,
					      .arg = pg->cls == TLM_CLASS_REF ? pg->k : 0 };
	}
	return n;
}

/* The class map (kind: whole or live) in frames_per_map frames. */
static void src_map(struct h_src *s, uint8_t kind)
{
	struct tlm_run *runs = calloc(s->npages, sizeof(*runs));
	unsigned frames = s->frames_per_map ? s->frames_per_map : 1;
	uint64_t per = (s->npages + frames - 1) / frames;
	struct tlm_msg m;

	for (uint64_t first = 0; runs && first < s->npages; first += per) {
		uint64_t end = first + per < s->npages ? first + per : s->npages;

		memset(&m, 0, sizeof(m));
		m.type = TLM_MSG_CLASS_MAP;
		m.u.class_map.first_page = first;
		m.u.class_map.runs = runs;
		m.u.class_map.nruns = src_runs(s, first, end, runs);
		m.u.class_map.final = end == s->npages;
		m.u.class_map.kind = kind;
		src_send(s->bulk, &m);
	}
	free(runs);
}

/* The live map: the pages' classes, but live_wrong (if set) TEMPLATE. */
static void src_live_map(struct h_src *s)
{
	const struct h_page *real = s->pages;
	struct h_page *lp = NULL;

	if (s->live_wrong_set && (lp = malloc(s->npages * sizeof(*lp)))) {
		memcpy(lp, real, s->npages * sizeof(*lp));
		lp[s->live_wrong].cls = TLM_CLASS_TEMPLATE;
		lp[s->live_wrong].k = s->live_wrong;
		s->pages = lp;
	}
	src_map(s, TLM_MAP_LIVE);
	s->pages = real;
	free(lp);
}

/* The live phase: live map, every DATA page pre-sent, then a fix map keeping it all (but
 * live_wrong: DATA). */
static void src_live(struct h_src *s)
{
	uint64_t w = s->live_wrong_set ? s->live_wrong : s->npages;
	struct tlm_run fix[3] = {
		{ .cls = TLM_CLASS_KEEP, .len = (uint32_t)w },
		{ .cls = TLM_CLASS_DATA, .len = 1 },
		{ .cls = TLM_CLASS_KEEP, .len = (uint32_t)(s->npages - w - 1) },
	};
	struct tlm_msg m = { .type = TLM_MSG_CLASS_MAP };

	src_live_map(s);
	for (uint64_t p = 0; p < s->npages; p++)
		if (s->pages[p].cls == TLM_CLASS_DATA && p != w)
			src_page(s, s->bulk, p, false);
	if (w == s->npages) {
		m.u.class_map.runs = fix;
		m.u.class_map.nruns = 1;
	} else {
		m.u.class_map.runs = fix[0].len ? fix : fix + 1;
		m.u.class_map.nruns = (fix[0].len ? 1 : 0) + 1 + (fix[2].len ? 1 : 0);
	}
	m.u.class_map.final = true;
	m.u.class_map.kind = TLM_MAP_FIX;
	src_send(s->bulk, &m);
}

/* The end of the bulk stream: PROGRESS (all sent), DONE. */
static void src_done(struct h_src *s, uint64_t data)
{
	struct tlm_msg m;

	memset(&m, 0, sizeof(m));
	m.type = TLM_MSG_PROGRESS;
	m.u.progress.pages_sent = s->npages;
	m.u.progress.pages_total = s->npages;
	src_send(s->bulk, &m);
	m.type = TLM_MSG_DONE;
	m.u.done.data_pages = data;
	m.u.done.bytes = data * H_PS;
	src_send(s->bulk, &m);
}

static void src_go(struct h_src *s)
{
	uint64_t data = 0;

	for (unsigned i = 0; i < s->ninject; i++)
		src_send(s->bulk, &s->inject[i]);
	if (s->live)
		src_live(s);
	else
		src_map(s, TLM_MAP_WHOLE);
	for (uint64_t p = 0; p < s->npages && !s->live; p++) {
		if (s->pages[p].cls != TLM_CLASS_DATA || s->sent_urgent[p])
			continue;
		src_page(s, s->bulk, p, s->bad_page_set && p == s->bad_page);
		data++;
	}
	if (!s->hold_done)
		src_done(s, data);
}

static int src_accept_one(struct h_src *s)
{
	struct pollfd p[2] = { { .fd = s->lfd, .events = POLLIN },
			       { .fd = s->cmd[0], .events = POLLIN } };
	struct tlm_msg open, acc = { .type = TLM_MSG_VM_ACCEPT };
	uint8_t chan = 0;
	int fd, rc;

	if (poll(p, 2, 10000) <= 0) {
		snprintf(s->err, sizeof(s->err), "no connection from the daemon");
		return -ETIMEDOUT;
	}
	if (p[1].revents)
		return -ECANCELED;       /* told to quit */
	fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return -errno;
	rc = tlm_proto_server_handshake(fd, s->key, &chan, &open, 5000, s->err, sizeof(s->err));
	if (rc == 0 && open.u.vm_open.ram_size != s->npages * H_PS) {
		snprintf(s->err, sizeof(s->err), "VM_OPEN ram_size %llu",
			 (unsigned long long)open.u.vm_open.ram_size);
		rc = -EINVAL;
	}
	if (rc) {
		close(fd);
		return rc;
	}
	acc.u.vm_accept.page_count = s->npages;
	src_send(fd, &acc);
	if (chan == TLM_CHAN_URGENT)
		s->urg = fd;
	else
		s->bulk = fd;
	return 0;
}

/* One frame from urgent (blocking once readable): 1, 0 on EOF, <0 error. */
static int src_read_frame(struct h_src *s, struct tlm_msg *m)
{
	uint8_t buf[64];
	ssize_t flen;
	char err[128];

	if (tlm_read_full(s->urg, buf, TLM_PROTO_HDR_SIZE) < 0)
		return 0;
	flen = tlm_proto_frame_len(buf, TLM_PROTO_HDR_SIZE, err, sizeof(err));
	if (flen < 0 || (size_t)flen > sizeof(buf))
		return -EBADMSG;
	if (tlm_read_full(s->urg, buf + TLM_PROTO_HDR_SIZE, flen - TLM_PROTO_HDR_SIZE) < 0)
		return 0;
	return tlm_proto_decode(buf, flen, m, NULL, 0, err, sizeof(err)) ? -EBADMSG : 1;
}

/* Drop both sessions (as a crashed or restarted source would) and take new ones. */
static void src_reaccept(struct h_src *s)
{
	pthread_mutex_lock(&s->mu);
	s->ready = false;
	pthread_mutex_unlock(&s->mu);
	if (s->urg >= 0)
		close(s->urg);
	if (s->bulk >= 0)
		close(s->bulk);
	s->urg = s->bulk = -1;
	for (int i = 0; i < 2; i++)
		if (src_accept_one(s) < 0) {
			fprintf(stderr, "fake source: re-accept: %s\n", s->err);
			return;
		}
	pthread_mutex_lock(&s->mu);
	s->ready = true;
	s->sessions++;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static void src_loop(struct h_src *s)
{
	for (;;) {
		struct pollfd p[2] = { { .fd = s->cmd[0], .events = POLLIN },
				       { .fd = s->urg, .events = POLLIN } };
		struct tlm_msg m;
		char c;

		if (poll(p, s->urg >= 0 ? 2 : 1, 200) < 0)
			return;
		if (p[0].revents & POLLIN) {
			if (read(s->cmd[0], &c, 1) != 1 || c == 'Q')
				return;
			if (c == 'G')
				src_go(s);
			if (c == 'X')
				src_reaccept(s);
			if (c == 'D')
				src_done(s, 0);
			if (c == 'R' && s->hold_page != UINT64_MAX) {
				uint64_t hp = s->hold_page;

				s->hold_page = UINT64_MAX;
				src_reply(s, hp);
			}
		}
		if (s->urg >= 0 && (p[1].revents & (POLLIN | POLLHUP))) {
			int rc = src_read_frame(s, &m);

			if (rc <= 0) {
				close(s->urg);
				s->urg = -1;
			} else if (m.type == TLM_MSG_DEMAND) {
				src_demand(s, &m);
			}
		}
	}
}

static void *src_thread(void *arg)
{
	struct h_src *s = arg;

	for (int i = 0; i < 2; i++)
		if (src_accept_one(s) < 0) {
			if (s->err[0])
				fprintf(stderr, "fake source: %s\n", s->err);
			return NULL;
		}
	pthread_mutex_lock(&s->mu);
	s->ready = true;
	s->sessions++;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	src_loop(s);
	return NULL;
}

int h_src_start(struct h_src *s, const struct tlm_key *key, const struct h_page *pages,
		uint64_t npages)
{
	char err[256];
	struct sockaddr_storage sa;
	socklen_t sl = sizeof(sa);

	memset(s, 0, sizeof(*s));
	s->inited = true;
	s->lfd = s->cmd[0] = s->cmd[1] = -1;
	s->urg = s->bulk = -1;
	s->key = key;
	s->pages = pages;
	s->npages = npages;
	s->hold_page = UINT64_MAX;
	s->demands = calloc(npages, sizeof(*s->demands));
	s->sent_urgent = calloc(npages, sizeof(*s->sent_urgent));
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->lfd = tlm_tcp_listen("127.0.0.1:0", err, sizeof(err));
	if (s->lfd < 0 || pipe2(s->cmd, O_CLOEXEC) < 0)
		return -EIO;
	if (getsockname(s->lfd, (struct sockaddr *)&sa, &sl) < 0)
		return -errno;
	s->port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
	if (pthread_create(&s->th, NULL, src_thread, s))
		return -EAGAIN;
	s->started = true;
	return 0;
}

void h_src_cmd(struct h_src *s, char c)
{
	if (write(s->cmd[1], &c, 1) != 1)
		fprintf(stderr, "fake source: command lost\n");
}

bool h_src_wait(struct h_src *s, bool (*pred)(struct h_src *), int timeout_ms)
{
	struct timespec ts;
	bool ok;

	ts = tt_deadline(timeout_ms);
	pthread_mutex_lock(&s->mu);
	while (!(ok = pred(s)))
		if (pthread_cond_timedwait(&s->cv, &s->mu, &ts))
			break;
	ok = pred(s);
	pthread_mutex_unlock(&s->mu);
	return ok;
}

void h_src_stop(struct h_src *s)
{
	if (!s->inited)
		return;
	if (s->started) {
		h_src_cmd(s, 'Q');
		pthread_join(s->th, NULL);
	}
	if (s->urg >= 0)
		close(s->urg);
	if (s->bulk >= 0)
		close(s->bulk);
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->cmd[0] >= 0)
		close(s->cmd[0]);
	if (s->cmd[1] >= 0)
		close(s->cmd[1]);
	free(s->demands);
	free(s->sent_urgent);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	memset(s, 0, sizeof(*s));
}
