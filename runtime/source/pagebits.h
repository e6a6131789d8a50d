/*
 * pagebits.h — one bit per guest page, in 64-bit words: the live phase's stale set and
 * `wrote` (live.c) and the copies pre-sent (presend.c). Plain accessors; the atomic ones
 * `wrote` needs use tlm_pb_word / tlm_pb_mask on the same layout.
 */
#ifndef TLM_PAGEBITS_H
#define TLM_PAGEBITS_H

#include <stdbool.h>
#include <stdint.h>

#define TLM_PB_BITS 64u

/* Words of a bitmap of pages bits. */
static inline uint64_t tlm_pb_words(uint64_t pages)
{
	return (pages + TLM_PB_BITS - 1) / TLM_PB_BITS;
}

static inline uint64_t tlm_pb_word(uint64_t page)
{
	return page / TLM_PB_BITS;
}

static inline uint64_t tlm_pb_mask(uint64_t page)
{
	return 1ull << (page % TLM_PB_BITS);
}

static inline bool tlm_pb_test(const uint64_t *b, uint64_t page)
{
	return b[tlm_pb_word(page)] & tlm_pb_mask(page);
}

static inline void tlm_pb_set(uint64_t *b, uint64_t page)
{
	b[tlm_pb_word(page)] |= tlm_pb_mask(page);
}

static inline void tlm_pb_clear(uint64_t *b, uint64_t page)
{
	b[tlm_pb_word(page)] &= ~tlm_pb_mask(page);
}

#endif /* TLM_PAGEBITS_H */
