/*
 * tlm_proto.h — tlm's wire format (TCP, daemon <-> daemon) and local messages
 * (unix socket, glue <-> tlm-uffd-server). The byte layout of every message is written
 * out in protocol/wire.c next to its encoder; this header is the API.
 *
 * Frames: u32 payload_len | u16 type | u16 flags (0) | payload, little-endian,
 * payload_len <= TLM_PROTO_MAX_PAYLOAD. The decoder validates type, length, counts and
 * ranges before anything is used and never trusts the peer.
 *
 * Session (one per migrating VM, two TCP connections: urgent for demand requests and
 * their replies, bulk for the class map and the background stream):
 *   dst -> src  HELLO      version range, channel (urgent|bulk), client nonce
 *   src -> dst  CHALLENGE  chosen version, server nonce, server proof
 *                            HMAC-SHA256(key, "tlm1-srv" | cnonce | snonce | channel)
 *   dst -> src  AUTH       client proof HMAC-SHA256(key, "tlm1-cli" | snonce | cnonce | channel)
 *   src -> dst  AUTH_OK    (or ERROR, then close)
 *   dst -> src  VM_OPEN    vm id, ram size, page size, template digest
 *   src -> dst  VM_ACCEPT  page count   (or ERROR: unknown VM, size/digest mismatch)
 * then on bulk:   src -> dst CLASS_MAP* (whole map, once the source is frozen),
 *                            PAGE* / PROGRESS*, DONE
 *   or, when the bulk session was open during the source's live phase (version 3):
 *                 src -> dst CLASS_MAP(live)* (provisional map of the running guest),
 *                            PAGES* (pre-sent DATA: kept, never placed before the fix),
 *                            CLASS_MAP(fix)* (once frozen: KEEP runs or corrections),
 *                            PAGES* / PROGRESS*, DONE
 * and on urgent:  dst -> src DEMAND;  src -> dst PAGE (DATA) or ZERO/REF (other classes)
 */
#ifndef TLM_PROTO_H
#define TLM_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>

#define TLM_PROTO_VERSION      3u   /* 2: PAGES frames; 3: live and fix class maps */
#define TLM_PROTO_MAGIC        0x314d4c54u   /* "TLM1" little-endian */
#define TLM_PROTO_HDR_SIZE     8u
#define TLM_PROTO_MAX_PAYLOAD  (1u << 20)
#define TLM_PROTO_PAGE_SIZE    4096u
#define TLM_PROTO_NONCE_LEN    32u
#define TLM_PROTO_MAC_LEN      32u
#define TLM_PROTO_KEY_MAX      64u
#define TLM_PROTO_VMID_MAX     64u    /* bytes, [A-Za-z0-9._-], no NUL on the wire */
#define TLM_PROTO_ERRMSG_MAX   200u
#define TLM_PROTO_MAX_RUNS     ((TLM_PROTO_MAX_PAYLOAD - 16u) / 16u)
#define TLM_PROTO_MAX_DEMAND   256u   /* pages per DEMAND */
#define TLM_PROTO_MAX_PAGES    64u    /* pages per PAGES frame (256 KiB) */

enum tlm_msg_type {
	TLM_MSG_HELLO = 1,
	TLM_MSG_CHALLENGE = 2,
	TLM_MSG_AUTH = 3,
	TLM_MSG_AUTH_OK = 4,
	TLM_MSG_VM_OPEN = 5,
	TLM_MSG_VM_ACCEPT = 6,
	TLM_MSG_CLASS_MAP = 7,
	TLM_MSG_DEMAND = 8,
	TLM_MSG_PAGE = 9,
	TLM_MSG_ZERO = 10,
	TLM_MSG_REF = 11,
	TLM_MSG_PROGRESS = 12,
	TLM_MSG_DONE = 13,
	TLM_MSG_ERROR = 14,
	TLM_MSG_PAGES = 15,     /* a run of DATA pages (version 2) */
	TLM_MSG_CREDIT = 16,    /* bulk bytes the destination has handled (version 2) */
	TLM_MSG__MAX
};

