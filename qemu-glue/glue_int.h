/*
 * glue_int.h — internals of libtlm-glue.so shared by glue.c (mmap interposition, mapping)
 * and glue_daemon.c (talking to tlm-uffd-server, arming the userfaultfd).
 *
 * Nothing here is exported: the library's only public symbols are mmap and mmap64.
 */
#ifndef TLM_GLUE_INT_H
#define TLM_GLUE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/types.h>

#include "tlm_proto.h"
#include "tlm_uffd.h"

#define GLUE_HIDDEN __attribute__((visibility("hidden")))
#define GLUE_PAGE 4096u

enum glue_level { GLUE_ERROR = 0, GLUE_WARN, GLUE_INFO, GLUE_DEBUG };

enum glue_arm_mode {
	GLUE_ARM_DEFERRED = 0,  /* a glue thread waits for ARM from the daemon */
	GLUE_ARM_MAP,           /* register + hand over inside the mmap call */
};

/* Environment, read once (glue_config()). Strings point into the environment. */
struct glue_cfg {
	const char *ram_path;      /* TLM_RAM_PATH: NULL = the glue does nothing */
	const char *template_path; /* TLM_TEMPLATE */
	const char *sock_path;     /* TLM_SOCK */
	const char *vm_id;         /* TLM_VM_ID */
	const char *source;        /* TLM_SOURCE */
	const char *region_file;   /* TLM_REGION_FILE: where to publish the mapped region */
	bool track;                /* TLM_TRACK=1: register the RAM for dirty tracking */
	enum glue_arm_mode arm;
	enum glue_level level;
};

/*
 * Region state. Who moves it: glue_map_region (mmap caller) NONE -> MAPPED (and -> ARMED in
 * map mode); the glue thread MAPPED -> ARMED on ARM, ARMED -> DONE on DONE.
 */
enum glue_state { GLUE_NONE = 0, GLUE_MAPPED, GLUE_ARMED, GLUE_DONE };

/* The one intercepted RAM region. */
struct glue_region {
	enum glue_state state;
	void *base;
	size_t size;
	uint64_t offset;           /* offset in the RAM file (and in the template) */
	bool has_template;
	bool shared;               /* the program's own shared file mapping was kept */
	uint8_t digest[16];        /* template digest from PAGES.tlmi, zero without template */
	int sock;                  /* SOCK_SEQPACKET to tlm-uffd-server, -1 without TLM_SOCK */
	struct tlm_uffd uffd;      /* our copy of the uffd; fd -1 until armed */
	struct tlm_uffd track;     /* TLM_TRACK: WP_ASYNC registration, open for life; fd -1 */
	pthread_t thread;
	bool thread_started;
};

/* glue_env.c (used by both files below) */
GLUE_HIDDEN const struct glue_cfg *glue_config(void);
GLUE_HIDDEN const char *glue_vm(void);     /* TLM_VM_ID for log lines, "-" when unset */
GLUE_HIDDEN void glue_log(enum glue_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* glue_track.c (used by glue.c and glue_daemon.c) */
/* TLM_REGION_FILE: (re)write the line describing the region. */
GLUE_HIDDEN void glue_publish(const struct glue_region *r, const struct glue_cfg *c);
/* TLM_TRACK at mmap: register for dirty tracking, unless a daemon's uffd takes the range. */
GLUE_HIDDEN void glue_track_mapped(struct glue_region *r, const struct glue_cfg *c);
/* TLM_TRACK on DONE (the daemon unregistered): register now, publish the region again. */
GLUE_HIDDEN void glue_track_done(struct glue_region *r);

/* glue_daemon.c (used by glue.c; it calls nothing of glue.c) */
GLUE_HIDDEN int glue_daemon_connect(const char *path, char *err, size_t errlen);
GLUE_HIDDEN int glue_arm(struct glue_region *r, char *err, size_t errlen);
GLUE_HIDDEN int glue_send_region(struct glue_region *r, char *err, size_t errlen);
GLUE_HIDDEN int glue_thread_start(struct glue_region *r, char *err, size_t errlen);

#endif
