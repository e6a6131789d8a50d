/*
 * tlm-bench-runtime — baselines for scripts/bench-runtime.sh (a benchmark, not a test).
 *
 *   tlm-bench-runtime tcp --bytes N [--chunk SIZE] [--fresh] [--tls]
 *       a plain TCP stream of N bytes over loopback: a forked receiver reads and drops,
 *       the sender writes SIZE bytes per write (default 1M); prints
 *       "tcp_mb_per_s=X bytes=N seconds=S" (first write to the receiver's end of stream).
 *       The yardstick for the page server's background stream, which carries pages over the
 *       same kind of connection in the same run. --fresh: the receiver reads into N bytes
 *       of newly mapped memory instead of one reused buffer, as a destination must place
 *       pages into memory that nothing has touched yet (on some machines, virtual ones in
 *       particular, backing fresh memory costs more than moving the bytes). --tls: both
 *       ends behind the daemons' TLS layer (tlm_tls.h: kTLS or the relay thread, whichever
 *       this host gives them), the handshake before the clock starts: what encryption
 *       costs a stream when nothing else limits it.
 *
 *   tlm-bench-runtime place --bytes N [--threads T] [--run PAGES]
 *       what placing costs and how it scales: N bytes of fresh anonymous memory registered
 *       with userfaultfd (MISSING), filled with UFFDIO_COPY in runs of PAGES pages
 *       (default 64, a PAGES frame) by T threads (default 1) each taking its own slice,
 *       as placement threads of tlm-uffd-server would; prints
 *       "place_mb_per_s=X threads=T run=PAGES us_per_page=U" (U: wall time per page
 *       times T, the CPU a page costs when the threads are busy).
 */
#include "tlm_proto.h"
#include "tlm_tls.h"
#include "tlm_uffd.h"
#include "util.h"

#include <pthread.h>

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define RECV_BUF (256u << 10)

static const char usage[] =
	"usage: tlm-bench-runtime tcp --bytes N [--chunk SIZE] [--fresh] [--tls]\n"
	"       tlm-bench-runtime place --bytes N [--threads T] [--run PAGES]\n"
	"  tcp: a plain TCP stream of N bytes over loopback (k/M/G suffixes); prints\n"
	"  tcp_mb_per_s=X; --fresh: received into N bytes of newly mapped memory;\n"
	"  --tls: over the daemons' TLS layer (--tls psk)\n"
	"  place: N bytes of fresh memory filled by UFFDIO_COPY in runs of PAGES pages (64)\n"
	"  by T threads (1); prints place_mb_per_s=X\n";

/* With --tls: fd behind the daemons' TLS layer (a benchmark key: nothing secret here).
 * The fd to use, or -1 (message printed). */
static int tls_wrap(int fd, bool server)
{
	struct tlm_key k = { .len = 32 };
	struct tlm_tls *t;
	char mode[96], err[256];
	int app;

	memset(k.b, 0x5a, k.len);
	signal(SIGPIPE, SIG_IGN);           /* tlm_tls.h: a relay writes TCP with write() */
	if (tlm_tls_new(&t, server, &k, err, sizeof(err)) < 0 ||
	    tlm_tls_wrap(t, fd, 10000, &app, mode, sizeof(mode), err, sizeof(err)) < 0) {
		fprintf(stderr, "tlm-bench-runtime: %s\n", err);
		close(fd);
		return -1;
	}
	tlm_tls_free(t);
	if (!server)
		printf("tls: %s\n", mode);
	return app;
}

/* Receiver: read until end of stream, into one reused buffer or (fresh) into want bytes
 * of new memory. Exit status 0 if exactly want bytes came. */
