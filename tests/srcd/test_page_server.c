/*
 * End-to-end test of tlm-page-server: the real binary ($TLM_BIN_DIR/tlm-page-server) on
 * 127.0.0.1:0, driven with the real client handshake (tlm_proto_client_handshake), the
 * real framing (tlm_conn) and the control socket (tlm_ctl_request).
 *
 * Regions: "a" (96 MiB RAM file with a 16 MiB template: TEMPLATE/ZERO/REF/DATA pages,
 * ~80 MiB of DATA so the bulk stream cannot finish while the test does not read it),
 * "b" (1 MiB, no template), "p" (this process's memory, added at run time as a pid
 * source). The tests run in order and share the server and some sessions.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tlm_test.h"
#include "tlm_io.h"
#include "tlm_proto.h"
#include "ctl.h"
#include "json.h"
#include "template.h"
#include "util.h"

#define PG TLM_PAGE_SIZE
#define T_PAGES 4096u          /* template: 16 MiB */
#define A_PAGES 24576u         /* region a: 96 MiB */
#define B_PAGES 256u           /* region b: 1 MiB, no template */
#define P_PAGES 1024u          /* region p: 4 MiB of this process */
#define IO_MS 10000

struct env {
	char dir[80], key[128], ctl[128], tmpl[128], ram_a[128], ram_b[128], log[128];
	char hostport[32];
	struct tlm_key k;
	pid_t pid;
	struct tlm_digest digest;
	uint8_t *t, *a, *b, *p;    /* template, region contents (p: live memory) */
	uint64_t a_data;           /* DATA pages of region a (random pages) */
	struct tlm_conn a_urgent, a_bulk, b_bulk, b_urgent;
	uint8_t a_sent_urgent[A_PAGES];
};

static struct env E;
static uint64_t rng = 0x2545f4914f6cdd1dull;

static void fill_random(uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i += 8) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		memcpy(p + i, &rng, 8);
	}
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	if (fd < 0 || tlm_write_full(fd, data, len) < 0)
		fail_msg("%s: %s", path, strerror(errno));
	close(fd);
}

/* ---- fixtures -------------------------------------------------------------------------- */

/* Region a: template copy, then per 16 pages: 1 random, 1 zero, 1 copy of another
 * template page; pages past the template are random with every 64th zero. */
static void make_data(void)
{
	char err[256], idx[160];

	E.t = malloc((size_t)T_PAGES * PG);
	E.a = malloc((size_t)A_PAGES * PG);
	E.b = malloc((size_t)B_PAGES * PG);
	assert_true(E.t && E.a && E.b);
	fill_random(E.t, (size_t)T_PAGES * PG);
	for (unsigned i = 5; i < T_PAGES; i += 97)
		memset(E.t + (size_t)i * PG, 0, PG);
	memcpy(E.a, E.t, (size_t)T_PAGES * PG);
	for (unsigned i = 0; i < A_PAGES; i++) {
		uint8_t *pg = E.a + (size_t)i * PG;

		if (i >= T_PAGES ? i % 64 == 0 : i % 16 == 2) {
			memset(pg, 0, PG);
		} else if (i >= T_PAGES || i % 16 == 1) {
			fill_random(pg, PG);
			E.a_data++;
		} else if (i % 16 == 3) {
			memcpy(pg, E.t + (size_t)((i + 1000) % T_PAGES) * PG, PG);
		}
	}
	fill_random(E.b, (size_t)B_PAGES * PG);
	for (unsigned i = 0; i < B_PAGES; i += 3)
		memset(E.b + (size_t)i * PG, 0, PG);
	write_file(E.tmpl, E.t, (size_t)T_PAGES * PG, 0600);
	write_file(E.ram_a, E.a, (size_t)A_PAGES * PG, 0600);
	write_file(E.ram_b, E.b, (size_t)B_PAGES * PG, 0600);
	snprintf(idx, sizeof(idx), "%s%s", E.tmpl, TLM_TMPL_INDEX_SUFFIX);
	if (tlm_tmpl_build_index(E.tmpl, idx, 0, &E.digest, err, sizeof(err)) < 0)
		fail_msg("%s", err);
}

static void make_key(void)
{
	uint8_t raw[32];
	char hex[65], err[256];

	fill_random(raw, sizeof(raw));
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", raw[i]);
	write_file(E.key, hex, 64, 0600);
	if (tlm_key_load(E.key, &E.k, err, sizeof(err)) < 0)
		fail_msg("%s", err);
}

/* Read "port N" from the server's stdout. */
static void wait_port(int rfd)
{
	char line[64] = "";
	size_t len = 0;
	struct pollfd p = { .fd = rfd, .events = POLLIN };

	while (!strchr(line, '\n') && len < sizeof(line) - 1 && poll(&p, 1, IO_MS) == 1) {
		ssize_t n = read(rfd, line + len, sizeof(line) - 1 - len);

		if (n <= 0)
			break;
		len += (size_t)n;
		line[len] = '\0';
	}
	if (strncmp(line, "port ", 5) != 0)
		fail_msg("no 'port N' line from tlm-page-server (got '%s'), see %s", line, E.log);
	snprintf(E.hostport, sizeof(E.hostport), "127.0.0.1:%d", atoi(line + 5));
}

