/* proto_int.h — helpers shared by the protocol module's files; not part of the API. */
#ifndef TLM_PROTO_INT_H
#define TLM_PROTO_INT_H

#include <stddef.h>

/* Format a one-line reason into err (NULL/0-sized err: nothing). */
void tlm_proto_seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define seterr tlm_proto_seterr
#define BAD(...) (seterr(err, errlen, __VA_ARGS__), -EBADMSG)

#endif
