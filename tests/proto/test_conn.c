/*
 * test_conn.c — struct tlm_conn over a real socketpair: a stream fed one byte at a time,
 * PAGE data pointers valid until the next call, a maximal CLASS_MAP frame, the bounded
 * write queue (-ENOBUFS, -EAGAIN then completion), PAGES data sent by reference (the same
 * bytes as copied frames, through partial writes, sockets and pipes), malformed input
 * and EOF.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "samples.h"
#include "tlm_test.h"

static void pair_nb(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
				    sv), 0);
}

/* Every sample type twice, PAGEs with distinct content. */
static size_t build_stream(uint8_t *buf, size_t cap, enum tlm_msg_type *types, size_t *nt)
{
	size_t n = 0;

	*nt = 0;
	for (int round = 0; round < 2; round++)
		for (int t = TLM_MSG_HELLO; t < TLM_MSG__MAX; t++) {
			n += sample_frame(t, buf + n, cap - n);
			types[(*nt)++] = t;
		}
	return n;
}

static void test_byte_by_byte(void **state)
{
	static uint8_t stream[64 * 1024];
	enum tlm_msg_type types[64];
	size_t nt, got = 0, len;
	struct tlm_conn c;
	struct tlm_msg m, ref;
	char err[200];
	int sv[2];

	len = build_stream(stream, sizeof(stream), types, &nt);
	pair_nb(sv);
	assert_int_equal(tlm_conn_init(&c, sv[0], 0), 0);
	assert_int_equal(tlm_conn_read(&c), -EAGAIN);
	for (size_t i = 0; i < len; i++) {
		int r;

		assert_int_equal(write(sv[1], stream + i, 1), 1);
		assert_int_equal(tlm_conn_read(&c), 1);
		while ((r = tlm_conn_next(&c, &m, err, sizeof(err))) == 1) {
			assert_true(got < nt);
			assert_int_equal(m.type, types[got]);
			if (m.type == TLM_MSG_PAGE) {
				sample_msg(TLM_MSG_PAGE, &ref);
				assert_memory_equal(m.u.page.data, ref.u.page.data, 4096);
			}
			got++;
		}
		assert_int_equal(r, 0);
		/* Only a partial frame is ever kept: the buffer stays small. */
		assert_true(c.rlen <= 4200);
	}
	assert_int_equal(got, nt);
	assert_int_equal(c.bytes_in, len);
	close(sv[1]);
	assert_int_equal(tlm_conn_read(&c), 0);     /* EOF */
	tlm_conn_fini(&c);
	assert_int_equal(c.fd, -1);
}

static void test_page_pointers(void **state)
{
	uint8_t buf[3 * 4120], page2[4096];
	struct tlm_msg m1 = { .type = TLM_MSG_PAGE }, m;
	struct tlm_conn c;
	const uint8_t *d1;
	char err[200];
	size_t n = 0;
	int sv[2];

	memset(page2, 0x5a, sizeof(page2));
	for (int i = 0; i < 3; i++) {
		m1.u.page.page = i;
		m1.u.page.data = page2;
		page2[0] = (uint8_t)i;
		m1.u.page.xxh64 = tlm_proto_page_sum(page2);
		n += tlm_proto_encode(&m1, buf + n, sizeof(buf) - n);
	}
	pair_nb(sv);
	assert_int_equal(tlm_conn_init(&c, sv[0], 0), 0);
	assert_int_equal(write(sv[1], buf, n - 100), (ssize_t)(n - 100));   /* 2.97 frames */
	assert_int_equal(tlm_conn_read(&c), (ssize_t)(n - 100));
	assert_int_equal(tlm_conn_next(&c, &m, err, sizeof(err)), 1);
	d1 = m.u.page.data;
	assert_int_equal(d1[0], 0);
	assert_int_equal(tlm_conn_next(&c, &m, err, sizeof(err)), 1);
	assert_int_equal(d1[0], 0);                 /* previous frame not moved */
	assert_int_equal(m.u.page.data[0], 1);
	assert_int_equal(m.u.page.xxh64, tlm_proto_page_sum(m.u.page.data));
	assert_int_equal(tlm_conn_next(&c, &m, err, sizeof(err)), 0);
	assert_int_equal(c.rlen, 4120 - 100);        /* compacted: the partial frame only */
	assert_int_equal(write(sv[1], buf + n - 100, 100), 100);
	assert_int_equal(tlm_conn_read(&c), 100);
	assert_int_equal(tlm_conn_next(&c, &m, err, sizeof(err)), 1);
	assert_int_equal(m.u.page.page, 2);
	assert_int_equal(m.u.page.data[0], 2);
	assert_int_equal(m.u.page.xxh64, tlm_proto_page_sum(m.u.page.data));
	tlm_conn_fini(&c);
	close(sv[1]);
}