static void start_server(void)
{
	const char *bindir = getenv("TLM_BIN_DIR");
	char bin[512], ra[300], rb[300];
	int pfd[2];

	snprintf(bin, sizeof(bin), "%s/tlm-page-server", bindir ? bindir : ".");
	snprintf(ra, sizeof(ra), "a,file=%s,template=%s", E.ram_a, E.tmpl);
	snprintf(rb, sizeof(rb), "b,file=%s", E.ram_b);
	assert_int_equal(pipe(pfd), 0);
	E.pid = fork();
	assert_true(E.pid >= 0);
	if (E.pid == 0) {
		int lfd = open(E.log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		dup2(pfd[1], 1);
		dup2(lfd, 2);
		execl(bin, bin, "--listen", "127.0.0.1:0", "--key", E.key, "--ctl", E.ctl,
		      "--region", ra, "--region", rb, "--log-level", "debug", (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	close(pfd[1]);
	wait_port(pfd[0]);
	close(pfd[0]);
}

static int setup(void **state)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

	snprintf(E.dir, sizeof(E.dir), "%s/tlm-srcd-e2e-XXXXXX", base);
	if (!mkdtemp(E.dir))
		return -1;
	snprintf(E.key, sizeof(E.key), "%s/key", E.dir);
	snprintf(E.ctl, sizeof(E.ctl), "%s/ctl/ps.sock", E.dir);
	snprintf(E.tmpl, sizeof(E.tmpl), "%s/base.pages", E.dir);
	snprintf(E.ram_a, sizeof(E.ram_a), "%s/ram-a", E.dir);
	snprintf(E.ram_b, sizeof(E.ram_b), "%s/ram-b", E.dir);
	snprintf(E.log, sizeof(E.log), "%s/page-server.log", E.dir);
	E.a_urgent.fd = E.a_bulk.fd = E.b_bulk.fd = E.b_urgent.fd = -1;
	make_key();
	make_data();
	start_server();
	return 0;
}

static int teardown(void **state)
{
	char cmd[600];

	if (E.pid > 0) {
		kill(E.pid, SIGKILL);
		waitpid(E.pid, NULL, 0);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", E.dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cleanup of %s failed\n", E.dir);
	return 0;
}

/* ---- client helpers -------------------------------------------------------------------- */

static int open_session(const char *vm, uint8_t chan, uint64_t pages, const uint8_t *digest,
			const struct tlm_key *k, char *err, size_t errlen)
{
	struct tlm_msg open = { .type = TLM_MSG_VM_OPEN }, acc;
	int fd = tlm_tcp_connect(E.hostport, 2000, err, errlen);

	if (fd < 0)
		return fd;
	open.u.vm_open.ram_size = pages * PG;
	open.u.vm_open.page_size = PG;
	if (digest)
		memcpy(open.u.vm_open.digest, digest, 16);
	snprintf(open.u.vm_open.vm_id, sizeof(open.u.vm_open.vm_id), "%s", vm);
	int rc = tlm_proto_client_handshake(fd, k, chan, &open, &acc, 3000, err, errlen);

	if (rc < 0) {
		close(fd);
		return rc;
	}
	if (acc.u.vm_accept.page_count != pages)
		fail_msg("VM_ACCEPT page count %llu, want %llu",
			 (unsigned long long)acc.u.vm_accept.page_count, (unsigned long long)pages);
	return fd;
}

static void open_conn(struct tlm_conn *c, const char *vm, uint8_t chan, uint64_t pages,
		      const uint8_t *digest)
{
	char err[300];
	int fd = open_session(vm, chan, pages, digest, &E.k, err, sizeof(err));

	if (fd < 0)
		fail_msg("open %s %s: %s", vm, chan == TLM_CHAN_URGENT ? "urgent" : "bulk", err);
	assert_int_equal(tlm_conn_init(c, fd, 0), 0);
}

/* Next message: 1, 0 on timeout, -1 on EOF/error. */
static int next_msg(struct tlm_conn *c, struct tlm_msg *m, int timeout_ms)
{
	char err[200];
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	int rc;

	for (;;) {
		rc = tlm_conn_next(c, m, err, sizeof(err));
		if (rc < 0)
			fail_msg("malformed frame from the server: %s", err);
		if (rc > 0)
			return 1;
		if (poll(&p, 1, timeout_ms) != 1)
			return 0;
		if (tlm_conn_read(c) <= 0)
			return -1;
	}
}

static void send_msg(struct tlm_conn *c, const struct tlm_msg *m)
{
	assert_int_equal(tlm_conn_queue(c, m), 0);
	assert_int_equal(tlm_conn_flush(c), 0);
}

static void demand(struct tlm_conn *c, uint64_t page, uint32_t count)
{
	struct tlm_msg m = { .type = TLM_MSG_DEMAND, .u.demand = { page, count } };

	send_msg(c, &m);
}

static void ctl(const char *cmd, struct tlm_sbuf *reply)
{
	tlm_sbuf_init(reply);
	assert_int_equal(tlm_ctl_request(E.ctl, cmd, reply, 30000), 0);
	assert_non_null(reply->p);
}

static void expect_ctl(const char *cmd, const char *want)
{
	struct tlm_sbuf r;

	ctl(cmd, &r);
	if (!strstr(r.p, want))
		fail_msg("'%s' replied '%s', want '%s'", cmd, r.p, want);
	tlm_sbuf_fini(&r);
}

static const uint8_t *tpage(uint64_t k)
{
	assert_true(k < T_PAGES);
	return E.t + k * PG;
}

/* A PAGE's checksum and bytes; a ZERO or REF reply's claim against the real content. */
static void check_page_msg(const struct tlm_msg *m, const uint8_t *ram, uint64_t npages)
{
	assert_true(m->u.page.page < npages);
	assert_int_equal(m->u.page.xxh64, tlm_proto_page_sum(m->u.page.data));
	assert_memory_equal(m->u.page.data, ram + m->u.page.page * PG, PG);
}

static void check_claim(uint8_t cls, uint64_t page, uint64_t k, const uint8_t *ram,
			uint64_t tmpl_base)
{
	const uint8_t *p = ram + page * PG;

	switch (cls) {
	case TLM_CLASS_TEMPLATE:
		assert_memory_equal(p, tpage(tmpl_base + page), PG);
		break;
	case TLM_CLASS_ZERO:
		assert_true(tlm_page_is_zero(p));
		break;
	case TLM_CLASS_REF:
		assert_memory_equal(p, tpage(k), PG);
		break;
	case TLM_CLASS_DATA:
		assert_false(tlm_page_is_zero(p));
		break;
	default:
		fail_msg("page %llu: class %u", (unsigned long long)page, cls);
	}
}

/* Read urgent replies until every page in [page, page + count) was answered. */
static void read_replies(struct tlm_conn *c, uint64_t page, uint32_t count, const uint8_t *ram,
			 uint64_t npages, uint8_t *sent)
{
	uint8_t *got = calloc(count, 1);
	uint32_t left = count;
	struct tlm_msg m;

	assert_non_null(got);
	while (left) {
		uint64_t first = 0, n = 0;

		assert_int_equal(next_msg(c, &m, IO_MS), 1);
		if (m.type == TLM_MSG_PAGE) {
			check_page_msg(&m, ram, npages);
			first = m.u.page.page;
			n = 1;
			if (sent)
				sent[first] = 1;
		} else if (m.type == TLM_MSG_ZERO || m.type == TLM_MSG_REF) {
			first = m.type == TLM_MSG_ZERO ? m.u.zero.page : m.u.ref.page;
			n = m.type == TLM_MSG_ZERO ? m.u.zero.count : m.u.ref.count;
			for (uint64_t i = 0; i < n; i++)
				check_claim(m.type == TLM_MSG_ZERO ? TLM_CLASS_ZERO : TLM_CLASS_REF,
					    first + i, m.u.ref.tmpl_page + i, ram, 0);
		} else {
			fail_msg("unexpected %s on urgent", tlm_msg_name(m.type));
		}
		for (uint64_t i = first; i < first + n; i++) {
			if (i < page || i >= page + count)
				continue;       /* another pending demand's page */
			if (!got[i - page]++)
				left--;
		}
	}
	free(got);
}

struct stream {
	uint8_t *cls;              /* from the class map */
	uint64_t *order;           /* first page of each DATA frame, in stream order */
	uint64_t pages_bulk, frames_bulk, progress, done_pages;
};

static void stream_free(struct stream *s)
{
	free(s->cls);
	free(s->order);
}

/* The whole bulk stream: class map (claims checked), PAGES (checksums, content, every
 * DATA page exactly once counting urgent ones), PROGRESS, DONE. */
static void read_stream(struct tlm_conn *c, const uint8_t *ram, uint64_t npages,
			uint64_t tmpl_base, const uint8_t *sent_urgent, struct stream *s)
{
	uint64_t mapped = 0, data = 0;
	uint8_t *got = calloc(npages, 1);
	struct tlm_msg m;
	bool final = false;

	memset(s, 0, sizeof(*s));
	s->cls = calloc(npages, 1);
	s->order = calloc(npages, sizeof(*s->order));
	assert_true(got && s->cls && s->order);
	while (!final) {
		assert_int_equal(next_msg(c, &m, IO_MS), 1);
		assert_int_equal(m.type, TLM_MSG_CLASS_MAP);
		assert_int_equal(m.u.class_map.first_page, mapped);
		final = m.u.class_map.final;
		for (uint32_t i = 0; i < m.u.class_map.nruns; i++) {
			const struct tlm_run *r = &m.u.class_map.runs[i];

			assert_true(mapped + r->len <= npages);
			for (uint32_t j = 0; j < r->len; j++, mapped++) {
				check_claim(r->cls, mapped, r->arg + j, ram, tmpl_base);
				s->cls[mapped] = r->cls;
				data += r->cls == TLM_CLASS_DATA;
			}
		}
	}
	assert_int_equal(mapped, npages);
	for (;;) {
		assert_int_equal(next_msg(c, &m, IO_MS), 1);
		if (m.type == TLM_MSG_DONE)
			break;
		if (m.type == TLM_MSG_PROGRESS) {
			assert_true(m.u.progress.pages_sent <= m.u.progress.pages_total);
			assert_int_equal(m.u.progress.pages_total, data);
			s->progress++;
			continue;
		}
		/* Runs of DATA pages come as PAGES frames (one page: PAGE or PAGES). */
		assert_true(m.type == TLM_MSG_PAGES || m.type == TLM_MSG_PAGE);
		if (m.type == TLM_MSG_PAGE)
			m.u.pages = (typeof(m.u.pages)){ m.u.page.page, 1, NULL, m.u.page.data };
		assert_true(m.u.pages.page + m.u.pages.count <= npages);
		s->order[s->frames_bulk++] = m.u.pages.page;
		for (uint32_t i = 0; i < m.u.pages.count; i++) {
			uint64_t page = m.u.pages.page + i;
			const uint8_t *d = m.u.pages.data + (size_t)i * PG;

			if (m.u.pages.sums)
				assert_int_equal(tlm_proto_pages_sum(&m, i), tlm_proto_page_sum(d));
			assert_memory_equal(d, ram + page * PG, PG);
			assert_int_equal(s->cls[page], TLM_CLASS_DATA);
			assert_false(got[page]);
			assert_false(sent_urgent && sent_urgent[page]);
			got[page] = 1;
			s->pages_bulk++;
		}
	}
	s->done_pages = m.u.done.data_pages;
	assert_int_equal(m.u.done.data_pages, data);
	assert_int_equal(m.u.done.bytes, s->pages_bulk * PG);
	for (uint64_t i = 0; i < npages; i++)
		if (s->cls[i] == TLM_CLASS_DATA && !got[i] && !(sent_urgent && sent_urgent[i]))
			fail_msg("DATA page %llu never arrived", (unsigned long long)i);
	free(got);
}

/* CPU time (user + system, clock ticks) the server has used so far. */
static unsigned long long server_cpu_ticks(void)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)E.pid);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n > 0);
	buf[n] = '\0';
	p = strrchr(buf, ')');      /* fields after the command name */
	assert_non_null(p);
	assert_int_equal(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
				&ut, &st), 2);
	return ut + st;
}

