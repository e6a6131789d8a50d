/*
 * test_dst_rx.c — bulk input through io_uring (dst_rx.h) into a struct tlm_conn, over a
 * socketpair: the stream arrives whole and in order while the buffer fills up, is drained
 * and compacted (the tail is lent to the kernel only between those), EOF is seen, and a
 * RECV still armed is cancelled before the buffer may go.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dst_rx.h"
#include "tlm_test.h"

#define TOTAL (5u << 20)                 /* five input buffers' worth */

struct fx {
	int sv[2];                       /* [0] read through the ring, [1] the sender */
	struct tlm_conn c;
	struct dst_rx rx;
};

/* Byte o of the stream: a period (251) that no buffer or page size is a multiple of, so
 * a byte landing at the wrong offset shows. */
static uint8_t pat(uint64_t o)
{
	return (uint8_t)(o % 251);
}

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, f->sv), 0);
	assert_int_equal(tlm_conn_init(&f->c, f->sv[0], 0), 0);
	assert_int_equal(dst_rx_open(&f->rx), 0);
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;

	dst_rx_close(&f->rx, &f->c);
	tlm_conn_fini(&f->c);
	if (f->sv[1] >= 0)
		close(f->sv[1]);
	free(f);
	return 0;
}

/* Send as much of the stream [*sent, TOTAL) as the socket takes. */
static void send_some(struct fx *f, uint64_t *sent)
{
	uint8_t buf[65536];

	while (*sent < TOTAL) {
		size_t n = TOTAL - *sent < sizeof(buf) ? TOTAL - *sent : sizeof(buf);
		ssize_t w;

		for (size_t i = 0; i < n; i++)
			buf[i] = pat(*sent + i);
		w = write(f->sv[1], buf, n);
		if (w < 0 && errno == EAGAIN)
			return;
		assert_true(w > 0);
		*sent += (uint64_t)w;
	}
}

/* Check the unconsumed input against the stream and consume it. */
static void consume(struct fx *f, uint64_t *checked)
{
	for (size_t i = f->c.rconsumed; i < f->c.rlen; i++)
		if (f->c.rbuf[i] != pat(*checked + i - f->c.rconsumed))
			fail_msg("stream byte %llu is %u, expected %u",
				 (unsigned long long)(*checked + i - f->c.rconsumed), f->c.rbuf[i],
				 pat(*checked + i - f->c.rconsumed));
	*checked += f->c.rlen - f->c.rconsumed;
	f->c.rconsumed = f->c.rlen;
}

/* Consumed only once the buffer is full: a fill then finds no room to arm the next RECV,
 * and dst_rx_arm arms it once the frames are handled (compacting first). */
static void test_stream_in_order(void **state)
{
	struct fx *f = *state;
	uint64_t sent = 0, checked = 0;

	while (f->c.bytes_in < TOTAL) {
		struct pollfd p = { .fd = f->rx.efd, .events = POLLIN };
		ssize_t n;

		send_some(f, &sent);
		n = dst_rx_fill(&f->rx, &f->c);
		if (n == -EAGAIN && f->rx.armed)
			assert_int_equal(poll(&p, 1, 5000), 1);
		else if (n != -EAGAIN)
			assert_true(n > 0);
		if (f->c.rlen == f->c.rcap) {
			assert_false(f->rx.armed);
			consume(f, &checked);
			assert_int_equal(dst_rx_arm(&f->rx, &f->c), 0);
			assert_true(f->rx.armed);
		}
	}
	consume(f, &checked);
	assert_int_equal(checked, TOTAL);
	assert_int_equal(tlm_conn_handled(&f->c), TOTAL);
}

/* The sender closes: the bytes, then 0. */
static void test_eof(void **state)
{
	struct fx *f = *state;
	ssize_t n;

	assert_int_equal(write(f->sv[1], "tlm", 3), 3);
	close(f->sv[1]);
	f->sv[1] = -1;
	do {
		struct pollfd p = { .fd = f->rx.efd, .events = POLLIN };

		n = dst_rx_fill(&f->rx, &f->c);
		if (n == -EAGAIN)
			assert_int_equal(poll(&p, 1, 5000), 1);
	} while (n != 0);
	assert_int_equal(f->c.rlen, 3);
	assert_memory_equal(f->c.rbuf, "tlm", 3);
}

/* A RECV armed on a silent socket: closing cancels it (and does not hang). */
static void test_close_armed(void **state)
{
	struct fx *f = *state;

	assert_int_equal(dst_rx_fill(&f->rx, &f->c), -EAGAIN);
	assert_true(f->rx.armed);
	assert_true(f->c.rpinned);
	dst_rx_close(&f->rx, &f->c);
	assert_false(f->rx.armed);
	assert_false(f->c.rpinned);
	assert_int_equal(f->rx.efd, -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_stream_in_order, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_eof, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_close_armed, fx_setup, fx_teardown),
	};
	enum dst_net_io got;
	char why[160];

	if (dst_net_io_choose(DST_NET_IO_AUTO, &got, why, sizeof(why)) == 0 &&
	    got != DST_NET_IO_URING)
		return tt_skip("uring", "io_uring unavailable: %s", why);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