static int tcp_sink(int lfd, uint64_t want, bool fresh, bool tls)
{
	static char buf[RECV_BUF];
	char *mem = fresh ? mmap(NULL, want, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) : buf;
	uint64_t got = 0;
	ssize_t n;
	int fd = accept(lfd, NULL, NULL);

	if (fd >= 0 && tls)
		fd = tls_wrap(fd, true);
	if (fd < 0 || mem == MAP_FAILED)
		return 1;
	for (;;) {
		char *at = fresh ? mem + got : buf;
		size_t room = fresh ? (size_t)(want - got < RECV_BUF ? want - got : RECV_BUF) :
				      sizeof(buf);

		n = read(fd, at, room ? room : 1);
		if (n == 0)
			break;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || (fresh && !room))
			return 1;
		got += (uint64_t)n;
	}
	return got == want ? 0 : 1;
}

static int tcp_send(int fd, uint64_t bytes, size_t chunk)
{
	char *buf = calloc(1, chunk);
	uint64_t left = bytes;

	if (!buf)
		return -ENOMEM;
	while (left) {
		ssize_t n = write(fd, buf, left < chunk ? (size_t)left : chunk);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			return -errno;
		}
		left -= (uint64_t)n;
	}
	free(buf);
	return 0;
}

static int listen_loopback(struct sockaddr_in *a)
{
	socklen_t len = sizeof(*a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)a, sizeof(*a)) < 0 || listen(fd, 1) < 0 ||
	    getsockname(fd, (struct sockaddr *)a, &len) < 0) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	return fd;
}

static int tcp_stream(uint64_t bytes, size_t chunk, bool fresh, bool tls)
{
	struct sockaddr_in a;
	int lfd = listen_loopback(&a), fd, st, rc;
	uint64_t t0;
	double secs;
	pid_t pid;

	if (lfd < 0 || (pid = fork()) < 0) {
		fprintf(stderr, "tlm-bench-runtime: loopback listener: %s\n", strerror(errno));
		return 1;
	}
	if (pid == 0)
		_exit(tcp_sink(lfd, bytes, fresh, tls));
	close(lfd);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		fprintf(stderr, "tlm-bench-runtime: connect: %s\n", strerror(errno));
		kill(pid, SIGTERM);
		return 1;
	}
	if (tls && (fd = tls_wrap(fd, false)) < 0) {
		kill(pid, SIGTERM);
		return 1;
	}
	fflush(stdout);
	t0 = tlm_now_ns();
	rc = tcp_send(fd, bytes, chunk);
	close(fd);
	if (waitpid(pid, &st, 0) < 0 || rc < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "tlm-bench-runtime: the stream did not arrive whole%s%s\n",
			rc < 0 ? ": " : "", rc < 0 ? strerror(-rc) : "");
		return 1;
	}
	secs = (double)(tlm_now_ns() - t0) / 1e9;
	printf("tcp_mb_per_s=%.1f bytes=%llu seconds=%.3f\n", (double)bytes / 1e6 / secs,
	       (unsigned long long)bytes, secs);
	return 0;
}

/* One placing thread's slice: [dst, dst + len) in runs of `run` bytes from src. */
struct place_job {
	struct tlm_uffd *u;
	uint8_t *dst;
	const uint8_t *src;
	size_t len, run;
	int rc;
};

static void *place_slice(void *arg)
{
	struct place_job *j = arg;
	size_t done;

	for (size_t off = 0; off < j->len && !j->rc; off += j->run) {
		size_t n = j->len - off < j->run ? j->len - off : j->run;

		j->rc = tlm_uffd_copy(j->u, j->dst + off, j->src, n, 0, &done, NULL);
	}
	return NULL;
}