static bool peer_closed(int fd, int timeout_ms)
{
	uint8_t buf[4096];
	struct pollfd p = { .fd = fd, .events = POLLIN };

	/* The server may say why (ERROR) before it closes: read until EOF. */
	while (poll(&p, 1, timeout_ms) == 1) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n <= 0)
			return true;
	}
	return false;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_wrong_key(void **state)
{
	struct tlm_key bad = E.k;
	char err[300] = "";
	int fd;

	bad.b[0] ^= 0xff;
	fd = open_session("a", TLM_CHAN_URGENT, A_PAGES, E.digest.b, &bad, err, sizeof(err));
	assert_true(fd < 0);
	print_message("wrong key: %s\n", err);
	assert_non_null(strstr(err, "authentication"));
}

/* HELLO .. AUTH by hand on a new connection; returns the server's answer to AUTH. With
 * auth NULL the proof is computed for this connection's challenge and stored in *proof. */
static void raw_auth(const struct tlm_msg *hello, const struct tlm_msg *auth,
		     struct tlm_msg *proof, struct tlm_msg *answer)
{
	char err[300];
	struct tlm_conn c;
	struct tlm_msg ch;
	int fd = tlm_tcp_connect(E.hostport, 2000, err, sizeof(err));

	assert_true(fd >= 0);
	assert_int_equal(tlm_conn_init(&c, fd, 0), 0);
	send_msg(&c, hello);
	assert_int_equal(next_msg(&c, &ch, IO_MS), 1);
	assert_int_equal(ch.type, TLM_MSG_CHALLENGE);
	if (!auth) {
		*proof = (struct tlm_msg){ .type = TLM_MSG_AUTH };
		tlm_proto_mac(&E.k, "tlm1-cli", ch.u.challenge.nonce, hello->u.hello.nonce,
			      hello->u.hello.channel, proof->u.auth.mac);
		auth = proof;
	}
	send_msg(&c, auth);
	assert_int_equal(next_msg(&c, answer, IO_MS), 1);
	tlm_conn_fini(&c);
}

