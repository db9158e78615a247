/* A client for crash tests: writes, flushes and records which writes each
 * completed FLUSH covered; after the server has been killed and restarted,
 * checks that every covered write is intact.
 *
 *   nbd_crash_client write URI LOG SECONDS SEED
 *       Writes 4 KiB-aligned blocks of 4 to 64 KiB at random offsets in the
 *       first 64 MiB (or the export size if smaller), a FLUSH after every 1
 *       to 16 writes, until SECONDS pass or the connection fails. Every
 *       write is logged ("W offset length seed") before it is sent, and
 *       "F" after each FLUSH that completed; the log is fsync'd each time.
 *       Each run starts with "S": a FLUSH never covers writes of an earlier
 *       run, which a crash may have lost.
 *   nbd_crash_client acked URI LOG SECONDS SEED QD
 *       Writes like "write", but never flushes: QD writes are in flight at
 *       once (each in its own lane of the span, so no two overlap), and "A
 *       seed" is logged when the server acknowledges the write with that
 *       seed. An acknowledged write counts as covered: no crash of the
 *       server process may lose it.
 *   nbd_crash_client verify URI LOG
 *       Replays the log: for every 4 KiB unit, the content a completed FLUSH
 *       (or an acknowledgement) covered must be there, or the content of a
 *       later (uncovered) write. Units never written must read as zeros.
 *       Exits 1 on a mismatch.
 *
 * Data is a function of (seed, byte index), so nothing but the log is kept.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define UNIT 4096u
#define SPAN (64ull << 20)

static void fill(unsigned char *buf, size_t len, uint64_t seed, uint64_t offset) {
  for (size_t i = 0; i < len; i += 8) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (offset + i) * 0xC2B2AE3D27D4EB4Full;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    memcpy(buf + i, &x, 8);
  }
}

static uint64_t rng_state;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static struct nbd_handle *open_uri(const char *uri) {
  struct nbd_handle *nbd = nbd_create();
  if (nbd == NULL || nbd_connect_uri(nbd, uri) == -1) {
    fprintf(stderr, "nbd_crash_client: %s\n", nbd_get_error());
    exit(2);
  }
  return nbd;
}

static void log_line(FILE *log, const char *line) {
  fputs(line, log);
  fflush(log);
  fsync(fileno(log));
}

static int do_write(const char *uri, const char *path, int seconds, uint64_t seed) {
  struct nbd_handle *nbd = open_uri(uri);
  int64_t size = nbd_get_size(nbd);
  uint64_t span = (uint64_t)size < SPAN ? (uint64_t)size : SPAN;
  FILE *log = fopen(path, "a");
  if (log == NULL) {
    perror(path);
    return 2;
  }
  log_line(log, "S\n");
  rng_state = seed | 1;
  unsigned char *buf = malloc(64 * 1024);
  time_t end = time(NULL) + seconds;
  uint64_t wseed = seed << 20;
  unsigned writes = 0, flushes = 0;
  while (time(NULL) < end) {
    unsigned n = 1 + rnd() % 16;
    for (unsigned i = 0; i < n; ++i) {
      uint64_t len = UNIT * (1 + rnd() % 16);
      uint64_t off = (rnd() % ((span - len) / UNIT)) * UNIT;
      ++wseed;
      char line[128];
      snprintf(line, sizeof line, "W %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", off, len, wseed);
      log_line(log, line);
      fill(buf, len, wseed, off);
      if (nbd_pwrite(nbd, buf, len, off, 0) == -1) goto out;
      ++writes;
    }
    if (nbd_flush(nbd, 0) == -1) goto out;
    log_line(log, "F\n");
    ++flushes;
  }
out:
  fprintf(stderr, "nbd_crash_client: %u writes, %u flushes acknowledged\n", writes, flushes);
  fclose(log);
  free(buf);
  nbd_close(nbd);
  return 0;
}

/* One write in flight per lane. */
struct lane {
  unsigned char *buf;
  uint64_t lo, hi;  /* the lane's part of the span */
  uint64_t seed;
  int busy;
};

static FILE *acked_log;
static unsigned acked_writes;
static int acked_failed;

static int write_done(void *user_data, int *error) {
  struct lane *l = user_data;
  l->busy = 0;
  if (*error != 0) {
    acked_failed = 1;
    return 1;
  }
  char line[64];
  snprintf(line, sizeof line, "A %" PRIu64 "\n", l->seed);
  fputs(line, acked_log);
  fflush(acked_log);  /* the client outlives the server: no fsync needed */
  ++acked_writes;
  return 1;
}

