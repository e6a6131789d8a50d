/*
 * Protocol version 3 at the source (runtime/source/presend.h): the page server runs in
 * this process (tlm_ps_start / tlm_ps_run in a thread), a child process plays the guest
 * (the template mapped MAP_PRIVATE, registered with userfaultfd WP + WP_ASYNC as
 * libtlm-glue.so does in QEMU), and a test client speaks the protocol on bulk: it keeps
 * the live map and the pre-sent pages, applies the fix map as a destination would, and
 * checks page by page against the stopped guest (classified from scratch): the classes,
 * and the bytes of every DATA page it would place (a KEEP page's pre-sent copy, or the
 * copy sent after freeze).
 *   fix_transitions  after the live map and one round of pre-sent DATA (--presend-max
 *                    spent): a pre-sent page written again, data->zero, zero->data,
 *                    template->data, data->template; exact valid/invalid counts
 *   policy_post      the live map, no PAGES before freeze, the fix, then every DATA page
 *   hybrid_quiet     a quiet guest: ready after round 1 (converged); nothing is sent again
 *                    after freeze
 *   auto_hot         a guest rewriting a hot set all the time: auto is ready early (not
 *                    converging); then stopped mid-rewrite, the full check
 *   hybrid_hot       the same guest: hybrid goes on to --presend-rounds
 *   new_session      a bulk session replaced during live, after the region was ready,
 *                    gets the live map again and the DATA pre-sent again
 * Waits are on conditions (stats, what the client received), never on elapsed time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl.h"
#include "json.h"
#include "log.h"
#include "src_region.h"
#include "src_server.h"
#include "template.h"
#include "tlm_io.h"
#include "tlm_proto.h"
#include "tlm_test.h"
#include "tlm_uffd.h"
#include "util.h"

#define PG 4096u
#define NP 2048u
#define HOT 256u                  /* pages the hot writer rewrites */
#define WAIT_MS 60000
#define WP_FEATURES (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

/* Initial guest: template copy; DATA on every 4th page from 1; ZERO on every 16th from 2
 * (the template has a few zero pages of its own); REF (another template page) on every
 * 16th from 3. */
static bool initial_data(unsigned p)
{
	return p % 4 == 1;
}

enum { OP_WRITE = 1, OP_HOT, OP_HALT };

struct cmd {
	uint32_t op, page;
};

/* ---- the child ("guest") ----------------------------------------------------------------- */

struct hot {
	uint8_t *mem;
	volatile int stop;
};

/* Rewrites the first HOT DATA pages with fresh random bytes, as fast as it can. */
static void *hot_main(void *arg)
{
	struct hot *h = arg;
	uint64_t seed = 4242;

	while (!h->stop) {
		uint64_t p = 1 + 4 * (tt_rand(&seed) % HOT);

		tt_fill(h->mem + p * PG, 64, &seed);
	}
	return NULL;
}

static void child_main(int sock, uint8_t *mem)
{
	struct tlm_uffd u = { .fd = -1 };
	struct hot h = { .mem = mem };
	pthread_t th;
	bool hot = false;
	struct cmd c;
	char ok = 'k';

	if (tlm_uffd_open(&u, 0, WP_FEATURES) < 0 ||
	    tlm_uffd_register(&u, mem, (size_t)NP * PG, TLM_UFFD_MODE_WP, NULL) < 0)
		ok = 'e';
	if (write(sock, &ok, 1) != 1)
		_exit(1);
	while (tlm_read_full(sock, &c, sizeof(c)) == 0) {
		if (c.op == OP_WRITE && tlm_read_full(sock, mem + (size_t)c.page * PG, PG) < 0)
			_exit(1);
		if (c.op == OP_HOT && !hot)
			hot = pthread_create(&th, NULL, hot_main, &h) == 0;
		if (c.op == OP_HALT && hot) {
			h.stop = 1;
			pthread_join(th, NULL);   /* "QMP stop": no write after this */
			hot = false;
		}
		if (write(sock, &ok, 1) != 1)
			_exit(1);
	}
	_exit(0);
}

/* ---- fixture: files, guest, page server ---------------------------------------------------- */