/* A recorded handshake (HELLO and AUTH of a session the server accepted) replayed on a new
 * connection to the real daemon: the server's fresh nonce makes the old proof worthless. */
static void test_replayed_handshake(void **state)
{
	struct tlm_msg hello = { .type = TLM_MSG_HELLO }, auth, m;

	hello.u.hello.ver_min = hello.u.hello.ver_max = TLM_PROTO_VERSION;
	hello.u.hello.channel = TLM_CHAN_URGENT;
	assert_int_equal(tlm_proto_random(hello.u.hello.nonce, 32), 0);
	raw_auth(&hello, NULL, &auth, &m);
	assert_int_equal(m.type, TLM_MSG_AUTH_OK);
	raw_auth(&hello, &auth, NULL, &m);
	assert_int_equal(m.type, TLM_MSG_ERROR);
	assert_int_equal(m.u.error.code, TLM_ERR_AUTH);
	print_message("replay: %s\n", m.u.error.msg);
}

static void test_unknown_vm(void **state)
{
	char err[300] = "";
	int fd = open_session("nope", TLM_CHAN_URGENT, A_PAGES, E.digest.b, &E.k, err,
			      sizeof(err));

	assert_true(fd < 0);
	assert_non_null(strstr(err, "unknown VM 'nope'"));
}

static void test_mismatch(void **state)
{
	uint8_t other[16];
	char err[300] = "";
	int fd;

	memcpy(other, E.digest.b, 16);
	other[3] ^= 1;
	fd = open_session("a", TLM_CHAN_BULK, A_PAGES, other, &E.k, err, sizeof(err));
	assert_true(fd < 0);
	print_message("digest: %s\n", err);
	assert_non_null(strstr(err, "template digest mismatch"));
	/* A template-less region has digest zero. */
	fd = open_session("b", TLM_CHAN_BULK, B_PAGES, E.digest.b, &E.k, err, sizeof(err));
	assert_true(fd < 0);
	assert_non_null(strstr(err, "source has none"));
	fd = open_session("a", TLM_CHAN_BULK, A_PAGES - 1, E.digest.b, &E.k, err, sizeof(err));
	assert_true(fd < 0);
	assert_non_null(strstr(err, "size mismatch"));
}

/* Before freeze: sessions open, demands are queued and nothing is answered; `live`
 * without a process to track leaves the region to post-copy. */
static void test_prefreeze(void **state)
{
	char err[300] = "";
	struct tlm_msg m;
	int fd;

	open_conn(&E.a_urgent, "a", TLM_CHAN_URGENT, A_PAGES, E.digest.b);
	demand(&E.a_urgent, A_PAGES - 1, 1);      /* DATA, far behind the bulk stream */
	demand(&E.a_urgent, 0, 64);               /* all four classes */
	assert_int_equal(next_msg(&E.a_urgent, &m, 300), 0);
	fd = open_session("a", TLM_CHAN_URGENT, A_PAGES, E.digest.b, &E.k, err, sizeof(err));
	assert_true(fd < 0);
	assert_non_null(strstr(err, "already has an open urgent session"));
	expect_ctl("stats a", "\"state\":\"configured\"");
	/* A file source without pid=: no live phase, it stays configured (post-copy). */
	expect_ctl("live nope", "error: live needs a known region id");
	expect_ctl("live a", "a post-copy: no dirty tracking (no process to track");
	expect_ctl("stats a", "\"method\":\"none\"");
	expect_ctl("stats a", "\"state\":\"configured\"");
}

