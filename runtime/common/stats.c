#include "stats.h"
#include "json.h"

#include <string.h>

void tlm_hist_init(struct tlm_hist *h)
{
	memset(h, 0, sizeof(*h));
	h->min_ns = UINT64_MAX;
}

/* Values below TLM_HIST_SUB get one bucket each; above, each power of two [2^m, 2^(m+1))
 * is split into TLM_HIST_SUB equal buckets. */
static unsigned hist_index(uint64_t v)
{
	const unsigned b = TLM_HIST_SUB_BITS;
	unsigned msb, idx;

	if (v < TLM_HIST_SUB)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	idx = (msb - b + 1u) * TLM_HIST_SUB + (unsigned)((v >> (msb - b)) & (TLM_HIST_SUB - 1));
	return idx < TLM_HIST_BUCKETS ? idx : TLM_HIST_BUCKETS - 1;
}

static uint64_t hist_upper(unsigned idx)
{
	const unsigned b = TLM_HIST_SUB_BITS;
	unsigned msb, sub;

	if (idx < TLM_HIST_SUB)
		return idx;
	msb = idx / TLM_HIST_SUB + b - 1u;
	sub = idx % TLM_HIST_SUB;
	return (((uint64_t)TLM_HIST_SUB + sub) << (msb - b)) + (1ull << (msb - b)) - 1;
}

void tlm_hist_add(struct tlm_hist *h, uint64_t ns)
{
	h->bucket[hist_index(ns)]++;
	h->count++;
	h->sum_ns += ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
	if (ns < h->min_ns)
		h->min_ns = ns;
}

void tlm_hist_merge(struct tlm_hist *dst, const struct tlm_hist *src)
{
	for (unsigned i = 0; i < TLM_HIST_BUCKETS; i++)
		dst->bucket[i] += src->bucket[i];
	dst->count += src->count;
	dst->sum_ns += src->sum_ns;
	if (src->max_ns > dst->max_ns)
		dst->max_ns = src->max_ns;
	if (src->min_ns < dst->min_ns)
		dst->min_ns = src->min_ns;
}

uint64_t tlm_hist_quantile(const struct tlm_hist *h, double q)
{
	uint64_t rank, seen = 0;

	if (h->count == 0)
		return 0;
	if (q >= 1.0)
		return h->max_ns;
	rank = (uint64_t)(q * (double)h->count) + 1;
	if (rank > h->count)
		rank = h->count;
	for (unsigned i = 0; i < TLM_HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank) {
			uint64_t up = hist_upper(i);

			return up < h->max_ns ? up : h->max_ns;
		}
	}
	return h->max_ns;
}

void tlm_hist_json(struct tlm_json *j, const char *key, const struct tlm_hist *h)
{
	tlm_json_obj_begin(j, key);
	tlm_json_u64(j, "count", h->count);
	tlm_json_double(j, "p50_us", (double)tlm_hist_quantile(h, 0.50) / 1e3);
	tlm_json_double(j, "p90_us", (double)tlm_hist_quantile(h, 0.90) / 1e3);
	tlm_json_double(j, "p99_us", (double)tlm_hist_quantile(h, 0.99) / 1e3);
	tlm_json_double(j, "max_us", (double)h->max_ns / 1e3);
	tlm_json_double(j, "mean_us", h->count ? (double)h->sum_ns / (double)h->count / 1e3 : 0.0);
	tlm_json_obj_end(j);
}
