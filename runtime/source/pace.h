/*
 * pace.h — keeps the background (bulk) stream just below a WAN link's bottleneck, so the
 * replies to demands, on the urgent connection, do not wait behind a queue of bulk data.
 *
 * Why: a TCP stream fills whatever buffer sits at the bottleneck (router, tunnel, shaper)
 * until it drops packets. On a 200 Mbit/s, 20 ms link the urgent replies then waited
 * there too: demand-fault p50 42 ms, p99 525 ms; with BBR 38 ms / 537 ms; paced at 90 %
 * of the link 23 ms / 235 ms (RTT 20.8 ms; docs/BENCHMARKS.md).
 *
 * auto (the default): a session whose minimum RTT is below PACE_WAN_RTT_US is left alone
 * (LAN or loopback: the queue is short and pacing would only cost throughput). Otherwise
 * the stream runs unpaced until PACE_PROBE_BYTES are acknowledged; the goodput over the
 * second half of those bytes (slow start is over by then, the link is full) is the
 * bottleneck's rate, and SO_MAX_PACING_RATE is set to PACE_PERCENT % of it, for the rest
 * of the session. (The largest tcpi_delivery_rate sample was tried first: ACKs bunched
 * by the link overstate it, 234 Mbit/s on a 200 Mbit/s link, and the pace did nothing.) Not followed: a link that gets slower
 * later (a first version lowered the pace when the RTT grew; paced samples are below the
 * pace by nature, so any RTT noise spiralled it down: 207 s instead of 10 s for 256 MiB).
 * A new bulk session (a reconnect) measures again. A fixed rate (--bulk-pace RATE) is
 * set once; off sets nothing.
 *
 * The decision is a pure function of TCP_INFO samples (tlm_pace_step), tested without a
 * network; tlm_pace_tick reads the socket and applies it.
 */
#ifndef TLM_SRC_PACE_H
#define TLM_SRC_PACE_H

#include <stdbool.h>
#include <stdint.h>

#define PACE_WAN_RTT_US  2000u                  /* below: no pacing (auto) */
#define PACE_PROBE_BYTES (16ull << 20)          /* acked unpaced before the estimate */
#define PACE_PERCENT     85u
#define PACE_TICK_NS     10000000ull            /* TCP_INFO read at most every 10 ms */

enum tlm_pace_mode { TLM_PACE_AUTO = 0, TLM_PACE_OFF, TLM_PACE_FIXED };

enum tlm_pace_state {
	PACE_IDLE = 0,   /* nothing decided yet (no sample) */
	PACE_PROBING,    /* WAN: unpaced, measuring the bottleneck */
	PACE_ON,         /* paced at `rate` */
	PACE_LAN,        /* auto on a short RTT: never paced */
	PACE_NONE,       /* off */
};

struct tlm_pace_cfg {
	enum tlm_pace_mode mode;
	uint64_t rate;                /* TLM_PACE_FIXED: bytes/s */
};

/* What tlm_pace_step needs from TCP_INFO, and when it was read. */
struct tlm_pace_sample {
	uint32_t min_rtt_us;
	uint64_t bytes_acked;
	uint64_t now_ns;
};

/* One bulk session's pacing. */
struct tlm_pace {
	struct tlm_pace_cfg cfg;
	enum tlm_pace_state state;
	uint64_t mark_acked, mark_ns; /* probing: where its second half began (0: not yet) */
	uint64_t rate;                /* the pace set, bytes/s (0: none) */
	uint32_t min_rtt_us;          /* when the pace was set */
	uint64_t next_ns;             /* next TCP_INFO read */
};

void tlm_pace_init(struct tlm_pace *p, const struct tlm_pace_cfg *cfg);

/* The pace to set after sample s: bytes/s, or 0 when it stays as it is. */
uint64_t tlm_pace_step(struct tlm_pace *p, const struct tlm_pace_sample *s);

/* Read TCP_INFO of fd (at most every PACE_TICK_NS) and apply tlm_pace_step's decision;
 * id names the region in the log line. 0, or -errno of the socket call (pacing then
 * stops for this session: state PACE_NONE). */
int tlm_pace_tick(struct tlm_pace *p, int fd, const char *id, uint64_t now_ns);

/* The most bulk bytes a demand may wait behind rather than be answered on urgent: on a
 * paced stream what it delivers in one round trip (an urgent reply takes about that),
 * else UINT64_MAX (no limit from pacing). */
uint64_t tlm_pace_ride_max(const struct tlm_pace *p);

const char *tlm_pace_state_str(enum tlm_pace_state s);

/* "auto", "off" or a rate (bytes/s with k/M/G suffix, or NUMBER followed by "mbit"). 0,
 * or -EINVAL. */
int tlm_pace_parse(const char *arg, struct tlm_pace_cfg *cfg);

#endif