/* The next message must be an ERROR saying `want`, then the server closes. */
static void expect_error(struct tlm_conn *c, const char *want)
{
	struct tlm_msg m;
	int rc;

	while ((rc = next_msg(c, &m, IO_MS)) == 1 && m.type != TLM_MSG_ERROR)
		;
	assert_int_equal(rc, 1);
	print_message("server: %s\n", m.u.error.msg);
	if (!strstr(m.u.error.msg, want))
		fail_msg("ERROR '%s', want '%s'", m.u.error.msg, want);
	assert_int_equal(next_msg(c, &m, IO_MS), -1);
	tlm_conn_fini(c);
}

/* A session is bound to the VM it opened: it can neither reach pages past that VM's end
 * (b has 256 pages, a has 24576) nor open another VM. */
static void test_session_bound_to_vm(void **state)
{
	struct tlm_msg open = { .type = TLM_MSG_VM_OPEN };
	struct tlm_conn c;

	open_conn(&c, "b", TLM_CHAN_URGENT, B_PAGES, NULL);
	demand(&c, B_PAGES - 1, 2);
	expect_error(&c, "DEMAND 255+2 past the last page 255");
	open_conn(&c, "b", TLM_CHAN_URGENT, B_PAGES, NULL);
	open.u.vm_open.ram_size = (uint64_t)A_PAGES * PG;
	open.u.vm_open.page_size = PG;
	memcpy(open.u.vm_open.digest, E.digest.b, 16);
	strcpy(open.u.vm_open.vm_id, "a");
	send_msg(&c, &open);
	expect_error(&c, "unexpected VM_OPEN on the urgent channel");
}

/* A peer that connects and never speaks holds only its own handshake thread: a real
 * destination connecting meanwhile gets its session first, and the silent peer is dropped
 * when its handshake times out (3 s) - in the log, in that order. */
static void test_silent_peer(void **state)
{
	static char buf[1 << 20];
	char err[300];
	struct tlm_conn c;
	off_t start;
	ssize_t n;
	int silent, fd = open(E.log, O_RDONLY);
	char *sess, *timeout;

	assert_true(fd >= 0);
	start = lseek(fd, 0, SEEK_END);
	silent = tlm_tcp_connect(E.hostport, 2000, err, sizeof(err));
	assert_true(silent >= 0);
	open_conn(&c, "b", TLM_CHAN_URGENT, B_PAGES, NULL);
	assert_true(peer_closed(silent, IO_MS));
	close(silent);
	tlm_conn_fini(&c);
	n = pread(fd, buf, sizeof(buf) - 1, start);
	close(fd);
	assert_true(n > 0);
	buf[n] = '\0';
	sess = strstr(buf, "b: urgent session from");
	timeout = strstr(buf, "handshake failed: handshake timed out");
	if (!sess || !timeout || sess > timeout)
		fail_msg("the session must come before the silent peer's timeout:\n%s", buf);
}

/* A malformed frame drops that connection only; a new session of the same VM works. */
static void test_malformed_frame(void **state)
{
	static const uint8_t junk[16] = { 0x10, 0, 0, 0, 0x63, 0, 0, 0 };   /* type 99 */
	struct tlm_conn bad;

	open_conn(&bad, "b", TLM_CHAN_URGENT, B_PAGES, NULL);
	open_conn(&E.b_bulk, "b", TLM_CHAN_BULK, B_PAGES, NULL);
	assert_int_equal(tlm_write_full(bad.fd, junk, sizeof(junk)), 0);
	assert_true(peer_closed(bad.fd, IO_MS));
	tlm_conn_fini(&bad);
	open_conn(&E.b_urgent, "b", TLM_CHAN_URGENT, B_PAGES, NULL);
	/* Region a's session did not notice anything. */
	demand(&E.a_urgent, 100, 1);
}

/* freeze: queued demands answered at once, urgent replies while bulk is still stuck,
 * then the whole bulk stream. */
static void test_freeze_stream(void **state)
{
	unsigned long long ticks;
	struct tlm_sbuf r;
	struct stream s;

	open_conn(&E.a_bulk, "a", TLM_CHAN_BULK, A_PAGES, E.digest.b);
	expect_ctl("freeze a", "ok frozen");
	read_replies(&E.a_urgent, A_PAGES - 1, 1, E.a, A_PAGES, E.a_sent_urgent);
	read_replies(&E.a_urgent, 0, 64, E.a, A_PAGES, E.a_sent_urgent);
	read_replies(&E.a_urgent, 100, 1, E.a, A_PAGES, E.a_sent_urgent);
	/* A demand after freeze, while we have read nothing of bulk (80 MiB of DATA
	 * cannot fit in socket buffers): answered although bulk is not finished. */
	demand(&E.a_urgent, A_PAGES - 2, 2);
	read_replies(&E.a_urgent, A_PAGES - 2, 2, E.a, A_PAGES, E.a_sent_urgent);
	ctl("stats a", &r);
	if (!strstr(r.p, "\"state\":\"streaming\""))
		fail_msg("bulk should still be streaming: %s", r.p);
	tlm_sbuf_fini(&r);
	/* Bulk blocked on a full socket: the server waits for EPOLLOUT, it does not spin. */
	ticks = server_cpu_ticks();
	usleep(500 * 1000);
	ticks = server_cpu_ticks() - ticks;
	if (ticks > 10)
		fail_msg("server used %llu ticks in 0.5 s with bulk blocked: busy loop", ticks);
	read_stream(&E.a_bulk, E.a, A_PAGES, 0, E.a_sent_urgent, &s);
	assert_int_equal(s.done_pages, E.a_data);
	print_message("a: %llu DATA pages on bulk, %llu PROGRESS\n",
		      (unsigned long long)s.pages_bulk, (unsigned long long)s.progress);
	assert_true(s.pages_bulk < E.a_data);
	stream_free(&s);
	expect_ctl("stats a", "\"state\":\"done\"");
}

