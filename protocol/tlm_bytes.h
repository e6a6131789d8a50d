/*
 * tlm_bytes.h — byte order and hex digits, the one place every tlm file format and wire
 * frame takes them from (wire frames, handshake, template index, key files, digests).
 *
 *     uint8_t b[8];
 *     tlm_le64_put(b, v);          // little-endian on the wire and on disk
 *     v = tlm_le64_get(b);
 *
 * Header-only (static inline) and free of any other tlm dependency, so the template
 * store and the preload library can use it without the protocol library.
 */
#ifndef TLM_BYTES_H
#define TLM_BYTES_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

static inline void tlm_le16_put(uint8_t *p, uint16_t v)
{
	v = htole16(v);
	memcpy(p, &v, 2);
}

static inline void tlm_le32_put(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static inline void tlm_le64_put(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static inline uint16_t tlm_le16_get(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return le16toh(v);
}

static inline uint32_t tlm_le32_get(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return le32toh(v);
}

static inline uint64_t tlm_le64_get(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return le64toh(v);
}

/* Value of a hex digit (either case), -1 if c is none. */
static inline int tlm_hex_digit(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

#endif
