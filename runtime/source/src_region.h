/*
 * src_region.h — one guest RAM region served by tlm-page-server: where its bytes come
 * from, its template, its phase, its class map and its counters.
 *
 * Sources (SPEC, also taken by the control command `add-region SPEC`):
 *   ID,file=PATH[,offset=N][,size=N][,template=PAGES]   RAM file, mapped read-only
 *   ID,pid=PID,addr=0xADDR,size=N[,template=PAGES]       range of a process, read with
 *                                                         process_vm_readv
 * Template correspondence: region page i is compared with template page tmpl_base + i,
 * where tmpl_base = offset / 4096 for a file source (the template mirrors the whole RAM
 * file, as the destination glue maps it) and 0 for a pid source.
 *
 * Nothing reads the guest's pages before the region is FROZEN: tlm_src_classify and
 * tlm_src_read_pages refuse with -EPERM in CONFIGURED (pure post-copy: the source VM may
 * still be running until the orchestrator stops it and sends `freeze`).
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
 *     -> FROZEN       ctl `freeze`: the orchestrator has stopped the source VM.
 *   FROZEN      reading allowed; the page server classifies at once (tlm_src_classify).
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
	TLM_SRC_FROZEN,
	TLM_SRC_CLASSIFIED,
	TLM_SRC_STREAMING,
	TLM_SRC_DONE,
	TLM_SRC_FAILED,
};

struct tlm_ps_sess;   /* a destination connection (src_session.h) */

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

	pid_t pid;                   /* pid source */
	uint64_t addr;
	int pagemap_fd;              /* /proc/PID/pagemap, -1 if unavailable */

	struct tlm_tmpl *tmpl;       /* NULL: no template (digest zero) */
	char tmpl_path[PATH_MAX];
	uint64_t tmpl_base;
	struct tlm_digest digest;
	dev_t tmpl_dev;              /* identity of the template file when opened */
	ino_t tmpl_ino;

	struct tlm_cls_map map;      /* valid from CLASSIFIED on */
	struct tlm_src_stats st;
	char fail[200];              /* why FAILED */

	struct tlm_ps_sess *urgent, *bulk;   /* at most one of each */
	struct tlm_src_region *next;
};

/* Parse SPEC, open the file / check the process, open the template. Reads no page.
 * Returns 0 or -errno with one line in err naming what is wrong. */
int tlm_src_region_new(struct tlm_src_region **out, const char *spec, char *err, size_t errlen);
void tlm_src_region_free(struct tlm_src_region *r);

/* Classify every page (phase must be FROZEN). Fills r->map and r->st.classify_ns.
 * 0 or -errno with err filled; the caller moves the phase. */
int tlm_src_classify(struct tlm_src_region *r, char *err, size_t errlen);

/* Read n pages (indices pages[], n <= TLM_SRC_READ_MAX) for sending: ptrs[i] points at page
 * pages[i], either into the file mapping or into buf (n * 4096 bytes). For pid sources one
 * process_vm_readv covers the batch. Phase must be FROZEN or later. 0 or -errno. */
#define TLM_SRC_READ_MAX 64u
int tlm_src_read_pages(struct tlm_src_region *r, const uint64_t *pages, unsigned n,
		       uint8_t *buf, const uint8_t **ptrs, char *err, size_t errlen);

const char *tlm_src_phase_name(enum tlm_src_phase p);
const char *tlm_src_kind_name(enum tlm_src_kind k);

#endif /* TLM_SRC_REGION_H */