static void test_template_less(void **state)
{
	uint8_t sent[B_PAGES] = { 0 };
	struct stream s;

	demand(&E.b_urgent, 0, 8);
	expect_ctl("freeze b", "ok frozen");
	read_replies(&E.b_urgent, 0, 8, E.b, B_PAGES, sent);
	read_stream(&E.b_bulk, E.b, B_PAGES, 0, sent, &s);
	for (unsigned i = 0; i < B_PAGES; i++)
		assert_int_equal(s.cls[i], i % 3 ? TLM_CLASS_DATA : TLM_CLASS_ZERO);
	/* DATA comes in runs of two here: one frame per run, not per page. */
	print_message("b: %llu DATA pages on bulk in %llu frames\n",
		      (unsigned long long)s.pages_bulk, (unsigned long long)s.frames_bulk);
	assert_true(s.frames_bulk * 3 / 2 <= s.pages_bulk + 1);
	stream_free(&s);
}

/* --bulk-hold at run time: after freeze the class map goes and demands are answered, but
 * no DATA page moves on bulk until `bulk-release` (tests make faults happen while pages
 * are certainly missing). Region h serves ram-b again under another id. */
static void test_bulk_hold(void **state)
{
	uint8_t sent[B_PAGES] = { 0 };
	struct tlm_conn urg, bulk;
	struct stream s;
	char cmd[400];
	uint64_t n = 1;

	snprintf(cmd, sizeof(cmd), "add-region h,file=%s", E.ram_b);
	expect_ctl(cmd, "ok added h");
	expect_ctl("bulk-hold nope", "error: bulk-hold needs a known region id");
	expect_ctl("bulk-hold h", "ok holding h");
	open_conn(&urg, "h", TLM_CHAN_URGENT, B_PAGES, NULL);
	open_conn(&bulk, "h", TLM_CHAN_BULK, B_PAGES, NULL);
	expect_ctl("freeze h", "ok frozen");
	demand(&urg, 1, 2);                          /* pages 1 and 2 are DATA */
	read_replies(&urg, 1, 2, E.b, B_PAGES, sent);
	expect_ctl("stats h", "\"bulk_held\":true");
	/* The demand went through the loop after freeze, so bulk had every chance to send. */
	expect_ctl("stats h", "\"data_sent_bulk\":0,");
	expect_ctl("bulk-release h", "ok released h");
	read_stream(&bulk, E.b, B_PAGES, 0, sent, &s);
	assert_true(s.pages_bulk > 0);
	for (unsigned i = 0; i < B_PAGES; i++)
		n += s.cls[i] == TLM_CLASS_DATA;
	assert_int_equal(s.done_pages + 1, n);
	expect_ctl("stats h", "\"bulk_held\":false");
	stream_free(&s);
	tlm_conn_fini(&urg);
	tlm_conn_fini(&bulk);
}

/* Read bulk frames up to and including the next PAGES frame: its first page. */
static uint64_t next_pages_frame(struct tlm_conn *bulk, uint32_t *count)
{
	struct tlm_msg m;

	do
		assert_int_equal(next_msg(bulk, &m, IO_MS), 1);
	while (m.type != TLM_MSG_PAGES);
	*count = m.u.pages.count;
	return m.u.pages.page;
}

/* The next urgent reply must be about page (a DATA reply: PAGE or PAGES from it). */
static void expect_reply_for(struct tlm_conn *urg, uint64_t page)
{
	struct tlm_msg m;
	uint64_t got;

	assert_int_equal(next_msg(urg, &m, IO_MS), 1);
	assert_true(m.type == TLM_MSG_PAGE || m.type == TLM_MSG_PAGES);
	got = m.type == TLM_MSG_PAGE ? m.u.page.page : m.u.pages.page;
	if (got != page)
		fail_msg("urgent reply for page %llu, expected %llu", (unsigned long long)got,
			 (unsigned long long)page);
}

static void credit(struct tlm_conn *urg, uint64_t bytes)
{
	struct tlm_msg m = { .type = TLM_MSG_CREDIT, .u.credit.bulk_bytes = bytes };

	send_msg(urg, &m);
}

/*
 * A demand for a page already queued on bulk is left to that copy only when the
 * destination's CREDIT shows the copy is close: without a credit, and for a frame the
 * destination says it has handled, it is answered on urgent; for a frame just ahead of
 * the credit it rides bulk (the reply to a later demand comes first, none for it).
 */
static void test_demand_rides_bulk(void **state)
{
	struct tlm_conn urg, bulk;
	uint64_t p1, p2, p3, last = A_PAGES - 1, before;
	uint32_t n;
	char cmd[400];

	snprintf(cmd, sizeof(cmd), "add-region ride,file=%s", E.ram_a);
	expect_ctl(cmd, "ok added ride");
	open_conn(&urg, "ride", TLM_CHAN_URGENT, A_PAGES, NULL);
	open_conn(&bulk, "ride", TLM_CHAN_BULK, A_PAGES, NULL);
	expect_ctl("freeze ride", "ok frozen");
	p1 = next_pages_frame(&bulk, &n);
	demand(&urg, p1, 1);                          /* no credit yet: urgent */
	expect_reply_for(&urg, p1);
	p2 = next_pages_frame(&bulk, &n);
	credit(&urg, tlm_conn_handled(&bulk));        /* we have handled p2's frame */
	demand(&urg, p2, 1);
	expect_reply_for(&urg, p2);
	before = tlm_conn_handled(&bulk);
	p3 = next_pages_frame(&bulk, &n);             /* its frame is in flight ... */
	credit(&urg, before);                         /* ... as far as the server knows */
	demand(&urg, p3, 1);
	demand(&urg, last, 1);                        /* far ahead: not queued on bulk */
	expect_reply_for(&urg, last);                 /* so p3 was left to bulk */
	expect_ctl("stats ride", "\"demand_on_bulk\":1,");
	tlm_conn_fini(&urg);
	tlm_conn_fini(&bulk);
}