enum tlm_channel { TLM_CHAN_URGENT = 1, TLM_CHAN_BULK = 2 };

/* Page classes (docs/ARCHITECTURE.md). Values are on the wire. */
enum tlm_page_class {
	TLM_CLASS_TEMPLATE = 1, /* same as the template page at the same offset */
	TLM_CLASS_ZERO = 2,
	TLM_CLASS_REF = 3,      /* equals template page `arg` (+i for the i-th page of a run) */
	TLM_CLASS_DATA = 4,     /* content travels in PAGE messages */
};
/* Only in a CLASS_MAP of kind FIX: the page's class (and any content pre-sent for it in
 * this bulk session) is what the live map said. */
#define TLM_CLASS_KEEP 0

/* CLASS_MAP kinds (version 3). WHOLE: the map of the frozen guest. LIVE: a provisional
 * map of the running guest; the receiver keeps it and places nothing from it. FIX: once
 * frozen, the map again over the same pages, each run either KEEP (the live map and the
 * content pre-sent for those pages stand) or the final class (replaces the live class and
 * invalidates content pre-sent for those pages). */
enum tlm_map_kind { TLM_MAP_WHOLE = 0, TLM_MAP_LIVE = 1, TLM_MAP_FIX = 2 };

/* Error codes carried by ERROR (also used as exit reasons). */
enum tlm_err_code {
	TLM_ERR_PROTOCOL = 1,   /* malformed frame / unexpected message */
	TLM_ERR_VERSION = 2,
	TLM_ERR_AUTH = 3,
	TLM_ERR_UNKNOWN_VM = 4,
	TLM_ERR_MISMATCH = 5,   /* ram size / page size / template digest differ */
	TLM_ERR_INTERNAL = 6,
	TLM_ERR_BUSY = 7,       /* VM already has a session on this channel */
};

struct tlm_run {
	uint8_t cls;            /* enum tlm_page_class */
	uint32_t len;           /* pages, >= 1 */
	uint64_t arg;           /* REF: first template page; 0 otherwise */
};

struct tlm_msg {
	enum tlm_msg_type type;
	union {
		struct { uint16_t ver_min, ver_max; uint8_t channel;
			 uint8_t nonce[TLM_PROTO_NONCE_LEN]; } hello;
		struct { uint16_t version; uint8_t nonce[TLM_PROTO_NONCE_LEN];
			 uint8_t mac[TLM_PROTO_MAC_LEN]; } challenge;
		struct { uint8_t mac[TLM_PROTO_MAC_LEN]; } auth;
		struct { uint64_t ram_size; uint32_t page_size; uint8_t digest[16];
			 char vm_id[TLM_PROTO_VMID_MAX + 1]; } vm_open;
		struct { uint64_t page_count; } vm_accept;
		/* CLASS_MAP: runs cover pages [first_page, first_page + sum(len)).
		 * `final` is set on the last CLASS_MAP frame of the map; kind is an enum
		 * tlm_map_kind. Decoding points `runs` at a caller-provided array (see
		 * tlm_conn / tlm_proto_decode). */
		struct { uint64_t first_page; uint32_t nruns; bool final; uint8_t kind;
			 struct tlm_run *runs; } class_map;
		struct { uint64_t page; uint32_t count; } demand;
		/* PAGE: data points into the receive buffer (valid until the next read). */
		struct { uint64_t page; uint64_t xxh64; const uint8_t *data; } page;
		/* PAGES: count pages from page on; sums = count XXH3-64s, little-endian as
		 * on the wire (tlm_proto_pages_sum), data = count * 4096 bytes, both
		 * pointing into the receive buffer (decode) or the sender's memory. */
		struct { uint64_t page; uint32_t count; const uint8_t *sums;
			 const uint8_t *data; } pages;
		struct { uint64_t page; uint64_t count; } zero;
		struct { uint64_t page; uint64_t count; uint64_t tmpl_page; } ref;
		struct { uint64_t pages_sent, pages_total; } progress;
		struct { uint64_t data_pages, bytes; } done;
		/* CREDIT (urgent, dst -> src): bytes of the current bulk session's stream
		 * the destination has handled (frames decoded and acted on). */
		struct { uint64_t bulk_bytes; } credit;
		struct { uint32_t code; char msg[TLM_PROTO_ERRMSG_MAX + 1]; } error;
	} u;
};

