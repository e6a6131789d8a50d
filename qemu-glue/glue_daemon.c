/*
 * glue_daemon.c — the glue's side of the local protocol with tlm-uffd-server
 * (protocol/tlm_proto.h, "local messages"), and arming the userfaultfd.
 *
 *   glue -> daemon  REGION  (+ uffd when TLM_ARM=map: armed before mmap returns)
 *   daemon -> glue  ARM     (TLM_ARM=deferred) -> discard, register, glue -> daemon UFFD + fd
 *   daemon -> glue  DONE    every page present: we drop our uffd copy
 *   daemon -> glue  ERROR   logged; we keep our uffd copy
 *
 * We always keep our own reference to the uffd until DONE: if the daemon dies, the guest's
 * faults wait (the uffd is still open) instead of the kernel handing out zero pages or
 * SIGBUS. A guest that cannot finish its migration stays paused, never wrong.
 *
 * Daemon restart: when the connection breaks before DONE, the glue thread reconnects to
 * TLM_SOCK with backoff (GLUE_RETRY_MIN_MS doubling up to GLUE_RETRY_MAX_MS, for as long
 * as it takes) and sends REGION again: flagged ARMED with our uffd when armed, so the new
 * daemon takes over where the old one stopped (it finds placed pages in our pagemap).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "glue_int.h"

#define GLUE_RETRY_MIN_MS 50
#define GLUE_RETRY_MAX_MS 2000

int glue_daemon_connect(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uid_t uid = (uid_t)-1;
	int fd, rc;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen, "TLM_SOCK %s: path too long", path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return rc;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot reach tlm-uffd-server at %s: %s", path,
			 strerror(errno));
		close(fd);
		return rc;
	}
	/* The uffd goes to whoever listens there: only to root or our own user. */
	rc = tlm_local_peer_ok(fd, NULL, &uid);
	if (rc < 0) {
		snprintf(err, errlen, "TLM_SOCK %s: %s (uid %u); not handing guest RAM to it", path,
			 rc == -EPERM ? "the listener is neither root nor our user" :
			 strerror(-rc), (unsigned)uid);
		close(fd);
		return rc;
	}
	return fd;
}

static int glue_check_ioctls(const struct glue_region *r, uint64_t ioctls, char *err,
			     size_t errlen)
{
	uint64_t need = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) |
			(1ull << _UFFDIO_WAKE);

	if (r->has_template)
		need |= 1ull << _UFFDIO_CONTINUE;
	if ((ioctls & need) != need) {
		snprintf(err, errlen, "registered range lacks uffd ioctls 0x%llx",
			 (unsigned long long)(need & ~ioctls));
		return -EINVAL;
	}
	return 0;
}

/*
 * Register the region with a new uffd. Whatever the mapping held before (the program may
 * have written to it, or the kernel populated it) is discarded first: content from before
 * arming must never reach the guest. Template-backed regions are registered MISSING|MINOR
 * (first touch of a template page is a minor fault the daemon answers with CONTINUE).
 */
int glue_arm(struct glue_region *r, char *err, size_t errlen)
{
	uint64_t features = UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |
			    UFFD_FEATURE_EVENT_REMAP;
	unsigned modes = TLM_UFFD_MODE_MISSING;
	uint64_t ioctls = 0;
	int rc;

	if (r->has_template) {
		features |= UFFD_FEATURE_MINOR_SHMEM;
		modes |= TLM_UFFD_MODE_MINOR;
	}
	if (madvise(r->base, r->size, MADV_DONTNEED) < 0) {
		rc = -errno;
		snprintf(err, errlen, "discarding the region before arming: %s", strerror(errno));
		return rc;
	}
	rc = tlm_uffd_open(&r->uffd, TLM_UFFD_NONBLOCK, features);
	if (rc < 0) {
		snprintf(err, errlen, "userfaultfd: %s%s", strerror(-rc), rc == -EINVAL ?
			 " (kernel lacks EVENT_REMOVE/UNMAP/REMAP or MINOR_SHMEM)" : "");
		return rc;
	}
	rc = tlm_uffd_register(&r->uffd, r->base, r->size, modes, &ioctls);
	if (rc < 0)
		snprintf(err, errlen, "registering %p+%zu with userfaultfd: %s", r->base, r->size,
			 strerror(-rc));
	else
		rc = glue_check_ioctls(r, ioctls, err, errlen);
	if (rc < 0) {
		tlm_uffd_close(&r->uffd);
		r->uffd.fd = -1;
		return rc;
	}
	r->state = GLUE_ARMED;
	return 0;
}

static void glue_fill(const struct glue_region *r, struct tlm_local_msg *m, uint32_t type)
{
	const struct glue_cfg *c = glue_config();

	memset(m, 0, sizeof(*m));
	m->version = TLM_LOCAL_VERSION;
	m->type = type;
	m->flags = (r->has_template ? TLM_REGION_TEMPLATE : 0) |
		   (r->state == GLUE_ARMED ? TLM_REGION_ARMED : 0);
	m->page_size = GLUE_PAGE;
	m->base = (uint64_t)(uintptr_t)r->base;
	m->size = r->size;
	m->offset = r->offset;
	m->uffd_features = r->state == GLUE_ARMED ? r->uffd.features : 0;
	memcpy(m->digest, r->digest, sizeof(m->digest));
	if (c->vm_id)
		snprintf(m->vm_id, sizeof(m->vm_id), "%s", c->vm_id);
	if (c->source)
		snprintf(m->source, sizeof(m->source), "%s", c->source);
}

