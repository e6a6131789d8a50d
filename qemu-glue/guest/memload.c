/*
 * memload — the guest workload of tlm's QEMU tests and demos (runs as a child of /init,
 * statically linked, inside the busybox initramfs built by scripts/mkguest.sh).
 *
 * It fills tlm.mem MiB with pseudo-random pages, keeps rewriting pages of a hot set at
 * tlm.dirty pages/s, and can prove at any moment that its memory is intact.
 *
 * Page content model (so that a checksum stays meaningful while pages change):
 *   base(p)      = stream(seed[p], p)              seed[p] = tlm.seed, or a reseed value
 *   mask(p, v)   = 0 if v == 0, else stream(p, v)  v = ver[p], bumped by every rewrite
 *   page p holds base(p) XOR mask(p, ver[p])
 * The seed[] and ver[] tables live in guest memory too. "sum" reads every page, removes
 * its mask and hashes the result: the hash depends on the base contents only, so it is
 * the same before and after a migration while rewriting goes on, and it changes when
 * any page is wrong (lost, stale, zeroed, from another offset). "bad" counts the pages
 * whose unmasked bytes differ from base(p) (0 when memory is intact).
 *
 * Kernel command line (read from /proc/cmdline):
 *   tlm.mem=MiB (64)  tlm.seed=N (1)  tlm.dirty=pages/s (100)  tlm.hot=MiB (mem/8, >= 1)
 *
 * Serial protocol. Commands arrive on /dev/ttyS1 (tlm.ctl= overrides), one per line;
 * each gets exactly one reply line on ttyS1, mirrored to the console:
 *   sum            -> SUM <hash hex16> <pages> <rewrites> bad=<n>
 *   reseed S [MiB] -> RESEEDED <S> <pages>   new base seed S for the last MiB (mem/4)
 *                     of the buffer: clones of one template diverge this way
 *   dirty R        -> DIRTY <R>              rewrite rate, pages/s
 *   pause|resume   -> PAUSED|RESUMED         stop/restart rewriting
 *   scratch MiB    -> SCRATCH <pages> freed  allocate MiB more, write unique data to
 *                     every page, free it all: a guest that has freed most of its memory
 *                     (with free page reporting, QEMU then discards those pages)
 *   ping           -> PONG <ticks>
 *   dwrite WORD    -> DWROTE <WORD>          the marker "TLMDISK WORD" into the first block
 *                     of the disk /dev/vda, O_DIRECT + fsync: on the virtual disk, not in
 *                     the guest's page cache
 *   dread          -> DREAD <WORD>|DREAD -    that block read back from the disk (O_DIRECT)
 *   anything else  -> ERR unknown command '<line>'
 * The console (stdout, ttyS0) gets "MEMLOAD ..." at start, "READY ..." once the buffer
 * is filled and "TICK n rate=<pages/s> rewrites=<total>" every second of guest time.
 */
#define _GNU_SOURCE	/* O_DIRECT */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define ML_PAGE		4096u
#define ML_WORDS	(ML_PAGE / 8)
#define ML_GOLDEN	0x9e3779b97f4a7c15ULL
#define ML_FNV_PRIME	0x100000001b3ULL
#define ML_FNV_BASIS	0xcbf29ce484222325ULL
#define ML_MASK_SALT	0x6d61736b6d61736bULL	/* "maskmask" */
#define ML_STEP_NS	10000000LL		/* rewrite batches every 10 ms */
#define ML_MAX_RATE	1000000ULL		/* pages/s; keeps the credit loop finite */
#define ML_DISK		"/dev/vda"
#define ML_DISK_MAGIC	"TLMDISK "

struct ml_params {
	uint64_t mem_mib;
	uint64_t seed;
	uint64_t dirty;
	uint64_t hot_mib;
	char ctl_path[64];
};

struct ml_state {
	uint8_t *buf;
	uint64_t pages;
	uint64_t hot_pages;
	uint64_t *seed;		/* per-page base seed */
	uint32_t *ver;		/* per-page rewrite version, 0 = base content */
	uint64_t rewrites;
	uint64_t rng;		/* picks the pages to rewrite */
	uint64_t rate;		/* pages/s */
	int paused;
	uint64_t ticks;
	int ctl_fd;		/* -1 when the control port is missing */
	char line[256];
	size_t line_len;
};

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* splitmix64 stream keyed by `key`: one page worth of words */
static void gen_page(uint64_t *dst, uint64_t key)
{
	uint64_t x = mix64(key);

	for (unsigned i = 0; i < ML_WORDS; i++) {
		x += ML_GOLDEN;
		dst[i] = mix64(x);
	}
}

