#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Process-wide by nature: one stderr per process. */
static const char *log_prog = "tlm";
static enum tlm_log_level log_level = TLM_LOG_INFO;
static const char *const level_names[] = { "error", "warn", "info", "debug" };

void tlm_log_init(const char *prog, enum tlm_log_level level)
{
	const char *slash = strrchr(prog, '/');

	log_prog = slash ? slash + 1 : prog;
	log_level = level;
}

void tlm_log_set_level(enum tlm_log_level level) { log_level = level; }
enum tlm_log_level tlm_log_get_level(void) { return log_level; }

int tlm_log_parse_level(const char *s)
{
	for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (strcmp(s, level_names[i]) == 0)
			return (int)i;
	return -1;
}

void tlm_log(enum tlm_log_level level, const char *fmt, ...)
{
	char line[1024];
	struct timespec ts;
	va_list ap;
	int n;

	if (level > log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	n = snprintf(line, sizeof(line), "%ld.%03ld %s[%d] %s: ", (long)ts.tv_sec % 100000,
		     ts.tv_nsec / 1000000, log_prog, (int)getpid(), level_names[level]);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	/* One write per line so lines of concurrent processes do not interleave. */
	fprintf(stderr, "%s\n", line);
}