static int do_acked(const char *uri, const char *path, int seconds, uint64_t seed, unsigned qd) {
  struct nbd_handle *nbd = open_uri(uri);
  int64_t size = nbd_get_size(nbd);
  uint64_t span = (uint64_t)size < SPAN ? (uint64_t)size : SPAN;
  acked_log = fopen(path, "a");
  if (acked_log == NULL) {
    perror(path);
    return 2;
  }
  log_line(acked_log, "S\n");
  if (qd == 0) qd = 1;
  struct lane *lanes = calloc(qd, sizeof *lanes);
  uint64_t lane_units = span / UNIT / qd;
  if (lane_units < 16) {
    fprintf(stderr, "nbd_crash_client: export too small for %u lanes\n", qd);
    return 2;
  }
  for (unsigned i = 0; i < qd; ++i) {
    lanes[i].buf = malloc(64 * 1024);
    lanes[i].lo = i * lane_units * UNIT;
    lanes[i].hi = (i + 1) * lane_units * UNIT;
  }
  rng_state = seed | 1;
  uint64_t wseed = seed << 20;
  unsigned sent = 0;
  time_t end = time(NULL) + seconds;
  while (!acked_failed && time(NULL) < end) {
    for (unsigned i = 0; i < qd && !acked_failed; ++i) {
      struct lane *l = &lanes[i];
      if (l->busy) continue;
      uint64_t len = UNIT * (1 + rnd() % 16);
      uint64_t off = l->lo + (rnd() % ((l->hi - l->lo - len) / UNIT + 1)) * UNIT;
      l->seed = ++wseed;
      char line[128];
      snprintf(line, sizeof line, "W %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", off, len, l->seed);
      fputs(line, acked_log);
      fflush(acked_log);  /* logged before it is sent */
      fill(l->buf, len, l->seed, off);
      l->busy = 1;
      nbd_completion_callback cb = {.callback = write_done, .user_data = l, .free = NULL};
      if (nbd_aio_pwrite(nbd, l->buf, len, off, cb, 0) == -1) {
        l->busy = 0;
        acked_failed = 1;
        break;
      }
      ++sent;
    }
    if (acked_failed) break;
    if (nbd_poll(nbd, 1000) == -1) break;
  }
  fprintf(stderr, "nbd_crash_client: %u writes sent, %u acknowledged\n", sent, acked_writes);
  fclose(acked_log);
  nbd_close(nbd);  /* after the log: closing retires what is left */
  for (unsigned i = 0; i < qd; ++i) free(lanes[i].buf);
  free(lanes);
  return 0;
}

struct list {
  uint64_t *v;
  size_t n, cap;
};

static void push(struct list *l, uint64_t x) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 4;
    l->v = realloc(l->v, l->cap * sizeof *l->v);
  }
  l->v[l->n++] = x;
}

struct unit_state {
  uint64_t covered;      /* seed of the content a FLUSH covered; 0 = zeros */
  struct list pending;   /* this run's writes since its last FLUSH */
  struct list maybe;     /* earlier runs' unflushed writes: may have survived */
};

/* Writes by seed, for the "A" lines; seeds rise within a run. */
struct write_rec {
  uint64_t seed, off, len;
};
struct write_table {
  struct write_rec *v;
  size_t n, cap;
};

static void add_write(struct write_table *t, uint64_t off, uint64_t len, uint64_t seed) {
  if (t->n == t->cap) {
    t->cap = t->cap ? t->cap * 2 : 64;
    t->v = realloc(t->v, t->cap * sizeof *t->v);
  }
  t->v[t->n++] = (struct write_rec){seed, off, len};
}

static struct write_rec *find_write(struct write_table *t, uint64_t seed) {
  /* An acknowledgement comes soon after its write: search from the end. */
  for (size_t i = t->n; i-- > 0;) {
    if (t->v[i].seed == seed) return &t->v[i];
  }
  return NULL;
}