struct fx {
	char dir[64], pages[96], key[96], ctl[96];
	uint8_t *tmpl;
	pid_t pid;
	int sock;
	uint64_t addr;
	struct tlm_key k;
	struct tlm_ps ps;
	pthread_t loop;
	bool running;
	int port;
};

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(tlm_write_full(fd, data, len), 0);
	close(fd);
}

static void child_cmd(struct fx *f, uint32_t op, uint32_t page, const void *data)
{
	struct cmd c = { .op = op, .page = page };
	char r;

	assert_int_equal(tlm_write_full(f->sock, &c, sizeof(c)), 0);
	if (data)
		assert_int_equal(tlm_write_full(f->sock, data, PG), 0);
	assert_int_equal(read(f->sock, &r, 1), 1);
}

static void page_of(struct fx *f, uint8_t *buf, int kind, unsigned k)
{
	uint64_t seed = k + 1000;

	if (kind == 'T' || kind == 'R')
		memcpy(buf, f->tmpl + (size_t)k * PG, PG);
	else if (kind == 'Z')
		memset(buf, 0, PG);
	else
		tt_fill(buf, PG, &seed);
}

static void guest_write(struct fx *f, unsigned page, int kind, unsigned k)
{
	uint8_t buf[PG];

	page_of(f, buf, kind, k);
	child_cmd(f, OP_WRITE, page, buf);
}