/* A 1 MiB CLASS_MAP through conn on both sides, interleaving flush and read. */
static void test_max_frame(void **state)
{
	static struct tlm_run runs[TLM_PROTO_MAX_RUNS];
	struct tlm_msg m = { .type = TLM_MSG_CLASS_MAP }, out;
	struct tlm_conn tx, rx;
	char err[200];
	int sv[2], r = 0, fl;

	for (uint32_t i = 0; i < TLM_PROTO_MAX_RUNS; i++)
		runs[i] = (struct tlm_run){ TLM_CLASS_REF, 2, 2ull * i };
	m.u.class_map.nruns = TLM_PROTO_MAX_RUNS;
	m.u.class_map.runs = runs;
	m.u.class_map.final = true;
	pair_nb(sv);
	assert_int_equal(tlm_conn_init(&tx, sv[1], 0), 0);
	assert_int_equal(tlm_conn_init(&rx, sv[0], 0), 0);
	assert_int_equal(tlm_conn_queue(&tx, &m), 0);
	assert_int_equal(tlm_conn_pending(&tx), TLM_PROTO_HDR_SIZE + TLM_PROTO_MAX_PAYLOAD);
	do {
		fl = tlm_conn_flush(&tx);
		assert_true(fl == 0 || fl == -EAGAIN);
		if (tlm_conn_read(&rx) > 0)
			r = tlm_conn_next(&rx, &out, err, sizeof(err));
		assert_true(r >= 0);
	} while (r == 0);
	assert_int_equal(fl, 0);
	assert_int_equal(out.u.class_map.nruns, TLM_PROTO_MAX_RUNS);
	assert_int_equal(out.u.class_map.runs[TLM_PROTO_MAX_RUNS - 1].arg,
			 2ull * (TLM_PROTO_MAX_RUNS - 1));
	assert_int_equal(tx.bytes_out, rx.bytes_in);
	tlm_conn_fini(&tx);
	tlm_conn_fini(&rx);
}

static void test_write_queue(void **state)
{
	struct tlm_conn c, rx;
	struct tlm_msg m;
	char err[200];
	int sv[2], queued = 0, got = 0, r, sz = 4096;

	pair_nb(sv);
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	assert_int_equal(tlm_conn_init(&c, sv[0], 10000), 0);
	assert_int_equal(tlm_conn_init(&rx, sv[1], 0), 0);
	sample_msg(TLM_MSG_PAGE, &m);
	assert_int_equal(tlm_conn_space(&c), 10000);
	assert_int_equal(tlm_conn_queue(&c, &m), 0);
	assert_int_equal(tlm_conn_queue(&c, &m), 0);
	assert_int_equal(tlm_conn_queue(&c, &m), -ENOBUFS);    /* bounded */
	assert_int_equal(tlm_conn_pending(&c), 2 * 4120);
	assert_int_equal(tlm_conn_space(&c), 10000 - 2 * 4120);
	queued = 2;
	/* Keep queueing while the peer does not read: flush must report -EAGAIN. */
	for (;;) {
		r = tlm_conn_flush(&c);
		if (r == -EAGAIN)
			break;
		assert_int_equal(r, 0);
		assert_int_equal(tlm_conn_queue(&c, &m), 0);
		queued++;
		assert_true(queued < 10000);
	}
	assert_true(tlm_conn_pending(&c) > 0);
	/* Now drain on the other side until everything arrived intact. */
	while (got < queued) {
		if (tlm_conn_read(&rx) > 0)
			while ((r = tlm_conn_next(&rx, &m, err, sizeof(err))) == 1) {
				assert_int_equal(m.type, TLM_MSG_PAGE);
				assert_int_equal(m.u.page.xxh64, tlm_proto_page_sum(m.u.page.data));
				got++;
			}
		r = tlm_conn_flush(&c);
		assert_true(r == 0 || r == -EAGAIN);
	}
	assert_int_equal(tlm_conn_pending(&c), 0);
	assert_int_equal(c.bytes_out, (uint64_t)queued * 4120);
	assert_int_equal(rx.bytes_in, c.bytes_out);
	tlm_conn_fini(&c);
	tlm_conn_fini(&rx);
}

