/*
 * src_region.h — one guest RAM region served by tlm-page-server: where its bytes come
 * from, its template, its phase, its class map and its counters.
 *
 * Sources (SPEC, also taken by the control command `add-region SPEC`):
 *   ID,file=PATH[,offset=N][,size=N][,template=PAGES][,pid=PID,addr=0xADDR]
 *        RAM file, mapped read-only; pid/addr name the process that maps the file's byte
 *        `offset` at addr (the guest's QEMU): only its writes are tracked (live phase)
 *   ID,pid=PID,addr=0xADDR,size=N[,template=PAGES]
 *        range of a process, read with process_vm_readv (and tracked there)
 * Template correspondence: region page i is compared with template page tmpl_base + i,
 * where tmpl_base = offset / 4096 for a file source (the template mirrors the whole RAM
 * file, as the destination glue maps it) and 0 for a pid source.
 *
 * tlm_src_read_pages refuses with -EPERM in CONFIGURED and LIVE (the source VM may still
 * be running until the orchestrator stops it and sends `freeze`). The live phase (live.h)
 * reads and classifies pages while the guest runs, under dirty tracking; freeze keeps a
 * live result only for pages the tracker proves unwritten since they were read. Pages
 * pre-sent in LIVE (presend.h) are read with tlm_src_read_presend, under the same
 * tracking: the destination uses such a copy only if the fix map says it stands.
 */
#ifndef TLM_SRC_REGION_H
#define TLM_SRC_REGION_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tlm_proto.h"
#include "classify.h"
#include "template.h"

enum tlm_src_kind { TLM_SRC_FILE = 1, TLM_SRC_PID = 2 };

/*
 * Phase of a region. Moved only by the page server's event loop (page_server.c on control
 * commands, src_session.c as the bulk stream progresses); every message from a
 * destination is checked against it.
 *   CONFIGURED  known (--region / add-region); sessions may open and demands queue up,
 *               but no page is read.
 *     -> LIVE         ctl `live` with working dirty tracking (live.h).
 *     -> FROZEN       ctl `freeze`: the orchestrator has stopped the source VM.
 *   LIVE        a worker thread classifies the running guest's pages and reclassifies
 *               what it writes; an open bulk session gets the live map and pre-sent
 *               DATA (presend.h), demands queue up as in CONFIGURED.
 *     -> FROZEN       ctl `freeze`: the worker stops, one last collect of written pages.
 *   FROZEN      reading allowed; the page server classifies at once: from the live
 *               result plus the pages written since (tlm_live_finish), or all pages
 *               (tlm_src_classify).
 *     -> CLASSIFIED   class map complete; queued demands are answered.
 *     -> FAILED       the source could not be read (process gone, file too short).
 *   CLASSIFIED  waiting for a bulk session.
 *     -> STREAMING    a bulk session is open: class map, then every DATA page.
 *   STREAMING   -> DONE when DONE is queued; -> CLASSIFIED when the bulk session drops.
 *   DONE        every DATA page went out; demands are still answered.
 *     -> STREAMING    a new bulk session (reconnect): everything is sent again.
 *   FAILED      sessions get ERROR INTERNAL; `freeze` again retries the classification.
 */
enum tlm_src_phase {
	TLM_SRC_CONFIGURED = 0,
	TLM_SRC_LIVE,
	TLM_SRC_FROZEN,
	TLM_SRC_CLASSIFIED,
	TLM_SRC_STREAMING,
	TLM_SRC_DONE,
	TLM_SRC_FAILED,
};

struct tlm_ps_sess;   /* a destination connection (src_session.h) */
struct tlm_live;      /* the live phase's worker and tables (live.h) */
struct tlm_presend;   /* live map, pre-sent DATA, fix map (presend.h) */

/* Counters for `stats`. Wire bytes: payload = page bytes of PAGE messages; overhead =
 * everything else in both directions (frame headers, class map, demands, replies). */
struct tlm_src_stats {
	uint64_t freeze_ns;          /* CLOCK_MONOTONIC at freeze, 0 before */
	uint64_t done_ns;            /* first DONE queued, 0 before */
	uint64_t classify_ns;
	uint64_t payload_bytes;
	uint64_t wire_bytes_closed;  /* bytes in+out of sessions that have ended */
	uint64_t demand_requests, demand_pages;
	uint64_t data_sent_bulk, data_sent_urgent;
	uint64_t demand_on_bulk;      /* demands left to the bulk copy already on its way */
	uint64_t sessions_opened, sessions_dropped;
	uint64_t bulk_rounds;        /* bulk streams completed (DONE sent) */
	int bulk_pace_state;         /* the last bulk session's enum tlm_pace_state */
	uint64_t bulk_pace_bps;      /* and its pace (bytes/s, 0: none) */
};

