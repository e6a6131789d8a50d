/*
 * log.h — leveled logging to stderr for the daemons, CLIs and the glue.
 * Lines look like "tlm-uffd-server[1234] warn: vm1: ...": the object's identity goes first
 * in the message so a line can be traced to its VM or connection.
 */
#ifndef TLM_LOG_H
#define TLM_LOG_H

enum tlm_log_level { TLM_LOG_ERROR = 0, TLM_LOG_WARN, TLM_LOG_INFO, TLM_LOG_DEBUG };

void tlm_log_init(const char *prog, enum tlm_log_level level);
void tlm_log_set_level(enum tlm_log_level level);
enum tlm_log_level tlm_log_get_level(void);
/* "error", "warn", "info", "debug" -> level; -1 if unknown. */
int tlm_log_parse_level(const char *s);
void tlm_log(enum tlm_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define log_error(...) tlm_log(TLM_LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  tlm_log(TLM_LOG_WARN, __VA_ARGS__)
#define log_info(...)  tlm_log(TLM_LOG_INFO, __VA_ARGS__)
#define log_debug(...) \
	do { if (tlm_log_get_level() >= TLM_LOG_DEBUG) tlm_log(TLM_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