/* Page data for the reference tests: 64 distinct pages. */
static uint8_t ref_data[TLM_PROTO_MAX_PAGES * TLM_PROTO_PAGE_SIZE];
static uint8_t ref_sums[TLM_PROTO_MAX_PAGES * 8];

/* The i-th frame of a mixed stream: PAGES of 1..max pages, or a small frame in between.
 * Returns its size. */
static size_t mixed_msg(uint64_t *rng, unsigned i, uint32_t max, struct tlm_msg *m)
{
	uint32_t count = 1 + (uint32_t)(tt_rand(rng) % max);
	uint32_t first = (uint32_t)(tt_rand(rng) % (TLM_PROTO_MAX_PAGES - count + 1));

	if (i % 3 == 2) {
		*m = (struct tlm_msg){ .type = TLM_MSG_PROGRESS, .u.progress = { i, 1u << 30 } };
	} else {
		*m = (struct tlm_msg){ .type = TLM_MSG_PAGES };
		m->u.pages.page = 1000ull * i;
		m->u.pages.count = count;
		m->u.pages.data = ref_data + (size_t)first * TLM_PROTO_PAGE_SIZE;
		m->u.pages.sums = ref_sums + 8 * first;
	}
	return tlm_proto_frame_size(m);
}

/* Queue frames until the queue is full; each also encoded (copied) into want. */
static size_t fill_queue(struct tlm_conn *c, uint64_t *rng, unsigned *i, uint32_t max,
			 uint8_t *want, size_t cap)
{
	size_t n = 0;
	struct tlm_msg m;
	uint64_t save;

	for (;;) {
		save = *rng;
		mixed_msg(rng, *i, max, &m);
		int rc = m.type == TLM_MSG_PAGES ? tlm_conn_queue_ref(c, &m) :
						   tlm_conn_queue(c, &m);

		if (rc == -ENOBUFS) {
			*rng = save;        /* the same frame next time */
			return n;
		}
		assert_int_equal(rc, 0);
		assert_true(n + tlm_proto_frame_size(&m) <= cap);
		n += (size_t)tlm_proto_encode(&m, want + n, cap - n);
		(*i)++;
	}
}

/* Read what fd has into got[*len..], non-blocking. */
static void drain(int fd, uint8_t *got, size_t *len, size_t cap)
{
	ssize_t r;

	while (*len < cap && (r = read(fd, got + *len, cap - *len)) > 0)
		*len += (size_t)r;
}

/*
 * Mixed copied and referenced frames through a small send buffer (socket) or a 4 KiB
 * pipe: flushes stop half way through segments and resume; the bytes that arrive equal
 * the frames encoded with tlm_proto_encode, in order.
 */
static void ref_stream(int wfd, int rfd, size_t wcap, unsigned frames, uint32_t max)
{
	size_t cap = (size_t)frames * (16 + TLM_PROTO_HDR_SIZE + 64 * 4104) + wcap;
	uint8_t *want = malloc(cap), *got = malloc(cap);
	size_t nwant = 0, ngot = 0;
	uint64_t rng = 42;
	struct tlm_conn c;
	unsigned i = 0;
	int rc;

	assert_non_null(want);
	assert_non_null(got);
	assert_int_equal(tlm_conn_init(&c, wfd, wcap), 0);
	while (i < frames) {
		nwant += fill_queue(&c, &rng, &i, max, want + nwant, cap - nwant);
		assert_int_equal(tlm_conn_end(&c), nwant);
		if (max == 1 && wcap > 8u << 20)     /* more than one sendmsg takes */
			assert_true(c.seg_n > IOV_MAX);
		rc = tlm_conn_flush(&c);
		assert_true(rc == 0 || rc == -EAGAIN);
		drain(rfd, got, &ngot, cap);
	}
	while ((rc = tlm_conn_flush(&c)) == -EAGAIN)
		drain(rfd, got, &ngot, cap);
	assert_int_equal(rc, 0);
	drain(rfd, got, &ngot, cap);
	assert_int_equal(ngot, nwant);
	assert_int_equal(c.bytes_out, nwant);
	assert_memory_equal(got, want, nwant);
	assert_int_equal(tlm_conn_pending(&c), 0);
	tlm_conn_fini(&c);
	free(want);
	free(got);
}