/*
 * A demand far ahead of the bulk cursor makes the stream jump: the DATA pages right after
 * the demanded one come next (behind only what was queued or in flight when the demand
 * came), then the stream goes back below it. Every DATA page still arrives exactly once
 * (read_stream), the demanded one on urgent only.
 */
static void test_bulk_jump(void **state)
{
	const uint64_t p = 20000;                     /* DATA; the window's pages too */
	uint8_t *sent = calloc(A_PAGES, 1);
	struct tlm_conn urg, bulk;
	struct stream s;
	char cmd[400];
	uint64_t i;

	assert_non_null(sent);
	snprintf(cmd, sizeof(cmd), "add-region jump,file=%s,template=%s", E.ram_a, E.tmpl);
	expect_ctl(cmd, "ok added jump");
	open_conn(&urg, "jump", TLM_CHAN_URGENT, A_PAGES, E.digest.b);
	open_conn(&bulk, "jump", TLM_CHAN_BULK, A_PAGES, E.digest.b);
	expect_ctl("freeze jump", "ok frozen");
	demand(&urg, p, 1);
	read_replies(&urg, p, 1, E.a, A_PAGES, sent);
	read_stream(&bulk, E.a, A_PAGES, 0, sent, &s);
	for (i = 0; i < s.frames_bulk && s.order[i] < p; i++)
		;
	assert_true(i < s.frames_bulk);
	assert_int_equal(s.order[i], p + 1);
	/* The cursor had not got far: bulk was not read (4 MiB queue, socket buffers). */
	assert_true(i == 0 || s.order[i - 1] < p / 2);
	for (; i < s.frames_bulk && s.order[i] > p; i++)
		assert_true(s.order[i] < p + 256);   /* PS_JUMP_PAGES */
	assert_true(i < s.frames_bulk && s.order[i] < p);       /* back at the cursor */
	stream_free(&s);
	free(sent);
	tlm_conn_fini(&urg);
	tlm_conn_fini(&bulk);
}

/* This process as a pid source: the template mapped MAP_PRIVATE with pages changed. */
static void test_pid_source(void **state)
{
	int fd = open(E.tmpl, O_RDONLY);
	uint8_t *p = mmap(NULL, (size_t)P_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd,
			  0);
	struct tlm_conn bulk;
	struct tlm_sbuf r;
	struct stream s;
	char cmd[400];

	assert_true(p != MAP_FAILED);
	for (unsigned i = 0; i < P_PAGES; i += 5)
		fill_random(p + (size_t)i * PG, PG);
	memset(p + 7 * PG, 0, PG);
	snprintf(cmd, sizeof(cmd), "add-region p,pid=%d,addr=%p,size=4M,template=%s",
		 (int)getpid(), (void *)p, E.tmpl);
	expect_ctl(cmd, "ok added p");
	expect_ctl(cmd, "error: region 'p' already exists");
	open_conn(&bulk, "p", TLM_CHAN_BULK, P_PAGES, E.digest.b);
	expect_ctl("freeze p", "ok frozen");
	read_stream(&bulk, p, P_PAGES, 0, NULL, &s);
	assert_int_equal(s.done_pages, (P_PAGES + 4) / 5);
	assert_int_equal(s.cls[7], TLM_CLASS_ZERO);
	assert_int_equal(s.cls[8], TLM_CLASS_TEMPLATE);
	stream_free(&s);
	ctl("stats p", &r);
	/* Untouched template pages were known from the pagemap, without reading them. */
	if (!strstr(r.p, "\"known_from_pagemap\":") || strstr(r.p, "\"known_from_pagemap\":0,"))
		fail_msg("pagemap shortcut unused: %s", r.p);
	tlm_sbuf_fini(&r);
	tlm_conn_fini(&bulk);
	munmap(p, (size_t)P_PAGES * PG);
	close(fd);
}

/* The source process dies before freeze: freeze fails with the reason, the region's
 * session gets ERROR and is closed, new sessions are refused with the reason. */
static void test_source_gone(void **state)
{
	struct tlm_conn u;
	struct tlm_msg m;
	char cmd[200], err[300] = "";
	pid_t child = fork();
	int fd;

	assert_true(child >= 0);
	if (child == 0) {
		pause();
		_exit(0);
	}
	snprintf(cmd, sizeof(cmd), "add-region q,pid=%d,addr=0x10000,size=64k", (int)child);
	expect_ctl(cmd, "ok added q");
	open_conn(&u, "q", TLM_CHAN_URGENT, 16, NULL);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	expect_ctl("freeze q", "is gone");
	assert_int_equal(next_msg(&u, &m, IO_MS), 1);
	assert_int_equal(m.type, TLM_MSG_ERROR);
	assert_int_equal(m.u.error.code, TLM_ERR_INTERNAL);
	assert_true(peer_closed(u.fd, IO_MS));
	tlm_conn_fini(&u);
	fd = open_session("q", TLM_CHAN_BULK, 16, NULL, &E.k, err, sizeof(err));
	assert_true(fd < 0);
	assert_non_null(strstr(err, "is gone"));
	expect_ctl("stats q", "\"state\":\"failed\"");
}