/* ---- encode / decode ------------------------------------------------------------------ */

/* Encode one frame (header + payload) into buf. Returns the frame length or -ENOBUFS /
 * -EINVAL (a field out of range: we never send what we would refuse). */
ssize_t tlm_proto_encode(const struct tlm_msg *m, uint8_t *buf, size_t cap);

/* Size of the frame tlm_proto_encode would write. */
size_t tlm_proto_frame_size(const struct tlm_msg *m);
/* The frame but for a PAGES frame's page data (header and sums; the data follows on the
 * wire): encode_head writes tlm_proto_head_size bytes. Other types: the whole frame. */
ssize_t tlm_proto_encode_head(const struct tlm_msg *m, uint8_t *buf, size_t cap);
size_t tlm_proto_head_size(const struct tlm_msg *m);

/* Peek at a frame header: returns the total frame length (>= 8) once at least 8 bytes are
 * available, 0 if fewer, -EBADMSG (with err) on a bad type/flags/oversized length. */
ssize_t tlm_proto_frame_len(const uint8_t *buf, size_t len, char *err, size_t errlen);

/* Decode exactly one whole frame. runs/max_runs: storage for CLASS_MAP runs.
 * Returns 0 or -EBADMSG with a one-line reason in err. */
int tlm_proto_decode(const uint8_t *frame, size_t len, struct tlm_msg *m,
		     struct tlm_run *runs, uint32_t max_runs, char *err, size_t errlen);

const char *tlm_msg_name(enum tlm_msg_type t);
const char *tlm_class_name(enum tlm_page_class c);
bool tlm_vmid_valid(const char *id);

/* Checksum used in PAGE messages: XXH3-64 of the 4 KiB page, seed 0. */
uint64_t tlm_proto_page_sum(const uint8_t *page);
/* PAGES: the checksum of page i of the frame; and the sender's side: fill sums (8 * count
 * bytes) with the checksums of count pages at data. */
uint64_t tlm_proto_pages_sum(const struct tlm_msg *m, uint32_t i);
void tlm_proto_pages_sums(uint8_t *sums, const uint8_t *data, uint32_t count);

/* ---- authentication ------------------------------------------------------------------- */

struct tlm_key {
	uint8_t b[TLM_PROTO_KEY_MAX];
	size_t len;
};

/* Load a pre-shared key: the file must be a regular file not readable or writable by group
 * or others (0600/0400), holding 16..64 bytes (raw, or hex text with optional newline). */
int tlm_key_load(const char *path, struct tlm_key *k, char *err, size_t errlen);

/* mac = HMAC-SHA256(key, label | a | b | channel). */
void tlm_proto_mac(const struct tlm_key *k, const char *label, const uint8_t a[32],
		   const uint8_t b[32], uint8_t channel, uint8_t mac[32]);
bool tlm_proto_mac_equal(const uint8_t a[32], const uint8_t b[32]);  /* constant time */
int tlm_proto_random(void *buf, size_t len);   /* getrandom; 0 or -errno */

/* Blocking handshakes on a connected socket (timeout in ms for the whole exchange).
 * Client: HELLO..VM_ACCEPT; fills *accept. Server: HELLO..AUTH_OK then reads VM_OPEN into
 * *open and returns; the caller answers with VM_ACCEPT or ERROR (tlm_proto_send_error).
 * Both return 0 or -errno with a one-line reason in err (a peer's ERROR text is quoted). */
