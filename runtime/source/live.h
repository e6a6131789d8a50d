/*
 * live.h — the live phase of a region: classify the guest's RAM while the guest runs, keep
 * the result right under dirty tracking (dirty.h), and at freeze redo only the pages
 * written since they were read. The stopped guest then waits for work proportional to
 * what it wrote lately, not to its RAM size.
 *
 *     tlm_live_start(r, rate, why, len)   // ctl `live`: CONFIGURED -> LIVE, or post-copy
 *     ... a worker thread classifies: first pass in page order (rate-limited), then rounds
 *         every TLM_LIVE_ROUND_MS: collect the written pages, classify them again ...
 *     tlm_live_finish(r, err, len)        // ctl `freeze`, guest stopped, phase FROZEN:
 *                                         // stop the worker, last collect, redo, r->map
 *     tlm_live_free(l)                    // region freed
 *
 * Correctness rule (docs/ARCHITECTURE.md, "Correctness rules"): the class of page p in the
 * final map is computed from bytes read after the last write to p. Because
 *   1. tracking is armed (tlm_dirty_arm) before any page is read;
 *   2. every write after arming is reported by the first collect that follows it
 *      (PAGEMAP_SCAN reports and re-protects per page under the page-table lock;
 *      soft-dirty reports every page written since arming);
 *   3. every page a collect reports is read again after that collect returned: collects
 *      and re-reads run in sequence in one thread, and a page whose re-read was cut
 *      short by freeze stays in the stale set;
 *   4. the last collect runs in freeze, after QMP `stop` returned (no vCPU runs), and
 *      what it reports is read again before the region becomes CLASSIFIED.
 * A page written while it is being read (torn read) is covered by 2 and 3. Whatever
 * the worker read is only ever sent as a class: the live map (a snapshot of the tables
 * when the first pass ends, provisional, corrected by the fix map after freeze). Whenever
 * the live result cannot be trusted (the worker failed, the last collect failed), freeze
 * discards it and classifies every page after the stop, as without a live phase.
 *
 * Pre-sent DATA (presend.h): the event loop may read pages in LIVE and send them before
 * freeze. Such a copy is valid (the destination may place it) only if the guest did not
 * write the page after it was read for sending. `wrote` (a bitmap of atomic words) is how:
 *   5. every collect (worker rounds and the last one in freeze) ORs every page it reports
 *      into `wrote`;
 *   6. the loop clears a page's bit (tlm_live_wrote_clear, a full barrier) BEFORE it reads
 *      the page for sending, and sets the page in its own `sent` bitmap once the copy is
 *      queued; a page read but not queued gets its bit set again (tlm_live_wrote_mark);
 *   7. at freeze, after the last collect: valid = sent && !wrote.
 * A write after the clear is reported by a collect that follows the write (2), the last
 * one at the latest (4), and that collect's OR comes after the clear: the bit is set and
 * the copy is invalid. A write before the clear is either reported before it (the bit is
 * cleared, the read sees the new bytes) or after it (the bit stays set: a false invalid,
 * sent again, never a wrong page). So a valid copy holds the bytes of the stopped guest.
 *
 * Threads: the worker owns cls/ref/stale/next and the scan while it runs; the event loop
 * reads only the counters (relaxed atomics) until tlm_live_finish has joined it. The live
 * map changes hands once (tlm_live_take_map: an atomic exchange; the worker never touches
 * it after publishing). `wrote` is shared: atomic ORs (worker), atomic clears (loop).
 */
#ifndef TLM_LIVE_H
#define TLM_LIVE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "dirty.h"
#include "src_region.h"

#define TLM_LIVE_ROUND_MS 50u   /* between two collects once the first pass is done */

enum tlm_live_state {
	TLM_LIVE_PASS = 1,   /* first pass in page order */
	TLM_LIVE_ROUNDS,     /* first pass done: collect, reclassify, wait, again */
	TLM_LIVE_STOPPED,    /* worker ended (freeze, or failure: see err) */
};

struct tlm_live_stats {
	uint64_t classified;    /* first pass: pages classified so far */
	uint64_t rounds;        /* collects after the first pass */
	uint64_t dirty_last;    /* pages reported by the latest collect */
	uint64_t redone;        /* pages classified again while the guest ran */
	uint64_t pass_ns;       /* the first pass took this long (0: not finished) */
	uint64_t final_dirty;   /* freeze: pages written since their read (re-read then) */
	uint64_t final_ns;      /* freeze: last collect + re-reads + class map */
};

struct tlm_live {
	struct tlm_src_region *r;
	struct tlm_dirty dirty;
	uint64_t rate;               /* bytes/s read by the worker, 0 = no limit */
	uint8_t *cls;                /* [page_count] class of pages < next */
	uint32_t *ref;               /* [page_count] template page of REF pages */
	uint64_t *stale;             /* bitmap [page_count]: read again before use */
	uint64_t next;               /* first pass: next page */
	struct tlm_src_scan *scan;
	uint64_t pace_t0, pace_bytes;   /* rate limit: bytes read since pace_t0 */

	pthread_t thread;
	bool joined;
	pthread_mutex_t mu;
	pthread_cond_t cv;           /* CLOCK_MONOTONIC; stop wakes the worker's waits */
	bool stop;                   /* under mu */
	int state;                   /* enum tlm_live_state, relaxed atomic */
	int err;                     /* worker failure, -errno; read after the join */
	char errmsg[200];
	struct tlm_live_stats st;    /* written by the worker, relaxed atomics */
	uint64_t *wrote;             /* bitmap [page_count], atomic words: rule 5-7 above;
	                              * lives until tlm_live_free (freeze reads it) */
	struct tlm_cls_map *snap;    /* the live map once published, until taken (atomic) */
};

/*
 * Start the live phase of a CONFIGURED region (tracking r->pid at r->addr): open the
 * tracker, arm it, start the worker, phase LIVE. Returns 1 when live; 0 when dirty
 * tracking is not available here (why says why: pure post-copy, freeze classifies
 * everything); -errno on failure (why filled).
 */
int tlm_live_start(struct tlm_src_region *r, uint64_t rate, char *why, size_t whylen);

/* In freeze (phase FROZEN, guest stopped): stop the worker, collect the pages written
 * since their read, classify them and the pages the first pass had not reached, and
 * build r->map. 0, or -errno (err filled): the caller classifies every page instead. */
int tlm_live_finish(struct tlm_src_region *r, char *err, size_t errlen);

/* The live tables still hold a result that freeze can use (once only). */
bool tlm_live_usable(const struct tlm_live *l);

/* The live map: the classes of the first pass, published by the worker when it ends
 * (NULL before, and once taken). The caller owns it (tlm_cls_map_fini + free). */
struct tlm_cls_map *tlm_live_take_map(struct tlm_live *l);

/* `wrote` (rules 5-7): clear before reading a page for sending (a full barrier, so the
 * read cannot come first); mark again a page read but not sent; test. */
void tlm_live_wrote_clear(struct tlm_live *l, uint64_t page);
void tlm_live_wrote_mark(struct tlm_live *l, uint64_t page);
bool tlm_live_wrote(const struct tlm_live *l, uint64_t page);

/* Counters and state for `stats`, safe while the worker runs. */
void tlm_live_snapshot(const struct tlm_live *l, struct tlm_live_stats *st, int *state);
const char *tlm_live_state_name(int state);

/* Stop the worker if it runs, release everything. NULL is fine. */
void tlm_live_free(struct tlm_live *l);

#endif
