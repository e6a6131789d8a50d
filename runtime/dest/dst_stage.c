/*
 * dst_stage.c — pre-sent DATA pages held aside (dst_stage.h).
 */
#include "dst_stage.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tlm_proto.h"

#define PS          TLM_PROTO_PAGE_SIZE
#define CHUNK_BYTES ((uint64_t)DST_STAGE_CHUNK * PS)

void dst_stage_init(struct dst_stage *s, struct dst_stage_pool *pool, uint64_t npages)
{
	memset(s, 0, sizeof(*s));
	s->pool = pool;
	s->npages = npages;
}

static uint8_t *slot_ptr(const struct dst_stage *s, uint32_t slot)
{
	return s->chunk[slot / DST_STAGE_CHUNK] + (uint64_t)(slot % DST_STAGE_CHUNK) * PS;
}

/* One more chunk from the pool; its slots go on the free stack so that they are taken in
 * order (pages pre-sent in order end up next to each other: one COPY places them). */
static int stage_grow(struct dst_stage *s)
{
	uint32_t n = s->nchunks, base = n * DST_STAGE_CHUNK;
	uint8_t **chunk;
	uint32_t *freel;

	if (!s->pool || s->pool->max < CHUNK_BYTES || s->pool->used > s->pool->max - CHUNK_BYTES)
		return -ENOSPC;
	chunk = realloc(s->chunk, (n + 1) * sizeof(*chunk));
	if (!chunk)
		return -ENOMEM;
	s->chunk = chunk;
	freel = realloc(s->freel, (size_t)(base + DST_STAGE_CHUNK) * sizeof(*freel));
	if (!freel)
		return -ENOMEM;
	s->freel = freel;
	chunk[n] = malloc(CHUNK_BYTES);
	if (!chunk[n])
		return -ENOMEM;
	for (uint32_t i = 0; i < DST_STAGE_CHUNK; i++)
		s->freel[s->nfree++] = base + DST_STAGE_CHUNK - 1 - i;
	s->nchunks++;
	s->pool->used += CHUNK_BYTES;
	return 0;
}

int dst_stage_put(struct dst_stage *s, uint64_t page, const uint8_t *data)
{
	uint32_t slot;
	int rc;

	if (s->idx && s->idx[page]) {
		memcpy(slot_ptr(s, s->idx[page] - 1), data, PS);
		return 0;
	}
	if (!s->pool || !s->pool->max)
		return -ENOSPC;
	if (!s->idx && !(s->idx = calloc(s->npages, sizeof(*s->idx))))
		return -ENOMEM;
	if (!s->nfree && (rc = stage_grow(s)) < 0) {
		if (!s->held)
			dst_stage_clear(s);     /* the index alone is no use */
		return rc;
	}
	slot = s->freel[--s->nfree];
	memcpy(slot_ptr(s, slot), data, PS);
	s->idx[page] = slot + 1;
	s->held++;
	return 0;
}

bool dst_stage_has(const struct dst_stage *s, uint64_t page)
{
	return s->idx && s->idx[page];
}

const uint8_t *dst_stage_get(const struct dst_stage *s, uint64_t page, uint64_t max,
			     uint64_t *n)
{
	uint32_t slot;
	uint64_t k = 1;

	if (!dst_stage_has(s, page))
		return NULL;
	slot = s->idx[page] - 1;
	while (k < max && (slot + k) % DST_STAGE_CHUNK && s->idx[page + k] == slot + k + 1)
		k++;
	*n = k;
	return slot_ptr(s, slot);
}

bool dst_stage_drop(struct dst_stage *s, uint64_t page)
{
	if (!dst_stage_has(s, page))
		return false;
	s->freel[s->nfree++] = s->idx[page] - 1;
	s->idx[page] = 0;
	if (!--s->held)
		dst_stage_clear(s);             /* the memory goes back to the pool */
	return true;
}

uint64_t dst_stage_drop_range(struct dst_stage *s, uint64_t page, uint64_t n)
{
	uint64_t dropped = 0;

	for (uint64_t i = page; i < page + n && s->held; i++)
		dropped += dst_stage_drop(s, i);
	return dropped;
}

uint64_t dst_stage_clear(struct dst_stage *s)
{
	uint64_t held = s->held;

	for (uint32_t i = 0; i < s->nchunks; i++)
		free(s->chunk[i]);
	if (s->pool)
		s->pool->used -= (uint64_t)s->nchunks * CHUNK_BYTES;
	free(s->chunk);
	free(s->freel);
	free(s->idx);
	s->chunk = NULL;
	s->freel = NULL;
	s->idx = NULL;
	s->nchunks = s->nfree = 0;
	s->held = 0;
	return held;
}