/* The guest: fork, register, lay out the initial classes. Skips without WP_ASYNC. */
static void guest_start(struct fx *f)
{
	int sv[2], fd = open(f->pages, O_RDONLY);
	uint8_t *mem;
	char c;

	assert_true(fd >= 0);
	mem = mmap(NULL, (size_t)NP * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(mem != MAP_FAILED);
	close(fd);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	f->addr = (uintptr_t)mem;
	f->pid = fork();
	assert_true(f->pid >= 0);
	if (f->pid == 0) {
		close(sv[0]);
		child_main(sv[1], mem);
	}
	close(sv[1]);
	munmap(mem, (size_t)NP * PG);
	f->sock = sv[0];
	assert_int_equal(read(f->sock, &c, 1), 1);
	if (c != 'k')
		TT_SKIP_CASE("uffd", "the child cannot register WP_ASYNC (Linux 6.7+)\n");
	for (unsigned p = 0; p < NP; p++) {
		if (initial_data(p))
			guest_write(f, p, 'D', p);
		else if (p % 16 == 2)
			guest_write(f, p, 'Z', 0);
		else if (p % 16 == 3)
			guest_write(f, p, 'R', (p + 500) % NP);
	}
}

static void *loop_main(void *arg)
{
	struct fx *f = arg;

	return (void *)(intptr_t)tlm_ps_run(&f->ps);
}

/* The page server on 127.0.0.1:0 with region "g" (the guest), in a thread. */
static void server_start(struct fx *f, const struct tlm_presend_cfg *pre)
{
	char spec[512];
	const char *regions[] = { spec };
	struct tlm_ps_config c = { .listen = "127.0.0.1:0", .key = f->key, .ctl = f->ctl,
				   .regions = regions, .nregions = 1, .presend = *pre };
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	snprintf(spec, sizeof(spec), "g,pid=%d,addr=0x%llx,size=%u,template=%s", (int)f->pid,
		 (unsigned long long)f->addr, NP * PG, f->pages);
	f->ps = (struct tlm_ps)TLM_PS_INIT;
	assert_int_equal(tlm_ps_start(&f->ps, &c), 0);
	assert_int_equal(getsockname(f->ps.lfd, (struct sockaddr *)&ss, &len), 0);
	f->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	assert_int_equal(pthread_create(&f->loop, NULL, loop_main, f), 0);
	f->running = true;
}

static struct tlm_presend_cfg cfg(int policy, uint64_t max_bytes, uint64_t left)
{
	return (struct tlm_presend_cfg){ .policy = policy, .max_bytes = max_bytes,
					 .left_max = left, .rounds_max = 8 };
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	uint64_t seed = 7;
	struct tlm_digest d;
	char err[256], idx[128], hex[65];
	uint8_t raw[32];

	assert_non_null(f);
	tlm_log_init("test_presend", TLM_LOG_INFO);
	snprintf(f->dir, sizeof(f->dir), "/dev/shm/tlm-presend-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->pages, sizeof(f->pages), "%s/pages", f->dir);
	snprintf(f->key, sizeof(f->key), "%s/key", f->dir);
	snprintf(f->ctl, sizeof(f->ctl), "%s/ctl/ps.sock", f->dir);
	f->tmpl = malloc((size_t)NP * PG);
	assert_non_null(f->tmpl);
	tt_fill(f->tmpl, (size_t)NP * PG, &seed);
	for (unsigned i = 5; i < NP; i += 97)
		memset(f->tmpl + (size_t)i * PG, 0, PG);
	write_file(f->pages, f->tmpl, (size_t)NP * PG);
	snprintf(idx, sizeof(idx), "%s%s", f->pages, TLM_TMPL_INDEX_SUFFIX);
	assert_int_equal(tlm_tmpl_build_index(f->pages, idx, 1, &d, err, sizeof(err)), 0);
	tt_fill(raw, sizeof(raw), &seed);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", raw[i]);
	write_file(f->key, hex, 64);
	assert_int_equal(tlm_key_load(f->key, &f->k, err, sizeof(err)), 0);
	f->sock = -1;
	*state = f;
	return 0;
}

static void ctl(struct fx *f, const char *cmd, struct tlm_sbuf *reply)
{
	tlm_sbuf_init(reply);
	assert_int_equal(tlm_ctl_request(f->ctl, cmd, reply, 30000), 0);
	assert_non_null(reply->p);
}

static int teardown(void **state)
{
	struct fx *f = *state;
	struct tlm_sbuf r;
	char cmd[128];
	int st;

	if (f->running) {
		ctl(f, "shutdown", &r);
		tlm_sbuf_fini(&r);
		pthread_join(f->loop, NULL);
	}
	tlm_ps_cleanup(&f->ps);
	if (f->sock >= 0) {
		close(f->sock);
		waitpid(f->pid, &st, 0);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	if (system(cmd) != 0)
		return -1;
	free(f->tmpl);
	free(f);
	return 0;
}

/* ---- stats ------------------------------------------------------------------------------- */

static uint64_t stat_u64(struct fx *f, const char *in, const char *key)
{
	struct tlm_sbuf r;
	uint64_t v = 0;

	ctl(f, "stats g", &r);
	if (tt_json_u64(r.p, in, key, &v) < 0)
		fail_msg("stats has no %s.%s: %s", in ? in : "", key, r.p);
	tlm_sbuf_fini(&r);
	return v;
}

static void stat_str(struct fx *f, const char *key, char *out, size_t len)
{
	struct tlm_sbuf r;

	ctl(f, "stats g", &r);
	if (tt_json_str(r.p, "live", key, out, len) < 0)
		fail_msg("stats has no live.%s: %s", key, r.p);
	tlm_sbuf_fini(&r);
}

struct has {
	struct fx *f;
	const char *needle;
};

static bool stats_has(void *arg)
{
	struct has *h = arg;
	struct tlm_sbuf r;
	bool yes;

	ctl(h->f, "stats g", &r);
	yes = strstr(r.p, h->needle) != NULL;
	tlm_sbuf_fini(&r);
	return yes;
}

static void wait_has(struct fx *f, const char *needle)
{
	struct has h = { f, needle };

	if (!tt_wait(stats_has, &h, WAIT_MS))
		fail_msg("stats never showed %s", needle);
}

struct stat_wait {
	struct fx *f;
	const char *in, *key;
	uint64_t min;
};

static bool stat_reached(void *arg)
{
	struct stat_wait *w = arg;

	return stat_u64(w->f, w->in, w->key) >= w->min;
}

static void wait_stat(struct fx *f, const char *in, const char *key, uint64_t min)
{
	struct stat_wait w = { f, in, key, min };

	if (!tt_wait(stat_reached, &w, WAIT_MS))
		fail_msg("stats %s.%s never reached %llu", in ? in : "", key,
			 (unsigned long long)min);
}

static void wait_ready(struct fx *f)
{
	wait_has(f, "\"ready\":true");
}

static void live(struct fx *f, const char *policy)
{
	struct tlm_sbuf r;
	char cmd[64];

	snprintf(cmd, sizeof(cmd), "live g %s", policy);
	ctl(f, cmd, &r);
	if (!strstr(r.p, "g live:")) {
		if (strstr(r.p, "post-copy"))
			TT_SKIP_CASE("uffd", "no dirty tracking of the guest: %s", r.p);
		fail_msg("live: %s", r.p);
	}
	tlm_sbuf_fini(&r);
}

static void freeze(struct fx *f)
{
	struct tlm_sbuf r;

	ctl(f, "freeze g", &r);
	if (strncmp(r.p, "ok frozen", 9) != 0)
		fail_msg("freeze: %s", r.p);
	tlm_sbuf_fini(&r);
}

/* ---- the test client: a destination's view of one bulk session --------------------------- */

struct dst {
	struct tlm_conn c;
	pthread_t th;
	pthread_mutex_t mu;
	bool stop;
	char err[256];
	/* what arrived (under mu) */
	uint8_t live[NP];            /* live class, 0 = not mapped */
	uint64_t live_k[NP];
	uint64_t live_pages;         /* live map pages received */
	bool live_final, fix_final, whole, done;
	uint8_t fix[NP];             /* fix run class (0 = KEEP) */
	uint8_t cls[NP];             /* the class map once the fix / whole map is in */
	uint64_t k[NP];
	uint64_t fix_pages;
	uint8_t *copy;               /* pre-sent copies */
	bool have[NP];               /* holds a pre-sent copy */
	unsigned presends[NP];
	uint64_t pages_before, pages_after;   /* PAGES pages before / after the fix */
	uint8_t *mem;                /* DATA sent after the fix */
	bool got[NP];
	uint64_t done_data;
};

static void dst_fail(struct dst *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void dst_fail(struct dst *d, const char *fmt, ...)
{
	va_list ap;

	if (d->err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(d->err, sizeof(d->err), fmt, ap);
	va_end(ap);
}

/* A CLASS_MAP frame applied as a destination does. */
static void dst_map(struct dst *d, const struct tlm_msg *m)
{
	uint8_t kind = m->u.class_map.kind;
	uint64_t p = m->u.class_map.first_page;
	uint64_t *at = kind == TLM_MAP_LIVE ? &d->live_pages : &d->fix_pages;

	if (p != *at)
		return dst_fail(d, "CLASS_MAP kind %u starts at %llu, expected %llu", kind,
				(unsigned long long)p, (unsigned long long)*at);
	if (kind == TLM_MAP_FIX && !d->live_final)
		return dst_fail(d, "fix map without a complete live map");
	for (uint32_t i = 0; i < m->u.class_map.nruns; i++) {
		const struct tlm_run *r = &m->u.class_map.runs[i];

		for (uint32_t j = 0; j < r->len && p < NP; j++, p++) {
			uint64_t k = r->cls == TLM_CLASS_TEMPLATE ? p :
				     r->cls == TLM_CLASS_REF ? r->arg + j : 0;

			if (kind == TLM_MAP_LIVE) {
				d->live[p] = r->cls;
				d->live_k[p] = k;
				continue;
			}
			d->fix[p] = r->cls;
			d->cls[p] = r->cls == TLM_CLASS_KEEP ? d->live[p] : r->cls;
			d->k[p] = r->cls == TLM_CLASS_KEEP ? d->live_k[p] : k;
			if (r->cls != TLM_CLASS_KEEP)   /* FIX non-KEEP or WHOLE: drop the copy */
				d->have[p] = false;
		}
	}
	*at = p;
	if (kind == TLM_MAP_WHOLE) {
		d->whole = true;
		memset(d->have, 0, sizeof(d->have));
	}
	if (m->u.class_map.final && kind == TLM_MAP_LIVE)
		d->live_final = true;
	else if (m->u.class_map.final)
		d->fix_final = true;
}

static void dst_pages(struct dst *d, const struct tlm_msg *m)
{
	for (uint32_t i = 0; i < m->u.pages.count; i++) {
		uint64_t p = m->u.pages.page + i;
		const uint8_t *data = m->u.pages.data + (size_t)i * PG;

		if (p >= NP || tlm_proto_pages_sum(m, i) != tlm_proto_page_sum(data))
			return dst_fail(d, "PAGES: page %llu out of range or bad checksum",
					(unsigned long long)p);
		if (!d->fix_final) {
			memcpy(d->copy + p * PG, data, PG);
			d->have[p] = true;
			d->presends[p]++;
			d->pages_before++;
		} else {
			memcpy(d->mem + p * PG, data, PG);
			d->got[p] = true;
			d->pages_after++;
		}
	}
}

static void dst_msg(struct dst *d, const struct tlm_msg *m)
{
	switch (m->type) {
	case TLM_MSG_CLASS_MAP: dst_map(d, m); break;
	case TLM_MSG_PAGES: dst_pages(d, m); break;
	case TLM_MSG_PROGRESS: break;
	case TLM_MSG_DONE:
		d->done = true;
		d->done_data = m->u.done.data_pages;
		break;
	default:
		dst_fail(d, "unexpected %s on bulk", tlm_msg_name(m->type));
	}
}

static void *dst_main(void *arg)
{
	struct dst *d = arg;
	struct pollfd p = { .fd = d->c.fd, .events = POLLIN };
	struct tlm_msg m;
	char err[200];
	int rc;

	for (;;) {
		pthread_mutex_lock(&d->mu);
		while ((rc = tlm_conn_next(&d->c, &m, err, sizeof(err))) > 0)
			dst_msg(d, &m);
		if (rc < 0)
			dst_fail(d, "malformed frame: %s", err);
		rc = d->stop || d->err[0] || d->done;
		pthread_mutex_unlock(&d->mu);
		if (rc)
			return NULL;
		if (poll(&p, 1, 50) == 1 && tlm_conn_read(&d->c) <= 0) {
			pthread_mutex_lock(&d->mu);
			dst_fail(d, "bulk connection closed");
			pthread_mutex_unlock(&d->mu);
			return NULL;
		}
	}
}

static struct dst *dst_open(struct fx *f)
{
	struct dst *d = calloc(1, sizeof(*d));
	struct tlm_msg open = { .type = TLM_MSG_VM_OPEN }, acc;
	char hp[32], err[300];
	int fd;

	assert_non_null(d);
	d->copy = malloc((size_t)NP * PG);
	d->mem = malloc((size_t)NP * PG);
	assert_true(d->copy && d->mem);
	snprintf(hp, sizeof(hp), "127.0.0.1:%d", f->port);
	fd = tlm_tcp_connect(hp, 2000, err, sizeof(err));
	if (fd < 0)
		fail_msg("connect: %s", err);
	open.u.vm_open.ram_size = (uint64_t)NP * PG;
	open.u.vm_open.page_size = PG;
	memcpy(open.u.vm_open.digest, f->ps.regions->digest.b, 16);
	snprintf(open.u.vm_open.vm_id, sizeof(open.u.vm_open.vm_id), "g");
	if (tlm_proto_client_handshake(fd, &f->k, TLM_CHAN_BULK, &open, &acc, 3000, err,
				       sizeof(err)) < 0)
		fail_msg("handshake: %s", err);
	assert_int_equal(tlm_conn_init(&d->c, fd, 0), 0);
	pthread_mutex_init(&d->mu, NULL);
	assert_int_equal(pthread_create(&d->th, NULL, dst_main, d), 0);
	return d;
}

static void dst_close(struct dst *d)
{
	pthread_mutex_lock(&d->mu);
	d->stop = true;
	pthread_mutex_unlock(&d->mu);
	pthread_join(d->th, NULL);
	tlm_conn_fini(&d->c);
	pthread_mutex_destroy(&d->mu);
	free(d->copy);
	free(d->mem);
	free(d);
}

/* A counter of the client's, read under its lock (its thread still runs). */
static uint64_t dst_pages_before(struct dst *d)
{
	uint64_t n;

	pthread_mutex_lock(&d->mu);
	n = d->pages_before;
	pthread_mutex_unlock(&d->mu);
	return n;
}

struct dst_wait {
	struct dst *d;
	int what;             /* 'L' live map, 'P' pre-sent pages >= n, 'D' done */
	uint64_t n;
};

static bool dst_reached(void *arg)
{
	struct dst_wait *w = arg;
	bool yes;

	pthread_mutex_lock(&w->d->mu);
	yes = w->d->err[0] || (w->what == 'L' && w->d->live_final) ||
	      (w->what == 'P' && w->d->pages_before >= w->n) || (w->what == 'D' && w->d->done);
	pthread_mutex_unlock(&w->d->mu);
	return yes;
}

static void dst_wait(struct dst *d, int what, uint64_t n)
{
	struct dst_wait w = { d, what, n };

	if (!tt_wait(dst_reached, &w, WAIT_MS))
		fail_msg("the client never got %c %llu (pre-sent so far %llu)", what,
			 (unsigned long long)n, (unsigned long long)d->pages_before);
	if (d->err[0])
		fail_msg("client: %s", d->err);
}

/* ---- the check: the destination's result against the stopped guest ---------------------- */

static struct tlm_src_region *stopped_guest(struct fx *f)
{
	struct tlm_src_region *r;
	char spec[512], err[256];

	snprintf(spec, sizeof(spec), "fresh,pid=%d,addr=0x%llx,size=%u,template=%s",
		 (int)f->pid, (unsigned long long)f->addr, NP * PG, f->pages);
	if (tlm_src_region_new(&r, spec, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	r->phase = TLM_SRC_FROZEN;
	assert_int_equal(tlm_src_classify(r, err, sizeof(err)), 0);
	return r;
}

static void guest_page(struct tlm_src_region *g, uint64_t p, uint8_t *buf)
{
	const uint8_t *ptr;
	char err[256];

	assert_int_equal(tlm_src_read_pages(g, &p, 1, buf, &ptr, err, sizeof(err)), 0);
	if (ptr != buf)
		memcpy(buf, ptr, PG);
}

/* Class of every page (the live map with the fix applied) and the bytes of every DATA
 * page: a KEEP page's pre-sent copy, else the copy sent after freeze. */
static void check_result(struct fx *f, struct dst *d)
{
	struct tlm_src_region *g = stopped_guest(f);
	uint8_t buf[PG];

	assert_true(d->fix_final && d->done && !d->whole);
	assert_int_equal(d->fix_pages, NP);
	assert_int_equal(d->done_data, g->map.count[TLM_CLASS_DATA]);
	for (uint64_t p = 0; p < NP; p++) {
		uint64_t k;
		enum tlm_page_class c = tlm_cls_map_get(&g->map, p, &k);
		const uint8_t *placed = d->got[p] ? d->mem + p * PG : d->have[p] ?
					d->copy + p * PG : NULL;

		if (d->cls[p] != c || d->k[p] != k)
			fail_msg("page %llu: live %u + fix %u gives class %u (k %llu), the stopped "
				 "guest has %u (k %llu)", (unsigned long long)p, d->live[p],
				 d->fix[p], d->cls[p], (unsigned long long)d->k[p], c,
				 (unsigned long long)k);
		guest_page(g, p, buf);
		if (d->have[p] && memcmp(d->copy + p * PG, buf, PG) != 0)
			fail_msg("page %llu: fix KEEP, but its pre-sent copy (sent %u times) is "
				 "not the stopped guest's", (unsigned long long)p, d->presends[p]);
		if (d->have[p] && d->got[p])
			fail_msg("page %llu: a valid pre-sent copy sent again after freeze",
				 (unsigned long long)p);
		if (c == TLM_CLASS_DATA && !placed)
			fail_msg("DATA page %llu: no valid copy, not sent after freeze",
				 (unsigned long long)p);
		if (c == TLM_CLASS_DATA && memcmp(placed, buf, PG) != 0)
			fail_msg("DATA page %llu: the destination's bytes differ",
				 (unsigned long long)p);
	}
	tlm_src_region_free(g);
}

static uint64_t initial_data_pages(void)
{
	uint64_t n = 0;

	for (unsigned p = 0; p < NP; p++)
		n += initial_data(p);
	return n;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_fix_transitions(void **state)
{
	struct fx *f = *state;
	const uint64_t ndata = initial_data_pages();
	/* one round of pre-sent DATA exactly: nothing is sent again before freeze */
	struct tlm_presend_cfg c = cfg(TLM_POLICY_HYBRID, ndata * PG, 0);
	enum { A = 9, B = 13, C = 18, D = 20, E = 25 };   /* A, B, E: DATA; C: ZERO; D: T */
	struct dst *d;

	guest_start(f);
	server_start(f, &c);
	d = dst_open(f);
	live(f, "hybrid");
	dst_wait(d, 'L', 0);
	assert_int_equal(d->live_pages, NP);
	assert_int_equal(d->live[A], TLM_CLASS_DATA);
	assert_int_equal(d->live[C], TLM_CLASS_ZERO);
	assert_int_equal(d->live[D], TLM_CLASS_TEMPLATE);
	dst_wait(d, 'P', ndata);
	guest_write(f, A, 'D', 77777);         /* again, after its pre-send */
	guest_write(f, B, 'Z', 0);             /* data -> zero */
	guest_write(f, C, 'D', 88888);         /* zero -> data */
	guest_write(f, D, 'D', 99999);         /* template -> data */
	guest_write(f, E, 'T', E);             /* data -> template */
	freeze(f);
	dst_wait(d, 'D', 0);
	check_result(f, d);
	assert_int_equal(d->pages_before, ndata);
	assert_int_equal(d->fix[A], TLM_CLASS_DATA);
	assert_true(d->got[A]);
	assert_int_equal(d->fix[B], TLM_CLASS_ZERO);
	assert_int_equal(d->fix[C], TLM_CLASS_DATA);
	assert_int_equal(d->fix[D], TLM_CLASS_DATA);
	assert_int_equal(d->fix[E], TLM_CLASS_TEMPLATE);
	assert_int_equal(d->fix[1], TLM_CLASS_KEEP);
	/* after freeze only the three new DATA pages: valid copies are skipped */
	assert_int_equal(d->pages_after, 3);
	assert_int_equal(stat_u64(f, "live", "valid_at_freeze"), ndata - 3);
	assert_int_equal(stat_u64(f, "live", "invalid_at_freeze"), 3);
	assert_int_equal(stat_u64(f, "live", "presend_bytes"), ndata * PG);
	assert_int_equal(stat_u64(f, "live", "keep_pages"), NP - 5);
	dst_close(d);
}

static void test_policy_post(void **state)
{
	struct fx *f = *state;
	struct tlm_presend_cfg c = cfg(TLM_POLICY_AUTO, 1ull << 30, 256);
	char why[256];
	struct dst *d;

	guest_start(f);
	server_start(f, &c);
	d = dst_open(f);
	live(f, "post");                       /* overrides --policy auto */
	dst_wait(d, 'L', 0);
	/* the bulk session's round trip, which tells the orchestrator how far we are */
	assert_true(stat_u64(f, NULL, "bulk_rtt_us") > 0);
	wait_ready(f);
	stat_str(f, "ready_why", why, sizeof(why));
	assert_non_null(strstr(why, "post: live map sent"));
	stat_str(f, "policy", why, sizeof(why));
	assert_string_equal(why, "post");
	/* the guest runs on for three worker rounds: still no PAGES */
	wait_stat(f, "live", "rounds", stat_u64(f, "live", "rounds") + 3);
	guest_write(f, 1, 'Z', 0);
	assert_int_equal(dst_pages_before(d), 0);
	assert_int_equal(stat_u64(f, "presend", "sent"), 0);
	freeze(f);
	dst_wait(d, 'D', 0);
	check_result(f, d);
	assert_int_equal(d->pages_before, 0);
	assert_int_equal(d->pages_after, initial_data_pages() - 1);
	assert_int_equal(d->fix[1], TLM_CLASS_ZERO);
	assert_int_equal(stat_u64(f, "live", "keep_pages"), NP - 1);
	dst_close(d);
}

static void test_hybrid_quiet(void **state)
{
	struct fx *f = *state;
	struct tlm_presend_cfg c = cfg(TLM_POLICY_POST, 1ull << 30, 0);
	char why[256];
	struct dst *d;

	guest_start(f);
	server_start(f, &c);
	d = dst_open(f);
	live(f, "hybrid");
	dst_wait(d, 'L', 0);
	wait_ready(f);
	stat_str(f, "ready_why", why, sizeof(why));
	if (!strstr(why, "hybrid: round 1 left 0 pages") || !strstr(why, "converged"))
		fail_msg("ready_why: %s", why);
	freeze(f);
	dst_wait(d, 'D', 0);
	check_result(f, d);
	assert_int_equal(d->pages_after, 0);           /* every copy stands */
	assert_int_equal(stat_u64(f, "presend", "resent"), 0);
	assert_int_equal(stat_u64(f, "live", "valid_at_freeze"), initial_data_pages());
	assert_int_equal(stat_u64(f, "live", "keep_pages"), NP);
	dst_close(d);
}

/* A guest rewriting HOT pages all the time; ready under policy; then "stopped" in the
 * middle of its writes: pages rewritten after their last pre-send and reported by the
 * last collect only must not keep their copies. */
static unsigned hot_run(struct fx *f, const char *policy, char *why, size_t len)
{
	struct tlm_presend_cfg c = cfg(TLM_POLICY_AUTO, 1ull << 30, 16);
	struct dst *d;
	unsigned round = 0;
	const char *at;

	guest_start(f);
	child_cmd(f, OP_HOT, 0, NULL);
	server_start(f, &c);
	d = dst_open(f);
	live(f, policy);
	dst_wait(d, 'L', 0);
	wait_ready(f);
	stat_str(f, "ready_why", why, len);
	at = strstr(why, "round ");
	if (!at || sscanf(at, "round %u", &round) != 1)
		fail_msg("ready_why: %s", why);
	/* ready ends the rounds: two more worker collects with the hot writer running, and
	 * no new round; the hot pages written since their copy are invalid at freeze */
	wait_stat(f, "live", "rounds", stat_u64(f, "live", "rounds") + 2);
	assert_int_equal(stat_u64(f, "presend", "round"), round);
	child_cmd(f, OP_HALT, 0, NULL);
	freeze(f);
	dst_wait(d, 'D', 0);
	check_result(f, d);
	assert_true(round == 1 || stat_u64(f, "presend", "resent") > 0);
	assert_true(stat_u64(f, "live", "invalid_at_freeze") > 0);
	dst_close(d);
	return round;
}

static void test_auto_hot(void **state)
{
	char why[256];
	unsigned round = hot_run(*state, "auto", why, sizeof(why));

	print_message("auto: %s\n", why);
	if (!strstr(why, "not converging"))
		fail_msg("auto on a write-heavy guest: %s", why);
	assert_true(round < 8);
}

static void test_hybrid_hot(void **state)
{
	char why[256];
	unsigned round = hot_run(*state, "hybrid", why, sizeof(why));

	print_message("hybrid: %s\n", why);
	if (!strstr(why, "presend-rounds"))
		fail_msg("hybrid on a write-heavy guest: %s", why);
	assert_int_equal(round, 8);
}

static void test_new_session(void **state)
{
	struct fx *f = *state;
	const uint64_t ndata = initial_data_pages();
	struct tlm_presend_cfg c = cfg(TLM_POLICY_HYBRID, 1ull << 30, 0);
	struct dst *d;

	guest_start(f);
	server_start(f, &c);
	d = dst_open(f);
	live(f, "hybrid");
	dst_wait(d, 'L', 0);
	dst_wait(d, 'P', ndata);
	wait_has(f, "\"ready\":true");         /* round 1 converged: the rounds are over */
	dst_close(d);
	/* the first session is gone once the server says so: a second one is not BUSY */
	wait_has(f, "\"bulk_connected\":false");
	d = dst_open(f);
	dst_wait(d, 'L', 0);
	assert_int_equal(d->live_pages, NP);
	dst_wait(d, 'P', ndata);                /* pre-sent again: nothing is assumed */
	guest_write(f, 1, 'D', 5555);
	freeze(f);
	dst_wait(d, 'D', 0);
	check_result(f, d);
	assert_int_equal(stat_u64(f, NULL, "sessions_opened"), 2);
	dst_close(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fix_transitions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_policy_post, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hybrid_quiet, setup, teardown),
		cmocka_unit_test_setup_teardown(test_auto_hot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hybrid_hot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_new_session, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
