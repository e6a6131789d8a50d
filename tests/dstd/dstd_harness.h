/*
 * dstd_harness.h — test harness for tlm-uffd-server: the real daemon binary, a fake
 * source page server played in-process (real TCP, real handshake, scripted replies) and
 * a fake glue played in-process (a MAP_PRIVATE mapping of a tmpfs template registered
 * MISSING|MINOR with a real userfaultfd, handed over with tlm_local_send).
 */
#ifndef TLM_DSTD_HARNESS_H
#define TLM_DSTD_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tlm_proto.h"
#include "template.h"
#include "tlm_uffd.h"

#define H_PS 4096u

/* Why the test cannot run here, or NULL. */
const char *h_uffd_unavailable(void);
/* NULL when tlm-uffd-server is built; else why not (a failure, never a skip). */
const char *h_bin_missing(void);

/* ---- files and the daemon ------------------------------------------------------------- */

struct h_env {
	char dir[256];                /* on /dev/shm (tmpfs: MINOR faults work) */
	char key[300], pages[300], glue_sock[300], ctl_sock[300], log[300];
	struct tlm_digest digest;
	uint64_t tmpl_pages;
	pid_t daemon;
};

int h_env_init(struct h_env *e);
void h_env_fini(struct h_env *e);
/* Template page k's bytes (deterministic, nonzero, distinct). */
void h_tmpl_page(uint64_t k, uint8_t *out);
/* Write the template pages file and its index. */
int h_make_template(struct h_env *e, uint64_t npages);
/* Start tlm-uffd-server with the standard options plus extra (NULL-terminated, may be
 * NULL); waits until both sockets exist. */
int h_daemon_start(struct h_env *e, const char *source, bool with_template,
		   const char *const *extra);
/* Wait for the daemon to exit by itself: its exit code, -1 (killed) or -ETIMEDOUT. */
int h_daemon_wait(struct h_env *e, int timeout_ms);
/* Signal the daemon and wait (timeout ms): its exit code, or -1 (killed/timeout). */
int h_daemon_stop(struct h_env *e, int sig, int timeout_ms);
void h_dump_log(const struct h_env *e);
/* Run the daemon binary with argv (NULL-terminated), wait: exit code; stderr into err. */
int h_run_daemon_args(const char *const *argv, char *err, size_t errlen);
/* Control request; reply malloc'ed into *out. */
int h_ctl(const struct h_env *e, const char *cmd, char **out);

/* ---- the fake glue -------------------------------------------------------------------- */

struct h_guest {
	uint8_t *ram;
	uint64_t npages;
	int tmpl_fd;
	struct tlm_uffd uffd;
	int sock;                      /* SOCK_SEQPACKET to the daemon */
};

void h_guest_init(struct h_guest *g);            /* nothing mapped, fds -1 */
/* Map the template privately, register it with a new uffd. */
int h_guest_map(struct h_guest *g, const struct h_env *e, uint64_t npages);
int h_guest_send_region(struct h_guest *g, const struct h_env *e, const char *vm_id,
			bool with_uffd);
/* Wait for one message from the daemon. 0 or -errno. */
int h_guest_recv(struct h_guest *g, struct tlm_local_msg *m, int *fd, int timeout_ms);
void h_guest_unmap(struct h_guest *g);

/* Touch page in a thread; the thread copies the page into out. */
struct h_touch {
	pthread_t th;
	const uint8_t *addr;
	uint8_t data[H_PS];
	volatile bool done;
	bool started, joined;
};
void h_touch_start(struct h_touch *t, const void *addr);
/* Join within timeout_ms: true if the touch finished. */
bool h_touch_wait(struct h_touch *t, int timeout_ms);

/* A test that hangs (a fault nobody answers) fails after `seconds` with a message naming
 * the daemon's log, instead of running into the ctest timeout. 0 disarms. */
void h_watchdog(const struct h_env *e, unsigned seconds);

/* /proc/self/pagemap entry of addr (bit 63 present, bit 61 file/shared, PFN bits 0-54). */
uint64_t h_pagemap(const void *addr);
#define H_PM_PRESENT (1ull << 63)
#define H_PM_FILE    (1ull << 61)
#define H_PM_PFN(x)  ((x) & ((1ull << 55) - 1))

/* ---- the fake source ------------------------------------------------------------------- */

/* What the fake source knows about each page: class, template page, bytes. */
struct h_page {
	uint8_t cls;                   /* enum tlm_page_class */
	uint64_t k;                    /* TEMPLATE/REF: template page */
	uint8_t *data;                 /* content (H_PS bytes); only DATA pages need it */
};

struct h_src {
	int lfd, port;
	int urg, bulk;
	int cmd[2];                    /* main -> source thread */
	pthread_t th;
	bool inited, started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool ready, quit;
	unsigned sessions;             /* pairs of sessions accepted so far */
	uint64_t hold_page;            /* UINT64_MAX: none; urgent reply held until 'R' */
	bool held;                     /* the DEMAND for hold_page came */
	bool bad_page_set;
	uint64_t bad_page;             /* sent with a wrong checksum on bulk */
	bool bad_always;               /* ... and on urgent too */
	unsigned *demands;             /* per page: times demanded */
	bool *sent_urgent;
	const struct h_page *pages;
	uint64_t npages;
	const struct tlm_key *key;
	char err[256];
	unsigned frames_per_map;       /* CLASS_MAP frames to split the map into */
	bool live;                     /* 'G' as in version 3's live phase: a live map, every
					  DATA page pre-sent, a fix map of KEEP, no PAGE more */
	bool hold_done;                /* 'G' sends no DONE: 'D' does */
	bool live_wrong_set;           /* live: the live map calls DATA page live_wrong
					  TEMPLATE (written after it): not pre-sent, the fix
					  map corrects it to DATA */
	uint64_t live_wrong;
	const struct tlm_msg *inject;  /* a hostile source: sent on bulk before the map */
	unsigned ninject;
};

int h_src_start(struct h_src *s, const struct tlm_key *key, const struct h_page *pages,
		uint64_t npages);
/* Commands: 'G' send the class map, the bulk stream and DONE (unless hold_done: 'D'
 * sends it); 'R' release the held page;
 * 'X' drop both sessions and accept new ones; 'Q' quit. */
void h_src_cmd(struct h_src *s, char c);
/* Wait until pred(s) holds (checked under the lock), timeout ms. */
bool h_src_wait(struct h_src *s, bool (*pred)(struct h_src *), int timeout_ms);
void h_src_stop(struct h_src *s);

int h_load_key(const struct h_env *e, struct tlm_key *k);

#endif