static int place(uint64_t bytes, unsigned threads, size_t run_pages)
{
	size_t len = (size_t)bytes & ~(size_t)4095, run = run_pages * 4096, slice;
	struct place_job job[16];
	pthread_t tid[16];
	struct tlm_uffd u;
	uint8_t *mem, *src;
	uint64_t t0;
	double secs;
	int rc = tlm_uffd_open(&u, 0, 0);

	if (rc < 0) {
		fprintf(stderr, "tlm-bench-runtime: userfaultfd: %s\n", strerror(-rc));
		return 1;
	}
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		   -1, 0);
	src = malloc(run);
	if (mem == MAP_FAILED || !src ||
	    (rc = tlm_uffd_register(&u, mem, len, TLM_UFFD_MODE_MISSING, NULL)) < 0) {
		fprintf(stderr, "tlm-bench-runtime: %zu bytes registered: %s\n", len,
			strerror(rc < 0 ? -rc : ENOMEM));
		return 1;
	}
	memset(src, 0xa5, run);
	slice = len / threads / run * run;
	t0 = tlm_now_ns();
	for (unsigned i = 0; i < threads; i++) {
		job[i] = (struct place_job){ &u, mem + i * slice, src,
					     i + 1 == threads ? len - i * slice : slice, run, 0 };
		pthread_create(&tid[i], NULL, place_slice, &job[i]);
	}
	for (unsigned i = 0; i < threads; i++) {
		pthread_join(tid[i], NULL);
		rc = rc ? rc : job[i].rc;
	}
	secs = (double)(tlm_now_ns() - t0) / 1e9;
	if (rc < 0) {
		fprintf(stderr, "tlm-bench-runtime: UFFDIO_COPY: %s\n", strerror(-rc));
		return 1;
	}
	printf("place_mb_per_s=%.1f threads=%u run=%zu us_per_page=%.2f\n",
	       (double)len / 1e6 / secs, threads, run_pages, secs * 1e6 * threads / (len / 4096));
	return 0;
}

/* --threads 1..16, --run 1..64 pages: 0, or -1 (message printed). */
static int parse_place_opt(int c, const char *arg, uint64_t *threads, uint64_t *run)
{
	if (c == 't' && tlm_parse_u64(arg, threads) == 0 && *threads >= 1 && *threads <= 16)
		return 0;
	if (c == 'r' && tlm_parse_u64(arg, run) == 0 && *run >= 1 && *run <= 64)
		return 0;
	fprintf(stderr, "tlm-bench-runtime: bad --%s '%s' (%s)\n", c == 't' ? "threads" : "run",
		arg, c == 't' ? "1..16" : "1..64 pages");
	return -1;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "bytes", required_argument, NULL, 'b' }, { "chunk", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' }, { "fresh", no_argument, NULL, 'f' },
		{ "tls", no_argument, NULL, 'T' },
		{ "threads", required_argument, NULL, 't' }, { "run", required_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t bytes = 0, chunk = 1u << 20, threads = 1, run = 64;
	bool fresh = false, tls = false;
	const char *cmd;
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage, stdout);
			return 0;
		}
		if (c == 'f' || c == 'T') {
			*(c == 'f' ? &fresh : &tls) = true;
			continue;
		}
		if (c == 't' || c == 'r') {
			if (parse_place_opt(c, optarg, &threads, &run) < 0)
				return 2;
			continue;
		}
		if (c == 'b' && tlm_parse_size(optarg, &bytes) == 0 && bytes)
			continue;
		if (c == 'c' && tlm_parse_size(optarg, &chunk) == 0 && chunk &&
		    chunk <= (64u << 20))
			continue;
		if (c == 'b' || c == 'c')
			fprintf(stderr, "tlm-bench-runtime: bad --%s '%s' (a size > 0%s)\n",
				c == 'b' ? "bytes" : "chunk", optarg, c == 'c' ? ", <= 64M" : "");
		else
			fputs(usage, stderr);
		return 2;
	}
	cmd = optind + 1 == argc ? argv[optind] : "";
	if ((strcmp(cmd, "tcp") != 0 && strcmp(cmd, "place") != 0) || !bytes) {
		fprintf(stderr, "tlm-bench-runtime: want: tcp|place --bytes N (try --help)\n");
		return 2;
	}
	if (strcmp(cmd, "place") == 0)
		return place(bytes, (unsigned)threads, (size_t)run);
	return tcp_stream(bytes, (size_t)chunk, fresh, tls);
}