static void ref_setup(void)
{
	uint64_t rng = 7;

	tt_fill(ref_data, sizeof(ref_data), &rng);
	tlm_proto_pages_sums(ref_sums, ref_data, TLM_PROTO_MAX_PAGES);
}

/* A socketpair whose sending end has a small send buffer; conn closes sv[0]. */
static void ref_socket(size_t wcap, unsigned frames, uint32_t max)
{
	int sv[2], sz = 4096;

	pair_nb(sv);
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	ref_stream(sv[0], sv[1], wcap, frames, max);
	close(sv[1]);
}

static void test_ref_socket(void **state)
{
	ref_setup();
	ref_socket(600000, 300, TLM_PROTO_MAX_PAGES);
	/* More segments than one sendmsg takes (IOV_MAX): 1-page frames in 16 MiB. */
	ref_socket(16u << 20, 9000, 1);
}

static void test_ref_pipe(void **state)
{
	int p[2];

	ref_setup();
	assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	fcntl(p[1], F_SETPIPE_SZ, 4096);
	ref_stream(p[1], p[0], 300000, 200, TLM_PROTO_MAX_PAGES);
	close(p[0]);
}

/* Referenced, not copied: the bytes sent are the caller's at flush time (hence the
 * lifetime rule); wcap counts them; only PAGES can be referenced. */
static void test_ref_rules(void **state)
{
	struct tlm_msg m = { .type = TLM_MSG_PAGES }, p;
	uint8_t frame[TLM_PROTO_HDR_SIZE + 16 + 4104], got[sizeof(frame)];
	struct tlm_conn c;
	int sv[2];

	ref_setup();
	m.u.pages = (typeof(m.u.pages)){ 5, 1, ref_sums, ref_data };
	pair_nb(sv);
	assert_int_equal(tlm_conn_init(&c, sv[0], 2 * sizeof(frame) - 1), 0);
	assert_int_equal(tlm_conn_queue_ref(&c, &m), 0);
	assert_int_equal(tlm_conn_pending(&c), sizeof(frame));
	assert_int_equal(tlm_conn_queue_ref(&c, &m), -ENOBUFS);
	sample_msg(TLM_MSG_PAGE, &p);
	assert_int_equal(tlm_conn_queue_ref(&c, &p), -EINVAL);
	ref_data[4095] ^= 1;                        /* changed before the flush: sent */
	assert_int_equal(tlm_proto_encode(&m, frame, sizeof(frame)), sizeof(frame));
	assert_int_equal(tlm_conn_flush(&c), 0);
	assert_int_equal(read(sv[1], got, sizeof(got)), sizeof(got));
	assert_memory_equal(got, frame, sizeof(frame));
	tlm_conn_fini(&c);
	close(sv[1]);
}

static void test_bad_stream(void **state)
{
	uint8_t f[SAMPLE_FRAME_MAX];
	struct tlm_conn c;
	struct tlm_msg m;
	char err[200] = "";
	size_t n;
	int sv[2];

	pair_nb(sv);
	assert_int_equal(tlm_conn_init(&c, sv[0], 0), 0);
	n = sample_frame(TLM_MSG_DEMAND, f, sizeof(f));
	f[TLM_PROTO_HDR_SIZE + 8] = 0;              /* count 0 */
	assert_int_equal(write(sv[1], f, n), (ssize_t)n);
	assert_int_equal(tlm_conn_read(&c), (ssize_t)n);
	assert_int_equal(tlm_conn_next(&c, &m, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "DEMAND: count 0"));
	tlm_conn_fini(&c);
	close(sv[1]);

	/* A bad header is refused at once, before its payload arrives. */
	pair_nb(sv);
	assert_int_equal(tlm_conn_init(&c, sv[0], 0), 0);
	assert_int_equal(write(sv[1], "\xff\xff\x0f\x00\x09\x00\x00\x00", 8), 8);
	assert_int_equal(tlm_conn_read(&c), 8);
	assert_int_equal(tlm_conn_next(&c, &m, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "PAGE: payload length"));
	tlm_conn_fini(&c);
	close(sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_byte_by_byte),
		cmocka_unit_test(test_page_pointers),
		cmocka_unit_test(test_max_frame),
		cmocka_unit_test(test_write_queue),
		cmocka_unit_test(test_ref_socket),
		cmocka_unit_test(test_ref_pipe),
		cmocka_unit_test(test_ref_rules),
		cmocka_unit_test(test_bad_stream),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