static int do_verify(const char *uri, const char *path) {
  FILE *log = fopen(path, "r");
  if (log == NULL) {
    perror(path);
    return 2;
  }
  size_t nunits = SPAN / UNIT;
  struct unit_state *u = calloc(nunits, sizeof *u);
  struct write_table writes = {0};
  char line[128];
  while (fgets(line, sizeof line, log) != NULL) {
    if (line[0] == 'S') {
      for (size_t i = 0; i < nunits; ++i) {
        for (size_t k = 0; k < u[i].pending.n; ++k) push(&u[i].maybe, u[i].pending.v[k]);
        u[i].pending.n = 0;
      }
    } else if (line[0] == 'F') {
      for (size_t i = 0; i < nunits; ++i) {
        if (u[i].pending.n > 0) {
          u[i].covered = u[i].pending.v[u[i].pending.n - 1];
          u[i].pending.n = 0;
          u[i].maybe.n = 0;  /* a newer write is durable */
        }
      }
    } else if (line[0] == 'A') {
      /* One acknowledged write: it and every earlier write to its units
       * are superseded only by later writes. */
      uint64_t seed;
      if (sscanf(line, "A %" SCNu64, &seed) != 1) continue;
      struct write_rec *w = find_write(&writes, seed);
      if (w == NULL) continue;
      for (uint64_t o = w->off; o < w->off + w->len && o / UNIT < nunits; o += UNIT) {
        struct unit_state *us = &u[o / UNIT];
        for (size_t k = 0; k < us->pending.n; ++k) {
          if (us->pending.v[k] != seed) continue;
          us->covered = seed;
          memmove(us->pending.v, us->pending.v + k + 1, (us->pending.n - k - 1) * sizeof(uint64_t));
          us->pending.n -= k + 1;
          us->maybe.n = 0;
          break;
        }
      }
    } else if (line[0] == 'W') {
      uint64_t off, len, seed;
      if (sscanf(line, "W %" SCNu64 " %" SCNu64 " %" SCNu64, &off, &len, &seed) != 3) continue;
      add_write(&writes, off, len, seed);
      for (uint64_t o = off; o < off + len && o / UNIT < nunits; o += UNIT) {
        push(&u[o / UNIT].pending, seed);
      }
    }
  }
  fclose(log);
  free(writes.v);
  /* Re-derive each candidate: the write's seed and the unit's offset. */
  struct nbd_handle *nbd = open_uri(uri);
  int64_t size = nbd_get_size(nbd);
  uint64_t span = (uint64_t)size < SPAN ? (uint64_t)size : SPAN;
  unsigned char got[UNIT], want[UNIT];
  unsigned long bad = 0, checked = 0, covered_units = 0;
  for (size_t i = 0; i < span / UNIT; ++i) {
    if (nbd_pread(nbd, got, UNIT, i * UNIT, 0) == -1) {
      fprintf(stderr, "nbd_crash_client: read failed: %s\n", nbd_get_error());
      exit(1);
    }
    int ok = 0;
    /* The covered content... */
    if (u[i].covered == 0) {
      memset(want, 0, UNIT);
    } else {
      fill(want, UNIT, u[i].covered, i * UNIT);
      ++covered_units;
    }
    if (memcmp(got, want, UNIT) == 0) ok = 1;
    /* ...or that of a write it did not cover. */
    for (size_t k = 0; !ok && k < u[i].pending.n; ++k) {
      fill(want, UNIT, u[i].pending.v[k], i * UNIT);
      if (memcmp(got, want, UNIT) == 0) ok = 1;
    }
    for (size_t k = 0; !ok && k < u[i].maybe.n; ++k) {
      fill(want, UNIT, u[i].maybe.v[k], i * UNIT);
      if (memcmp(got, want, UNIT) == 0) ok = 1;
    }
    ++checked;
    if (!ok) {
      if (bad < 10) {
        fprintf(stderr, "nbd_crash_client: unit at offset %zu holds neither its flushed or "
                        "acknowledged content nor a later write\n", i * (size_t)UNIT);
      }
      ++bad;
    }
  }
  nbd_close(nbd);
  for (size_t i = 0; i < nunits; ++i) {
    free(u[i].pending.v);
    free(u[i].maybe.v);
  }
  free(u);
  printf("nbd_crash_client: checked %lu units (%lu with flushed data), %lu bad\n", checked,
         covered_units, bad);
  return bad == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc == 6 && strcmp(argv[1], "write") == 0) {
    return do_write(argv[2], argv[3], atoi(argv[4]), strtoull(argv[5], NULL, 10));
  }
  if (argc == 7 && strcmp(argv[1], "acked") == 0) {
    return do_acked(argv[2], argv[3], atoi(argv[4]), strtoull(argv[5], NULL, 10),
                    (unsigned)atoi(argv[6]));
  }
  if (argc == 4 && strcmp(argv[1], "verify") == 0) return do_verify(argv[2], argv[3]);
  fprintf(stderr, "usage: nbd_crash_client write URI LOG SECONDS SEED | "
                  "acked URI LOG SECONDS SEED QD | verify URI LOG\n");
  return 2;
}