struct tlm_src_region {
	char id[TLM_PROTO_VMID_MAX + 1];
	enum tlm_src_kind kind;
	enum tlm_src_phase phase;
	bool bulk_hold;              /* --bulk-hold: no DATA on bulk until `bulk-release` */
	uint64_t size, page_count;

	char path[PATH_MAX];         /* file source */
	uint64_t offset;
	int fd;
	const uint8_t *ram;          /* read-only mapping of [offset, offset + size) */

	pid_t pid;                   /* pid source; file source: tracked process, 0 = none */
	uint64_t addr;
	int pagemap_fd;              /* /proc/PID/pagemap, -1 if unavailable */

	struct tlm_tmpl *tmpl;       /* NULL: no template (digest zero) */
	char tmpl_path[PATH_MAX];
	uint64_t tmpl_base;
	struct tlm_digest digest;
	dev_t tmpl_dev;              /* identity of the template file when opened */
	ino_t tmpl_ino;

	struct tlm_cls_map map;      /* valid from CLASSIFIED on */
	struct tlm_live *live;       /* live phase (NULL: none); freed by the page server */
	char live_why[160];          /* how it tracks, or why there is no live phase */
	struct tlm_presend *pre;     /* with r->live; freed by the page server */
	int policy;                  /* enum tlm_policy (presend.h) */
	struct tlm_src_stats st;
	char fail[200];              /* why FAILED */

	struct tlm_ps_sess *urgent, *bulk;   /* at most one of each */
	uint64_t bulk_credit;        /* bulk bytes the destination has handled (CREDIT) */
	bool credit_ok;              /* bulk_credit is about the current bulk session */
	struct tlm_src_region *next;
};

/* Parse SPEC, open the file / check the process, open the template. Reads no page.
 * Returns 0 or -errno with one line in err naming what is wrong. */
int tlm_src_region_new(struct tlm_src_region **out, const char *spec, char *err, size_t errlen);
void tlm_src_region_free(struct tlm_src_region *r);

/* Classify every page (phase must be FROZEN). Fills r->map and r->st.classify_ns.
 * 0 or -errno with err filled; the caller moves the phase. */
int tlm_src_classify(struct tlm_src_region *r, char *err, size_t errlen);

/*
 * Scans: classify pages as they are now, batch by batch, in any order (freeze in page
 * order; the live phase first in order, then the written pages). The caller decides that
 * reading is allowed (LIVE or FROZEN); scans change nothing in the region.
 *     tlm_src_scan_open(r, &s, err, len);
 *     tlm_src_scan_batch(s, first, n, cls, k, err, len);   // n <= TLM_SRC_SCAN_BATCH
 *     tlm_src_scan_close(s);
 * cls[i] is the class of page first + i, k[i] its template page (TEMPLATE, REF).
 */
#define TLM_SRC_SCAN_BATCH 64u   /* pages per batch: one process_vm_readv of 256 KiB */
struct tlm_src_scan;
int tlm_src_scan_open(struct tlm_src_region *r, struct tlm_src_scan **s, char *err,
		      size_t errlen);
int tlm_src_scan_batch(struct tlm_src_scan *s, uint64_t first, unsigned n, uint8_t *cls,
		       uint64_t *k, char *err, size_t errlen);
/* Pages of the scan classified TEMPLATE from the pagemap, without reading them. */
uint64_t tlm_src_scan_known(const struct tlm_src_scan *s);
/* Pages of the scan (file source) that lay in holes of the RAM file: classified as zeros
 * without reading them (never written, or discarded by the guest, F9). */
uint64_t tlm_src_scan_holes(const struct tlm_src_scan *s);
void tlm_src_scan_close(struct tlm_src_scan *s);

/* Read n pages (indices pages[], n <= TLM_SRC_READ_MAX) for sending: ptrs[i] points at page
 * pages[i], either into the file mapping or into buf (n * 4096 bytes). For pid sources one
 * process_vm_readv covers the batch. Phase must be FROZEN or later. 0 or -errno. */
#define TLM_SRC_READ_MAX 64u
int tlm_src_read_pages(struct tlm_src_region *r, const uint64_t *pages, unsigned n,
		       uint8_t *buf, const uint8_t **ptrs, char *err, size_t errlen);
/* The same in phase LIVE, for pre-sending only: the caller has cleared the pages' `wrote`
 * bits first (live.h, rule 6; presend.c does). */
int tlm_src_read_presend(struct tlm_src_region *r, const uint64_t *pages, unsigned n,
			 uint8_t *buf, const uint8_t **ptrs, char *err, size_t errlen);

const char *tlm_src_phase_name(enum tlm_src_phase p);
const char *tlm_src_kind_name(enum tlm_src_kind k);

#endif /* TLM_SRC_REGION_H */