/* A new bulk session after the old one dropped: everything again. */
static void test_bulk_reconnect(void **state)
{
	struct stream s;
	char err[300];
	int fd;

	fd = open_session("a", TLM_CHAN_BULK, A_PAGES, E.digest.b, &E.k, err, sizeof(err));
	assert_true(fd < 0);
	assert_non_null(strstr(err, "already has an open bulk session"));
	tlm_conn_fini(&E.a_bulk);
	/* Refused until the server has seen the close: retry until it has. */
	for (uint64_t end = tt_now_ms() + 20000;; tt_sleep_ms(10)) {
		fd = open_session("a", TLM_CHAN_BULK, A_PAGES, E.digest.b, &E.k, err, sizeof(err));
		if (fd >= 0)
			break;
		if (!strstr(err, "already has an open bulk session") || tt_now_ms() > end)
			fail_msg("reopen bulk after close: %s", err);
	}
	assert_int_equal(tlm_conn_init(&E.a_bulk, fd, 0), 0);
	read_stream(&E.a_bulk, E.a, A_PAGES, 0, E.a_sent_urgent, &s);
	assert_int_equal(s.done_pages, E.a_data);
	stream_free(&s);
}

static void test_ctl_and_stats(void **state)
{
	static const char *const keys[] = {
		"\"id\":\"a\"", "\"source\":\"file\"", "\"pages\":{\"template\":", "\"zero\":",
		"\"ref\":", "\"data\":", "\"payload\":", "\"overhead\":", "\"demand_requests\":4",
		"\"data_sent_bulk\":", "\"data_sent_urgent\":", "\"elapsed_ms\":",
		"\"classify_ms\":", "\"id\":\"b\"", "\"id\":\"p\"", "\"source\":\"pid\"",
		"],\"cpu_us\":",
	};
	struct tlm_sbuf r;

	ctl("stats", &r);
	for (size_t i = 0; i < TLM_ARRAY_SIZE(keys); i++)
		if (!strstr(r.p, keys[i]))
			fail_msg("stats lacks %s: %s", keys[i], r.p);
	tlm_sbuf_fini(&r);
	expect_ctl("stats zz", "error: unknown region 'zz'");
	expect_ctl("freeze zz", "error:");
	expect_ctl("freeze a", "already frozen");
	expect_ctl("add-region c,file=/nonexistent/x", "error: region 'c': /nonexistent/x");
	expect_ctl("add-region", "error:");
	expect_ctl("frobnicate", "error: unknown command 'frobnicate'");
}

static void test_logs_and_shutdown(void **state)
{
	static char buf[4 << 20];
	int fd = open(E.log, O_RDONLY), status;
	ssize_t n;

	tlm_conn_fini(&E.a_urgent);
	tlm_conn_fini(&E.a_bulk);
	tlm_conn_fini(&E.b_urgent);
	tlm_conn_fini(&E.b_bulk);
	assert_int_equal(kill(E.pid, SIGTERM), 0);
	assert_int_equal(waitpid(E.pid, &status, 0), E.pid);
	E.pid = 0;
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_not_equal(access(E.ctl, F_OK), 0);   /* control socket removed */
	assert_true(fd >= 0);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n > 0);
	buf[n] = '\0';
	if (!strstr(buf, "warn: b: urgent session from") || !strstr(buf, "malformed frame"))
		fail_msg("no warning naming the VM and the reason in the log:\n%s", buf);
	assert_non_null(strstr(buf, "listening on 127.0.0.1:"));
}

/* tlm-page-server ARGS...: its exit status; its stderr (one line expected) in err. */
static int run_bad(char *err, size_t len, const char *a1, const char *a2)
{
	const char *bindir = getenv("TLM_BIN_DIR");
	char bin[512];
	int pfd[2], status;
	ssize_t n;
	pid_t pid;

	snprintf(bin, sizeof(bin), "%s/tlm-page-server", bindir ? bindir : ".");
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(pfd[1], 2);
		execl(bin, bin, "--listen", "127.0.0.1:0", "--key", E.key, "--ctl", E.ctl, a1, a2,
		      (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	n = read(pfd[0], err, len - 1);
	err[n > 0 ? n : 0] = '\0';
	close(pfd[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The background stream's knobs refuse bad values with one line naming the option. */
static void test_bulk_options(void **state)
{
	static const char *const bad[][2] = {
		{ "--bulk-ahead", "2G" }, { "--bulk-ahead", "8Q" }, { "--bulk-delay", "-1" },
		{ "--bulk-delay", "3600001" }, { "--bulk-lowat", "2G" }, { "--bulk-lowat", "x" },
	};
	char err[512];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(run_bad(err, sizeof(err), bad[i][0], bad[i][1]), 2);
		if (!strstr(err, bad[i][0]) || strchr(err, '\n') != err + strlen(err) - 1)
			fail_msg("%s %s: want one line naming the option, got '%s'", bad[i][0],
				 bad[i][1], err);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wrong_key),
		cmocka_unit_test(test_replayed_handshake),
		cmocka_unit_test(test_unknown_vm),
		cmocka_unit_test(test_mismatch),
		cmocka_unit_test(test_prefreeze),
		cmocka_unit_test(test_session_bound_to_vm),
		cmocka_unit_test(test_silent_peer),
		cmocka_unit_test(test_malformed_frame),
		cmocka_unit_test(test_freeze_stream),
		cmocka_unit_test(test_template_less),
		cmocka_unit_test(test_bulk_hold),
		cmocka_unit_test(test_demand_rides_bulk),
		cmocka_unit_test(test_bulk_jump),
		cmocka_unit_test(test_pid_source),
		cmocka_unit_test(test_source_gone),
		cmocka_unit_test(test_bulk_reconnect),
		cmocka_unit_test(test_ctl_and_stats),
		cmocka_unit_test(test_logs_and_shutdown),
		cmocka_unit_test(test_bulk_options),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
