/* Lists of client networks in CIDR form: the server's (--allow), checked
 * at accept before the first byte of the handshake, and an export's
 * (`allow` in its configuration section), checked when a client asks for
 * it.  An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * is matched as the IPv4 address it carries. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allow.h"

#define ALLOW_MAX 64

struct network {
  int family;               /* AF_INET or AF_INET6 */
  uint8_t addr[16];         /* network byte order; 4 bytes for IPv4 */
  unsigned prefix;          /* bits that must match */
};

struct allow_list {
  struct network networks[ALLOW_MAX];
  int n;
};

static struct allow_list server_list;

struct allow_list *
allow_list_new(void)
{
  return calloc(1, sizeof (struct allow_list));
}

void
allow_list_free(struct allow_list *l)
{
  free(l);
}

static bool
parse_one(const char *s, struct network *n)
{
  char buf[INET6_ADDRSTRLEN + 8];
  if (strlen(s) >= sizeof buf)
    return false;
  strcpy(buf, s);
  char *slash = strchr(buf, '/');
  if (slash)
    *slash = '\0';
  if (inet_pton(AF_INET, buf, n->addr) == 1) {
    n->family = AF_INET;
    n->prefix = 32;
  } else if (inet_pton(AF_INET6, buf, n->addr) == 1) {
    n->family = AF_INET6;
    n->prefix = 128;
  } else
    return false;
  if (slash) {
    char *end;
    unsigned long p = strtoul(slash + 1, &end, 10);
    if (slash[1] < '0' || slash[1] > '9' || *end || p > n->prefix)
      return false;
    n->prefix = p;
  }
  return true;
}

bool
allow_list_add(struct allow_list *l, const char *list, const char **bad)
{
  static char entry[128];
  const char *p = list;
  for (;;) {
    size_t len = strcspn(p, ","), skip = strspn(p, " \t");
    /* Spaces around an entry are allowed ("a, b" in a config file). */
    size_t n = skip < len ? len - skip : 0;
    while (n && (p[skip + n - 1] == ' ' || p[skip + n - 1] == '\t'))
      n--;
    snprintf(entry, sizeof entry, "%.*s", (int) n, p + skip);
    if (l->n == ALLOW_MAX || !parse_one(entry, &l->networks[l->n])) {
      *bad = entry;
      return false;
    }
    l->n++;
    if (p[len] == '\0')
      return true;
    p += len + 1;
  }
}

const char *
allow_list_check(const char *list)
{
  struct allow_list *l = allow_list_new();
  const char *bad = "";
  bool ok = l && allow_list_add(l, list, &bad);
  allow_list_free(l);
  return ok ? NULL : bad;
}

static bool
prefix_matches(const uint8_t *a, const uint8_t *net, unsigned bits)
{
  unsigned bytes = bits / 8, rest = bits % 8;
  if (memcmp(a, net, bytes) != 0)
    return false;
  if (rest == 0)
    return true;
  uint8_t mask = 0xff << (8 - rest);
  return (a[bytes] & mask) == (net[bytes] & mask);
}

bool
allow_list_permits(const struct allow_list *l, const struct sockaddr *sa)
{
  int family;
  const uint8_t *addr;
  if (l->n == 0)
    return true;
  if (sa->sa_family == AF_INET) {
    family = AF_INET;
    addr = (const uint8_t *) &((const struct sockaddr_in *) sa)->sin_addr;
  } else if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *) sa)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
      family = AF_INET;
      addr = a6->s6_addr + 12;
    } else {
      family = AF_INET6;
      addr = a6->s6_addr;
    }
  } else
    return true;  /* a Unix socket: the filesystem guards it */
  for (int i = 0; i < l->n; i++)
    if (l->networks[i].family == family &&
        prefix_matches(addr, l->networks[i].addr, l->networks[i].prefix))
      return true;
  return false;
}

bool
allow_add(const char *list, const char **bad)
{
  return allow_list_add(&server_list, list, bad);
}

void
allow_clear(void)
{
  server_list.n = 0;
}

bool
allow_permits(const struct sockaddr *sa)
{
  return allow_list_permits(&server_list, sa);
}