int glue_send_region(struct glue_region *r, char *err, size_t errlen)
{
	struct tlm_local_msg m;
	bool armed = r->state == GLUE_ARMED;
	int rc;

	glue_fill(r, &m, TLM_LOCAL_REGION);
	rc = tlm_local_send(r->sock, &m, armed ? r->uffd.fd : -1);
	if (rc < 0) {
		snprintf(err, errlen, "sending REGION to tlm-uffd-server: %s", strerror(-rc));
		errno = -rc;
	}
	return rc;
}

static void glue_send_error(struct glue_region *r, const char *text)
{
	struct tlm_local_msg m;

	glue_fill(r, &m, TLM_LOCAL_ERROR);
	snprintf(m.text, sizeof(m.text), "%.*s", (int)sizeof(m.text) - 1, text);
	tlm_local_send(r->sock, &m, -1);
}

/* ARM from the daemon (deferred mode): register now and hand the uffd over. */
static void glue_on_arm(struct glue_region *r)
{
	struct tlm_local_msg m;
	char err[320];
	int rc;

	if (r->state != GLUE_MAPPED) {
		glue_log(GLUE_DEBUG, "%s: ARM ignored: region already armed", glue_vm());
		return;
	}
	if (glue_arm(r, err, sizeof(err)) < 0) {
		glue_log(GLUE_ERROR, "%s: arming failed: %s", glue_vm(), err);
		glue_send_error(r, err);
		return;
	}
	glue_fill(r, &m, TLM_LOCAL_UFFD);
	rc = tlm_local_send(r->sock, &m, r->uffd.fd);
	if (rc < 0)
		glue_log(GLUE_ERROR, "%s: sending the uffd to tlm-uffd-server: %s (keeping it: "
			 "faults wait)", glue_vm(), strerror(-rc));
	else
		glue_log(GLUE_INFO, "%s: armed on request, uffd handed over", glue_vm());
}

static void glue_on_msg(struct glue_region *r, const struct tlm_local_msg *m)
{
	switch (m->type) {
	case TLM_LOCAL_ARM:
		glue_on_arm(r);
		break;
	case TLM_LOCAL_DONE:
		glue_log(GLUE_INFO, "%s: migration done: every page present", glue_vm());
		if (r->uffd.fd >= 0)
			tlm_uffd_close(&r->uffd);   /* the daemon has unregistered */
		r->uffd.fd = -1;
		r->state = GLUE_DONE;
		glue_track_done(r);
		break;
	case TLM_LOCAL_ERROR:
		glue_log(GLUE_ERROR, "%s: tlm-uffd-server: %s%s", glue_vm(), m->text,
			 r->state == GLUE_ARMED ? " (keeping the uffd: faults wait)" : "");
		break;
	default:
		glue_log(GLUE_WARN, "%s: unexpected local message type %u", glue_vm(), m->type);
	}
}

/* Handle messages until the connection ends; returns what ended it (0 = closed). */
static ssize_t glue_serve(struct glue_region *r)
{
	struct tlm_local_msg m;
	char err[256];
	ssize_t n;
	int fd;

	for (;;) {
		n = tlm_local_recv(r->sock, &m, &fd);
		if (n == -EINTR)
			continue;
		if (n == -EBADMSG) {
			glue_log(GLUE_WARN, "%s: malformed packet from tlm-uffd-server ignored",
				 glue_vm());
			continue;
		}
		if (n <= 0)
			return n;
		if (fd >= 0)
			close(fd);           /* the daemon never sends fds */
		if (tlm_local_check(&m, (size_t)n, err, sizeof(err)) < 0) {
			glue_log(GLUE_WARN, "%s: bad message from tlm-uffd-server: %s", glue_vm(),
				 err);
			continue;
		}
		glue_on_msg(r, &m);
		if (r->state == GLUE_DONE)
			return 0;
	}
}

/* The daemon went away: reconnect with backoff and hand the region over again. */
static void glue_reconnect(struct glue_region *r)
{
	unsigned ms = GLUE_RETRY_MIN_MS;
	char err[320];

	close(r->sock);
	r->sock = -1;
	for (;;) {
		struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
		int fd;

		nanosleep(&ts, NULL);
		fd = glue_daemon_connect(glue_config()->sock_path, err, sizeof(err));
		if (fd >= 0) {
			r->sock = fd;
			if (glue_send_region(r, err, sizeof(err)) == 0)
				break;
			close(fd);
			r->sock = -1;
		}
		glue_log(GLUE_DEBUG, "%s: reconnecting: %s", glue_vm(), err);
		ms = ms * 2 > GLUE_RETRY_MAX_MS ? GLUE_RETRY_MAX_MS : ms * 2;
	}
	glue_log(GLUE_INFO, "%s: reconnected to tlm-uffd-server; region %s", glue_vm(),
		 r->state == GLUE_ARMED ? "and uffd handed over again" : "sent again (not armed)");
}

static void *glue_thread(void *arg)
{
	struct glue_region *r = arg;

	for (;;) {
		ssize_t n = glue_serve(r);

		if (r->state == GLUE_DONE)
			return NULL;
		glue_log(GLUE_WARN, "%s: tlm-uffd-server connection %s%s", glue_vm(),
			 n == 0 ? "closed" : strerror((int)-n), r->state == GLUE_ARMED ?
			 "; keeping the uffd (faults wait) and reconnecting" :
			 "; the region was never armed: reconnecting");
		glue_reconnect(r);
	}
}

/* The thread must never take the program's signals: block them all while creating it. */
int glue_thread_start(struct glue_region *r, char *err, size_t errlen)
{
	sigset_t all, old;
	pthread_attr_t attr;
	int rc;

	sigfillset(&all);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&r->thread, &attr, glue_thread, r);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (rc) {
		snprintf(err, errlen, "starting the glue thread: %s", strerror(rc));
		errno = rc;
		return -rc;
	}
	pthread_setname_np(r->thread, "tlm-glue");
	r->thread_started = true;
	return 0;
}
