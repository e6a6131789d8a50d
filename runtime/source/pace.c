/*
 * pace.c — the bulk stream's pacing (pace.h says why and the rule).
 */
#include <errno.h>
#include <linux/tcp.h>          /* struct tcp_info with delivery_rate, min_rtt, bytes_acked */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "log.h"
#include "pace.h"
#include "util.h"

void tlm_pace_init(struct tlm_pace *p, const struct tlm_pace_cfg *cfg)
{
	*p = (struct tlm_pace){ .cfg = *cfg };
	if (cfg->mode == TLM_PACE_OFF)
		p->state = PACE_NONE;
}

static uint64_t pct(uint64_t rate)
{
	return rate / 100 * PACE_PERCENT;
}

uint64_t tlm_pace_step(struct tlm_pace *p, const struct tlm_pace_sample *s)
{
	uint64_t rate;

	switch (p->state) {
	case PACE_IDLE:
		if (p->cfg.mode == TLM_PACE_FIXED) {
			p->state = PACE_ON;
			return p->rate = p->cfg.rate;
		}
		if (!s->min_rtt_us)             /* no RTT sample yet */
			return 0;
		p->state = s->min_rtt_us < PACE_WAN_RTT_US ? PACE_LAN : PACE_PROBING;
		return tlm_pace_step(p, s);
	case PACE_PROBING:
		if (!p->mark_ns && s->bytes_acked >= PACE_PROBE_BYTES / 2) {
			p->mark_acked = s->bytes_acked;
			p->mark_ns = s->now_ns;
		}
		if (!p->mark_ns || s->bytes_acked < PACE_PROBE_BYTES || s->now_ns <= p->mark_ns)
			return 0;
		rate = (s->bytes_acked - p->mark_acked) * 1000000000ull / (s->now_ns - p->mark_ns);
		if (!pct(rate))
			return 0;
		p->state = PACE_ON;
		p->min_rtt_us = s->min_rtt_us;
		return p->rate = pct(rate);
	case PACE_ON:
	case PACE_LAN:
	case PACE_NONE:
		return 0;
	}
	return 0;
}

int tlm_pace_tick(struct tlm_pace *p, int fd, const char *id, uint64_t now_ns)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	struct tlm_pace_sample s;
	enum tlm_pace_state was = p->state;
	uint64_t rate;

	if (p->state == PACE_LAN || p->state == PACE_NONE || p->state == PACE_ON ||
	    now_ns < p->next_ns)
		return 0;
	p->next_ns = now_ns + PACE_TICK_NS;
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) {
		p->state = PACE_NONE;           /* not TCP (tests' socketpairs): nothing to pace */
		return -errno;
	}
	s = (struct tlm_pace_sample){ .min_rtt_us = ti.tcpi_min_rtt,
		.bytes_acked = ti.tcpi_bytes_acked, .now_ns = now_ns };
	rate = tlm_pace_step(p, &s);
	if (p->state == PACE_LAN && was != PACE_LAN)
		log_info("%s: bulk stream not paced (RTT %.1f ms: no WAN queue to keep short)",
			 id, s.min_rtt_us / 1e3);
	if (!rate)
		return 0;
	if (setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &rate, sizeof(rate)) < 0) {
		p->state = PACE_NONE;
		return -errno;
	}
	if (p->cfg.mode == TLM_PACE_FIXED)
		log_info("%s: bulk stream paced at %.1f Mbit/s (--bulk-pace)", id, rate * 8 / 1e6);
	else
		log_info("%s: bulk stream paced at %.1f Mbit/s (%u %% of the link's rate measured; "
			 "RTT %.1f ms)", id, rate * 8 / 1e6, PACE_PERCENT, ti.tcpi_rtt / 1e3);
	return 0;
}

uint64_t tlm_pace_ride_max(const struct tlm_pace *p)
{
	if (p->state != PACE_ON || !p->min_rtt_us)
		return UINT64_MAX;
	return p->rate * p->min_rtt_us / 1000000;
}

const char *tlm_pace_state_str(enum tlm_pace_state s)
{
	switch (s) {
	case PACE_IDLE: return "idle";
	case PACE_PROBING: return "probing";
	case PACE_ON: return "paced";
	case PACE_LAN: return "lan";
	case PACE_NONE: return "off";
	}
	return "?";
}

int tlm_pace_parse(const char *arg, struct tlm_pace_cfg *cfg)
{
	size_t n = strlen(arg);
	uint64_t v;

	if (!strcmp(arg, "auto") || !strcmp(arg, "off")) {
		*cfg = (struct tlm_pace_cfg){ .mode = arg[0] == 'a' ? TLM_PACE_AUTO : TLM_PACE_OFF };
		return 0;
	}
	if (n > 4 && !strcasecmp(arg + n - 4, "mbit")) {
		char num[32];

		if (n - 4 >= sizeof(num))
			return -EINVAL;
		memcpy(num, arg, n - 4);
		num[n - 4] = '\0';
		if (tlm_parse_u64(num, &v) < 0 || v == 0 || v > 1000000)
			return -EINVAL;
		v = v * 1000000 / 8;
	} else if (tlm_parse_size(arg, &v) < 0 || v < 4096) {
		return -EINVAL;
	}
	*cfg = (struct tlm_pace_cfg){ .mode = TLM_PACE_FIXED, .rate = v };
	return 0;
}
