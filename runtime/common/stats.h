/*
 * stats.h — latency histogram (log-linear buckets, bounded memory) for fault service
 * times and per-region counters.
 */
#ifndef TLM_STATS_H
#define TLM_STATS_H

#include <stdint.h>

struct tlm_json;

/* 32 linear sub-buckets per power of two from 1 ns to ~2^41 ns: relative error <= 3.2 %
 * (8 gave 12.5 %: a 20 ms WAN fault could only read 21.0, 23.1 or 25.2 ms). 9.5 KiB each. */
#define TLM_HIST_SUB_BITS 5
#define TLM_HIST_SUB (1u << TLM_HIST_SUB_BITS)
#define TLM_HIST_BUCKETS ((42 - TLM_HIST_SUB_BITS) * TLM_HIST_SUB)

struct tlm_hist {
	uint64_t bucket[TLM_HIST_BUCKETS];
	uint64_t count, sum_ns, max_ns, min_ns;
};

void tlm_hist_init(struct tlm_hist *h);
void tlm_hist_add(struct tlm_hist *h, uint64_t ns);
void tlm_hist_merge(struct tlm_hist *dst, const struct tlm_hist *src);
/* Value at quantile q (0..1) in ns: the upper edge of the bucket holding it (max for q=1). */
uint64_t tlm_hist_quantile(const struct tlm_hist *h, double q);
/* Writes {"count":..,"p50_us":..,"p90_us":..,"p99_us":..,"max_us":..,"mean_us":..}. */
void tlm_hist_json(struct tlm_json *j, const char *key, const struct tlm_hist *h);

#endif