int tlm_proto_client_handshake(int fd, const struct tlm_key *k, uint8_t channel,
			       const struct tlm_msg *vm_open, struct tlm_msg *accept,
			       int timeout_ms, char *err, size_t errlen);
int tlm_proto_server_handshake(int fd, const struct tlm_key *k, uint8_t *channel,
			       struct tlm_msg *open, int timeout_ms, char *err, size_t errlen);

/* Blocking send of one message (used for handshake replies and errors). */
int tlm_proto_send(int fd, const struct tlm_msg *m, int timeout_ms);
int tlm_proto_send_error(int fd, uint32_t code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- buffered non-blocking connection (event loops) ----------------------------------- */
/*
 * Output is a FIFO of segments: bytes encoded into wbuf, and (tlm_conn_queue_ref) PAGES
 * page data sent straight from the caller's memory, so a page is not copied in user
 * space on its way out. Flush writes them with sendmsg, many segments per call.
 *
 * Lifetime rule for tlm_conn_queue_ref: the referenced bytes must stay mapped and
 * unchanged until they are written, i.e. until c->bytes_out >= tlm_conn_end(c) as read
 * right after the call (tlm_conn_fini drops them unwritten).
 */
struct tlm_conn_seg {
	const uint8_t *ref;     /* NULL: the next len bytes of wbuf */
	size_t len;
};

struct tlm_conn {
	int fd;
	uint8_t *rbuf;  size_t rlen, rcap;         /* received, not yet consumed */
	size_t rconsumed;                          /* bytes of the last frame returned by next */
	bool rpinned;                              /* tail lent out (tlm_conn_rtail): no compaction */
	uint8_t *wbuf;  size_t woff, wlen, wcap;   /* buffered output [woff, wlen) */
	struct tlm_conn_seg *segs;                 /* ring of pending output, in order */
	unsigned seg_head, seg_n, seg_cap;
	size_t wref;                               /* referenced bytes pending */
	uint64_t bytes_in, bytes_out;              /* on the wire, headers included */
	struct tlm_run *runs;  uint32_t max_runs;  /* CLASS_MAP decode storage */
};

/* wcap bounds pending output, buffered and referenced (memory stays bounded); rcap is at
 * least one max frame. */
int tlm_conn_init(struct tlm_conn *c, int fd, size_t wcap);
void tlm_conn_fini(struct tlm_conn *c);           /* frees buffers, closes fd */
/* Read what the socket has. >0 bytes read, 0 on EOF, -EAGAIN, or -errno. */
ssize_t tlm_conn_read(struct tlm_conn *c);
/* For a receiver other than read() (io_uring): the free tail of the input buffer, after
 * dropping handled frames; -ENOBUFS when it is full of unhandled ones. Pinned (rpinned
 * set) the buffer is never compacted, so the tail may be filled asynchronously; the bytes
 * are added, and the pin dropped, by tlm_conn_received (n may be 0). */
int tlm_conn_rtail(struct tlm_conn *c, bool pin, uint8_t **tail, size_t *len);
void tlm_conn_received(struct tlm_conn *c, size_t n);
/* Next complete frame: 1 = *m filled (pointers valid until the next call), 0 = need more
 * bytes, -EBADMSG = malformed (err says why; drop the peer). */
int tlm_conn_next(struct tlm_conn *c, struct tlm_msg *m, char *err, size_t errlen);
/* Queue one message. -ENOBUFS if it does not fit in the free output space (flush first). */
int tlm_conn_queue(struct tlm_conn *c, const struct tlm_msg *m);
/* Queue a PAGES frame whose page data is sent from m->u.pages.data by reference (the
 * lifetime rule above); the bytes on the wire are those tlm_conn_queue would send.
 * -ENOBUFS as tlm_conn_queue, -EINVAL for another type. */
int tlm_conn_queue_ref(struct tlm_conn *c, const struct tlm_msg *m);
size_t tlm_conn_space(const struct tlm_conn *c);  /* free output bytes */
/* Bytes received and handled: every frame returned by tlm_conn_next, the last one too. */
static inline uint64_t tlm_conn_handled(const struct tlm_conn *c)
{
	return c->bytes_in - (c->rlen - c->rconsumed);
}
size_t tlm_conn_pending(const struct tlm_conn *c);
/* Stream offset where the output queued so far ends (written once bytes_out reaches it). */
static inline uint64_t tlm_conn_end(const struct tlm_conn *c)
{
	return c->bytes_out + tlm_conn_pending(c);
}
/* Write pending output. 0 = all written, -EAGAIN = some left (wait for EPOLLOUT), -errno. */
int tlm_conn_flush(struct tlm_conn *c);

/* ---- local messages: glue <-> tlm-uffd-server (AF_UNIX SOCK_SEQPACKET) --------------- */
/*
 * One fixed-size struct per packet, host byte order (same host, same ABI), versioned.
 *   glue -> daemon  REGION  description; if armed at map time the uffd rides along
 *                            (SCM_RIGHTS)
 *   daemon -> glue  ARM      "register now and hand me the uffd"
 *   glue -> daemon  UFFD     the uffd (SCM_RIGHTS), after an ARM
 *   daemon -> glue  DONE     every page present; the glue may drop its uffd copy
 *   daemon -> glue  ERROR    text; the glue logs it and keeps its uffd (faults wait)
 * The daemon checks SO_PEERCRED: only root or the daemon's own uid may connect.
 */
#define TLM_LOCAL_VERSION 1u
#define TLM_LOCAL_PATH_MAX 256u

enum tlm_local_type {
	TLM_LOCAL_REGION = 1,
	TLM_LOCAL_ARM = 2,
	TLM_LOCAL_UFFD = 3,
	TLM_LOCAL_DONE = 4,
	TLM_LOCAL_ERROR = 5,
};

#define TLM_REGION_TEMPLATE 0x1u   /* mapped MAP_PRIVATE over the local template */
#define TLM_REGION_ARMED    0x2u   /* uffd attached to this REGION packet */

struct tlm_local_msg {
	uint32_t version;          /* TLM_LOCAL_VERSION */
	uint32_t type;             /* enum tlm_local_type */
	uint32_t flags;            /* TLM_REGION_* */
	uint32_t page_size;
	uint64_t base;             /* guest RAM address in the glue's process */
	uint64_t size;             /* bytes, multiple of page_size */
	uint64_t offset;           /* offset of the region in the RAM file */
	uint64_t uffd_features;    /* features negotiated on the attached uffd */
	uint8_t digest[16];        /* template digest, zero if none */
	char vm_id[TLM_PROTO_VMID_MAX + 1];
	char source[TLM_LOCAL_PATH_MAX];  /* "host:port" of the tlm-page-server, may be "" */
	char text[TLM_LOCAL_PATH_MAX];    /* ERROR text */
};

/* Validate a received local message (version, type, sizes, NUL-terminated strings). */
int tlm_local_check(const struct tlm_local_msg *m, size_t len, char *err, size_t errlen);
/* Send/receive one local message, with an optional fd (-1 for none). recv: *fd = -1 if
 * none came; returns bytes received, 0 on EOF, -errno. */
int tlm_local_send(int sock, const struct tlm_local_msg *m, int fd);
ssize_t tlm_local_recv(int sock, struct tlm_local_msg *m, int *fd);
/* SO_PEERCRED check: 0 if the peer is root or has our uid, -EPERM otherwise. */
int tlm_local_peer_ok(int sock, pid_t *pid, uid_t *uid);

#endif /* TLM_PROTO_H */