static uint64_t base_key(const struct ml_state *s, uint64_t p)
{
	return s->seed[p] ^ (p * ML_GOLDEN);
}

static uint64_t mask_key(uint64_t p, uint32_t v)
{
	return ((p << 32) | v) ^ ML_MASK_SALT;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Console output; replies also go to the control port. */
static void say(const struct ml_state *s, int reply, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof msg - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof msg - 2)
		n = sizeof msg - 2;
	msg[n++] = '\n';
	if (write(STDOUT_FILENO, msg, n) < 0) {
		/* nothing to report it to */
	}
	if (reply && s->ctl_fd >= 0 && write(s->ctl_fd, msg, n) < 0) {
		/* host side not connected: the reply is lost, the console has it */
	}
}

static uint64_t param_u64(const char *cmdline, const char *key, uint64_t def)
{
	const char *p = cmdline;
	size_t kl = strlen(key);

	while ((p = strstr(p, key)) != NULL) {
		if ((p == cmdline || p[-1] == ' ') && p[kl] == '=')
			return strtoull(p + kl + 1, NULL, 0);
		p += kl;
	}
	return def;
}

static void read_params(struct ml_params *pr)
{
	char cmdline[4096] = "";
	const char *c;
	int fd = open("/proc/cmdline", O_RDONLY);

	if (fd >= 0) {
		ssize_t n = read(fd, cmdline, sizeof cmdline - 1);

		cmdline[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	pr->mem_mib = param_u64(cmdline, "tlm.mem", 64);
	pr->seed = param_u64(cmdline, "tlm.seed", 1);
	pr->dirty = param_u64(cmdline, "tlm.dirty", 100);
	pr->hot_mib = param_u64(cmdline, "tlm.hot", pr->mem_mib / 8 ? pr->mem_mib / 8 : 1);
	snprintf(pr->ctl_path, sizeof pr->ctl_path, "/dev/ttyS1");
	c = strstr(cmdline, "tlm.ctl=");
	if (c)
		sscanf(c + 8, "%63s", pr->ctl_path);
}

/* The control port is a raw line channel: no echo, no CR/LF translation. */
static int open_ctl(const char *path)
{
	struct termios t;
	int fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK);

	if (fd < 0)
		return -errno;
	if (tcgetattr(fd, &t) == 0) {
		cfmakeraw(&t);
		cfsetispeed(&t, B115200);
		cfsetospeed(&t, B115200);
		tcsetattr(fd, TCSANOW, &t);
	}
	/* blocking writes: a reply line is short, the UART never stalls for long */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	return fd;
}

static int alloc_state(struct ml_state *s, const struct ml_params *pr)
{
	s->pages = pr->mem_mib * (1024 * 1024 / ML_PAGE);
	s->hot_pages = pr->hot_mib * (1024 * 1024 / ML_PAGE);
	if (s->pages == 0)
		return -EINVAL;
	if (s->hot_pages == 0 || s->hot_pages > s->pages)
		s->hot_pages = s->pages;
	s->buf = mmap(NULL, s->pages * ML_PAGE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	s->seed = calloc(s->pages, sizeof *s->seed);
	s->ver = calloc(s->pages, sizeof *s->ver);
	if (s->buf == MAP_FAILED || !s->seed || !s->ver)
		return -ENOMEM;
	s->rng = pr->seed ^ ML_MASK_SALT;
	s->rate = pr->dirty < ML_MAX_RATE ? pr->dirty : ML_MAX_RATE;
	return 0;
}

static void write_page(struct ml_state *s, uint64_t p)
{
	uint64_t *dst = (uint64_t *)(s->buf + p * ML_PAGE);
	uint64_t mask[ML_WORDS];

	gen_page(dst, base_key(s, p));
	if (s->ver[p] == 0)
		return;
	gen_page(mask, mask_key(p, s->ver[p]));
	for (unsigned i = 0; i < ML_WORDS; i++)
		dst[i] ^= mask[i];
}

static void fill(struct ml_state *s, uint64_t seed)
{
	for (uint64_t p = 0; p < s->pages; p++) {
		s->seed[p] = seed;
		s->ver[p] = 0;
		write_page(s, p);
	}
}

static void rewrite_one(struct ml_state *s)
{
	uint64_t p;

	s->rng += ML_GOLDEN;
	p = mix64(s->rng) % s->hot_pages;
	if (++s->ver[p] == 0)
		s->ver[p] = 1;
	write_page(s, p);
	s->rewrites++;
}

/* Hash of the unmasked memory + count of pages that differ from their base content. */
static uint64_t checksum(const struct ml_state *s, uint64_t *bad)
{
	uint64_t base[ML_WORDS], mask[ML_WORDS];
	uint64_t h = ML_FNV_BASIS;

	*bad = 0;
	for (uint64_t p = 0; p < s->pages; p++) {
		const uint64_t *w = (const uint64_t *)(s->buf + p * ML_PAGE);
		int differs = 0;

		gen_page(base, base_key(s, p));
		if (s->ver[p])
			gen_page(mask, mask_key(p, s->ver[p]));
		else
			memset(mask, 0, sizeof mask);
		for (unsigned i = 0; i < ML_WORDS; i++) {
			uint64_t v = w[i] ^ mask[i];

			differs |= v != base[i];
			h = (h ^ v) * ML_FNV_PRIME;
			h ^= h >> 29;
		}
		*bad += differs;
	}
	return h;
}

static void cmd_reseed(struct ml_state *s, const char *args)
{
	unsigned long long seed, mib = 0;
	uint64_t n, first;
	int k = sscanf(args, "%llu %llu", &seed, &mib);

	if (k < 1) {
		say(s, 1, "ERR usage: reseed SEED [MiB]");
		return;
	}
	n = k == 2 ? mib * (1024 * 1024 / ML_PAGE) : s->pages / 4;
	if (n == 0 || n > s->pages)
		n = s->pages;
	first = s->pages - n;
	for (uint64_t p = first; p < s->pages; p++) {
		s->seed[p] = seed;
		s->ver[p] = 0;
		write_page(s, p);
	}
	say(s, 1, "RESEEDED %llu %llu", seed, (unsigned long long)n);
}

/* Memory the guest touched and gave back: its pages hold unique data until reused. */
static void cmd_scratch(struct ml_state *s, const char *args)
{
	unsigned long long mib;
	uint64_t n;
	uint8_t *p;

	if (sscanf(args, "%llu", &mib) != 1 || mib == 0) {
		say(s, 1, "ERR usage: scratch MiB");
		return;
	}
	n = mib * (1024 * 1024 / ML_PAGE);
	p = mmap(NULL, n * ML_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		say(s, 1, "ERR scratch %llu MiB: %s", mib, strerror(errno));
		return;
	}
	for (uint64_t i = 0; i < n; i++)
		gen_page((uint64_t *)(p + i * ML_PAGE), (i << 20) ^ ML_MASK_SALT ^ s->rng);
	munmap(p, n * ML_PAGE);
	say(s, 1, "SCRATCH %llu freed", (unsigned long long)n);
}

/* One aligned block at offset 0 of the disk, O_DIRECT: write it (word != NULL) or read
 * it into blk. Returns 0 or -errno. */
static int disk_block(char *blk, const char *word)
{
	int fd = open(ML_DISK, (word ? O_WRONLY : O_RDONLY) | O_DIRECT);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (word) {
		memset(blk, 0, ML_PAGE);
		snprintf(blk, ML_PAGE, "%s%s\n", ML_DISK_MAGIC, word);
		if (pwrite(fd, blk, ML_PAGE, 0) != (ssize_t)ML_PAGE || fsync(fd) < 0)
			rc = -errno;
	} else if (pread(fd, blk, ML_PAGE, 0) != (ssize_t)ML_PAGE) {
		rc = -errno;
	}
	close(fd);
	return rc;
}

static void cmd_disk(struct ml_state *s, const char *word)
{
	static char blk[ML_PAGE] __attribute__((aligned(ML_PAGE)));
	size_t n = strlen(ML_DISK_MAGIC);
	int rc;

	if (word && (!word[0] || strchr(word, ' ') || strlen(word) > 64)) {
		say(s, 1, "ERR usage: dwrite WORD (1-64 characters, no space)");
		return;
	}
	rc = disk_block(blk, word);
	if (rc < 0) {
		say(s, 1, "ERR %s %s: %s", word ? "dwrite" : "dread", ML_DISK, strerror(-rc));
	} else if (word) {
		say(s, 1, "DWROTE %s", word);
	} else if (strncmp(blk, ML_DISK_MAGIC, n) == 0 && memchr(blk + n, '\n', 66)) {
		*strchr(blk + n, '\n') = '\0';
		say(s, 1, "DREAD %s", blk + n);
	} else {
		say(s, 1, "DREAD -");
	}
}

static void handle_line(struct ml_state *s, const char *line)
{
	uint64_t bad, h;

	if (strcmp(line, "sum") == 0) {
		h = checksum(s, &bad);
		say(s, 1, "SUM %016llx %llu %llu bad=%llu", (unsigned long long)h,
		    (unsigned long long)s->pages, (unsigned long long)s->rewrites,
		    (unsigned long long)bad);
	} else if (strncmp(line, "reseed", 6) == 0 && (line[6] == ' ' || !line[6])) {
		cmd_reseed(s, line + 6);
	} else if (strncmp(line, "scratch", 7) == 0 && (line[7] == ' ' || !line[7])) {
		cmd_scratch(s, line + 7);
	} else if (strncmp(line, "dirty ", 6) == 0) {
		s->rate = strtoull(line + 6, NULL, 0);
		if (s->rate > ML_MAX_RATE)
			s->rate = ML_MAX_RATE;
		say(s, 1, "DIRTY %llu", (unsigned long long)s->rate);
	} else if (strcmp(line, "pause") == 0) {
		s->paused = 1;
		say(s, 1, "PAUSED");
	} else if (strcmp(line, "resume") == 0) {
		s->paused = 0;
		say(s, 1, "RESUMED");
	} else if (strncmp(line, "dwrite ", 7) == 0) {
		cmd_disk(s, line + 7);
	} else if (strcmp(line, "dread") == 0) {
		cmd_disk(s, NULL);
	} else if (strcmp(line, "ping") == 0) {
		say(s, 1, "PONG %llu", (unsigned long long)s->ticks);
	} else if (line[0]) {
		say(s, 1, "ERR unknown command '%.64s'", line);
	}
}

/* Assemble lines from the raw control port (CR or LF ends a line). */
static void read_ctl(struct ml_state *s)
{
	char buf[128];
	ssize_t n = read(s->ctl_fd, buf, sizeof buf);

	for (ssize_t i = 0; i < n; i++) {
		char c = buf[i];

		if (c == '\r' || c == '\n') {
			s->line[s->line_len] = '\0';
			handle_line(s, s->line);
			s->line_len = 0;
		} else if (s->line_len < sizeof s->line - 1) {
			s->line[s->line_len++] = c;
		}
	}
}

static void run(struct ml_state *s)
{
	int64_t t0 = now_ns(), next_tick = t0 + 1000000000LL;
	int64_t last = t0;
	uint64_t tick_rewrites = 0, credit_ns = 0;

	for (;;) {
		struct pollfd pfd = { .fd = s->ctl_fd, .events = POLLIN };
		int64_t now;

		if (poll(&pfd, s->ctl_fd >= 0 ? 1 : 0, ML_STEP_NS / 1000000) > 0)
			read_ctl(s);
		now = now_ns();
		/* rewrite rate: pages owed for the elapsed time, at most 1 s worth at once */
		credit_ns += now - last;
		last = now;
		if (credit_ns > 1000000000ULL)
			credit_ns = 1000000000ULL;
		while (s->rate && credit_ns >= 1000000000ULL / s->rate) {
			credit_ns -= 1000000000ULL / s->rate;
			if (!s->paused)
				rewrite_one(s);
		}
		if (now >= next_tick) {
			s->ticks++;
			say(s, 0, "TICK %llu rate=%llu rewrites=%llu", (unsigned long long)s->ticks,
			    (unsigned long long)(s->rewrites - tick_rewrites),
			    (unsigned long long)s->rewrites);
			tick_rewrites = s->rewrites;
			next_tick += 1000000000LL;
			if (next_tick < now)	/* the guest was stopped for a while */
				next_tick = now + 1000000000LL;
		}
	}
}

int main(void)
{
	struct ml_params pr;
	struct ml_state s = { .ctl_fd = -1 };
	int64_t t0;
	int rc;

	read_params(&pr);
	s.ctl_fd = open_ctl(pr.ctl_path);
	say(&s, 0, "MEMLOAD mem=%lluMiB seed=%llu dirty=%llu hot=%lluMiB ctl=%s%s",
	    (unsigned long long)pr.mem_mib, (unsigned long long)pr.seed,
	    (unsigned long long)pr.dirty, (unsigned long long)pr.hot_mib, pr.ctl_path,
	    s.ctl_fd < 0 ? " (missing: no commands)" : "");
	rc = alloc_state(&s, &pr);
	if (rc < 0) {
		say(&s, 0, "MEMLOAD-ERROR cannot allocate %lluMiB: %s",
		    (unsigned long long)pr.mem_mib, strerror(-rc));
		return 1;
	}
	t0 = now_ns();
	fill(&s, pr.seed);
	say(&s, 1, "READY pages=%llu fill_ms=%lld", (unsigned long long)s.pages,
	    (long long)((now_ns() - t0) / 1000000));
	run(&s);
	return 0;
}
