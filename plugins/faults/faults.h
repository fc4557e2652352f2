/* The faults layer (--inject-error): its rules, shared by the layer and
 * the parser of their spelling. */
#ifndef NBDS_FAULTS_H
#define NBDS_FAULTS_H

#include <stdbool.h>
#include <stdint.h>

#include "nbdstack/layer.h"

#define FAULTS_MAX_RULES 8

/* One --inject-error=OPS:ERRNO[,rate=P][,file=PATH][,offset=A-B]. */
struct fault_rule {
  uint32_t ops;        /* 1u << enum nbds_op */
  int err;             /* the errno a matching request completes with */
  double rate;         /* 0 < rate <= 1: the share of matching requests */
  char *file;          /* NULL, or: only while this file exists */
  uint64_t start, end; /* only requests touching [start, end) */
};

/* Parse one rule; on error return -1 after nbds_error(). */
int fault_rule_parse(const char *spec, struct fault_rule *r);
void fault_rule_free(struct fault_rule *r);

#endif
