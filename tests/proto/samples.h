/* samples.h — one valid message of every type, shared by the protocol tests. */
#ifndef TLM_TEST_PROTO_SAMPLES_H
#define TLM_TEST_PROTO_SAMPLES_H

#include "tlm_proto.h"

/* Fill *m with a valid message of type t (CLASS_MAP runs and PAGE data point into static
 * storage). */
void sample_msg(enum tlm_msg_type t, struct tlm_msg *m);

/* Encode sample_msg(t) into buf; returns the frame length (asserts success). */
size_t sample_frame(enum tlm_msg_type t, uint8_t *buf, size_t cap);

/* File name of type t's seed in tests/fuzz/corpus/wire: "07-class_map.bin". */
void sample_corpus_name(enum tlm_msg_type t, char *name, size_t len);

#define SAMPLE_FRAME_MAX 8192u

#endif
