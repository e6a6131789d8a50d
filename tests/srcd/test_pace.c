/*
 * The bulk stream's pacing (runtime/source/pace.h): the decision from TCP_INFO samples,
 * case by case, and one real loopback TCP connection (its RTT is short: never paced).
 *   lan_never        min RTT under 2 ms: no pace, whatever comes after
 *   wan_probe        a WAN RTT: unpaced until 16 MiB are acked, then 85 % of the goodput
 *                    over the second 8 MiB (slow start left out)
 *   paced_for_good   once paced, later samples (slower, faster) change nothing; a demand
 *                    rides bulk at most one RTT of the pace (no limit unpaced)
 *   fixed_and_off    --bulk-pace RATE is set once; off never
 *   no_rtt_yet       no RTT sample: nothing decided
 *   parse            auto, off, 180mbit, 10M; refusals
 *   loopback_socket  tlm_pace_tick on a real 127.0.0.1 connection: state lan, no pace set
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pace.h"

static const struct tlm_pace_cfg cfg_auto = { .mode = TLM_PACE_AUTO };

/* A sample at t_ms: min RTT (us), bytes acked. */
static uint64_t step(struct tlm_pace *p, uint32_t min, uint64_t acked, uint64_t t_ms)
{
	struct tlm_pace_sample s = { min, acked, t_ms * 1000000 };

	return tlm_pace_step(p, &s);
}

static void lan_never(void **state)
{
	struct tlm_pace p;

	tlm_pace_init(&p, &cfg_auto);
	assert_int_equal(step(&p, 100, 1 << 20, 1), 0);
	assert_int_equal(p.state, PACE_LAN);
	assert_int_equal(step(&p, 100, 64 << 20, 1000), 0);
	assert_int_equal(p.rate, 0);
	assert_true(tlm_pace_ride_max(&p) == UINT64_MAX);
}

static void wan_probe(void **state)
{
	struct tlm_pace p;

	tlm_pace_init(&p, &cfg_auto);
	assert_int_equal(step(&p, 20000, 1 << 20, 100), 0);
	assert_int_equal(p.state, PACE_PROBING);
	/* slow start: 8 MiB after 500 ms; the second half's 8 MiB take 400 ms (20 MiB/s) */
	assert_int_equal(step(&p, 20000, 8 << 20, 500), 0);
	assert_int_equal(step(&p, 20000, 12 << 20, 700), 0);
	assert_int_equal(step(&p, 20000, 16 << 20, 900), 17825775);
	assert_int_equal(p.state, PACE_ON);
	assert_int_equal(p.rate, 17825775);
}

static void paced_for_good(void **state)
{
	struct tlm_pace p;

	tlm_pace_init(&p, &cfg_auto);
	step(&p, 20000, 8 << 20, 100);
	step(&p, 20000, 16 << 20, 200);
	assert_int_equal(p.rate, 71303100);
	/* a later sample (slower, faster) changes nothing */
	assert_int_equal(step(&p, 20000, 17 << 20, 1200), 0);
	assert_int_equal(step(&p, 20000, 64 << 20, 1300), 0);
	assert_int_equal(p.rate, 71303100);
	/* a demand waits behind at most one round trip of the paced stream */
	assert_int_equal(tlm_pace_ride_max(&p), 71303100ull * 20000 / 1000000);
}

static void fixed_and_off(void **state)
{
	struct tlm_pace_cfg fixed = { .mode = TLM_PACE_FIXED, .rate = 22500000 };
	struct tlm_pace_cfg off = { .mode = TLM_PACE_OFF };
	struct tlm_pace p;

	tlm_pace_init(&p, &fixed);
	assert_int_equal(step(&p, 0, 0, 0), 22500000);
	assert_int_equal(step(&p, 20000, 64 << 20, 5000), 0);
	assert_int_equal(p.rate, 22500000);
	tlm_pace_init(&p, &off);
	assert_int_equal(p.state, PACE_NONE);
	assert_int_equal(step(&p, 20000, 64 << 20, 5000), 0);
	assert_int_equal(p.rate, 0);
}

static void no_rtt_yet(void **state)
{
	struct tlm_pace p;

	tlm_pace_init(&p, &cfg_auto);
	assert_int_equal(step(&p, 0, 0, 0), 0);
	assert_int_equal(p.state, PACE_IDLE);
}

static void parse(void **state)
{
	struct tlm_pace_cfg c;

	assert_int_equal(tlm_pace_parse("auto", &c), 0);
	assert_int_equal(c.mode, TLM_PACE_AUTO);
	assert_int_equal(tlm_pace_parse("off", &c), 0);
	assert_int_equal(c.mode, TLM_PACE_OFF);
	assert_int_equal(tlm_pace_parse("180mbit", &c), 0);
	assert_int_equal(c.mode, TLM_PACE_FIXED);
	assert_int_equal(c.rate, 22500000);
	assert_int_equal(tlm_pace_parse("10M", &c), 0);
	assert_int_equal(c.rate, 10 << 20);
	assert_int_equal(tlm_pace_parse("fast", &c), -EINVAL);
	assert_int_equal(tlm_pace_parse("0mbit", &c), -EINVAL);
	assert_int_equal(tlm_pace_parse("1k", &c), -EINVAL);
	assert_int_equal(tlm_pace_parse("mbit", &c), -EINVAL);
}

static void loopback_socket(void **state)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0), s;
	char buf[4096] = { 0 };
	struct tlm_pace p;

	assert_true(l >= 0 && c >= 0);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&a, &alen), 0);
	assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof(a)), 0);
	s = accept(l, NULL, NULL);
	assert_true(s >= 0);
	assert_int_equal(write(c, buf, sizeof(buf)), sizeof(buf));
	assert_int_equal(read(s, buf, sizeof(buf)), sizeof(buf));
	tlm_pace_init(&p, &cfg_auto);
	assert_int_equal(tlm_pace_tick(&p, c, "t", 1), 0);
	assert_int_equal(p.state, PACE_LAN);
	assert_int_equal(p.rate, 0);
	/* not TCP: pacing stops for the session, with the error */
	tlm_pace_init(&p, &cfg_auto);
	assert_true(tlm_pace_tick(&p, STDIN_FILENO, "t", 1) < 0 || p.state == PACE_NONE);
	assert_int_equal(p.state, PACE_NONE);
	close(s);
	close(c);
	close(l);
}

int main(void)
{
	const struct CMUnitTest t[] = {
		cmocka_unit_test(lan_never), cmocka_unit_test(wan_probe),
		cmocka_unit_test(paced_for_good), cmocka_unit_test(fixed_and_off),
		cmocka_unit_test(no_rtt_yet), cmocka_unit_test(parse),
		cmocka_unit_test(loopback_socket),
	};

	return cmocka_run_group_tests(t, NULL, NULL);
}
