/* mb-guestd: the QEMU lab guest's heartbeat, memory dirtier and control socket.
 *
 * Built by lab/qemu/setup.sh with `gcc -static -O2 -pthread` and started by the
 * guest's /init. Three threads:
 *
 *  - heartbeat: UDP datagrams in the guest agent's wire format, version 2
 *    (probes/guest_agent.py, docs/guest-agent.md), 84 bytes big-endian:
 *      "MBHB" | version u8 (2) | flags u8 (0) | reserved u16 (0) | agent_id u64 |
 *      seq u64 | guest_utc_ns i64 | guest_mono_ns i64 | interval_us u32 |
 *      late_ns u32 | work_ns u32 | HMAC-SHA256(token, the 52 bytes before it)
 *    so probes/guest_receiver.py accepts them unchanged. Slot k is due at
 *    t0 + k * interval on CLOCK_MONOTONIC; missed slots are skipped, never
 *    caught up, and seq counts datagrams sent (a frozen guest leaves no hole).
 *    After each heartbeat the thread does the agent's fixed work unit (one
 *    byte into each 4 KiB page of 256 KiB, then SHA-256 over 16 KiB of it);
 *    the next heartbeat says how long from its slot it took (work_ns): the
 *    guest's rate of work, which QEMU's auto-converge throttle slows.
 *    The thread runs SCHED_FIFO so a dirtying guest does not delay it.
 *
 *  - witnesses (--witness-port N): the agent's direction probe answers (UDP)
 *    and TCP stream on port N, version 1, exactly as probes/guest_agent.py's
 *    WitnessServer (docs/guest-agent.md, "Witnesses"), so the harness's
 *    udp_direction and tcp_stream probes measure this guest too.
 *
 *  - dirtier: writes one changing byte into each 4 KiB page of a buffer of
 *    `mib` MiB, round and round, at `rate` MiB/s (paced in 10 ms slices; rate 0
 *    means as fast as the vCPU goes). mib 0: idle, buffer released. A new size
 *    maps and populates a new buffer first (~0.5 s for 64 MiB under TCG);
 *    `pages_written` in the status tells when writing has begun.
 *
 *  - control (main thread): UDP on --control-port. A request is
 *      "MBCT1 <nonce> <command...>" followed by 32 bytes HMAC-SHA256(token, text)
 *    where nonce is a decimal number larger than any accepted before (the
 *    harness uses its clock in ns), so a captured request cannot be replayed.
 *    Commands: "dirty <mib> <rate_mib_per_s>", "status". The reply is text,
 *    "ok <nonce> key=value ..." or "error <nonce> <reason>".
 *
 * Usage: mb-guestd --heartbeat IPV4:PORT --token-file PATH [--hz 100]
 *                  [--control-port 7100] [--agent-id HEX16]
 *                  [--dirty-mib N --dirty-rate R] [--witness-port 47601]
 *        mb-guestd --selftest TOKEN HEX  (prints HMAC-SHA256(TOKEN, bytes of HEX))
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- SHA-256 */

typedef struct {
    uint32_t h[8];
    uint64_t length;
    uint8_t block[64];
    size_t used;
} sha256_ctx;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(sha256_ctx *c, const uint8_t *p) {
    uint32_t w[64], a, b, d, e, f, g, h, cc, t1, t2;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = c->h[0]; b = c->h[1]; cc = c->h[2]; d = c->h[3];
    e = c->h[4]; f = c->h[5]; g = c->h[6]; h = c->h[7];
    for (int i = 0; i < 64; i++) {
        t1 = h + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g; g = f; f = e; e = d + t1; d = cc; cc = b; b = a; a = t1 + t2;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d;
    c->h[4] += e; c->h[5] += f; c->h[6] += g; c->h[7] += h;
}

static void sha256_init(sha256_ctx *c) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->length = 0;
    c->used = 0;
}

static void sha256_update(sha256_ctx *c, const uint8_t *p, size_t n) {
    c->length += n;
    while (n > 0) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->block + c->used, p, take);
        c->used += take;
        p += take;
        n -= take;
        if (c->used == 64) {
            sha256_block(c, c->block);
            c->used = 0;
        }
    }
}

static void sha256_final(sha256_ctx *c, uint8_t out[32]) {
    uint64_t bits = c->length * 8;
    uint8_t pad = 0x80, zero = 0, len[8];
    sha256_update(c, &pad, 1);
    while (c->used != 56) sha256_update(c, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
}

static void hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t n,
                        uint8_t out[32]) {
    uint8_t k[64] = {0}, pad[64], inner[32];
    sha256_ctx c;
    if (key_len > 64) {
        sha256_init(&c);
        sha256_update(&c, key, key_len);
        sha256_final(&c, k);
    } else {
        memcpy(k, key, key_len);
    }
    for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, msg, n);
    sha256_final(&c, inner);
    for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, inner, 32);
    sha256_final(&c, out);
}

/* ---------------------------------------------------------------- shared state */

static uint8_t token[256];
static size_t token_len;
static uint64_t agent_id;
static _Atomic uint64_t hb_sent, hb_errors, pages_written;
static _Atomic int dirty_mib, dirty_rate; /* MiB, MiB/s */
static _Atomic unsigned dirty_generation;

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(int64_t mono_ns) {
    struct timespec ts = {.tv_sec = mono_ns / 1000000000LL, .tv_nsec = mono_ns % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void put_be(uint8_t *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

/* ---------------------------------------------------------------- heartbeat */

struct heartbeat_args {
    struct sockaddr_in target;
    int64_t interval_ns;
};

/* The agent's fixed unit of work (probes/guest_agent.py, WorkUnit). */
#define WORK_BYTES (256 * 1024)
#define WORK_HASH_BYTES (16 * 1024)
static uint8_t work_buffer[WORK_BYTES];

static void work_unit(void) {
    static uint8_t round_ = 0;
    round_++;
    for (size_t at = 0; at < WORK_BYTES; at += 4096) ((volatile uint8_t *)work_buffer)[at] = round_;
    sha256_ctx c;
    uint8_t digest[32];
    sha256_init(&c);
    sha256_update(&c, work_buffer, WORK_HASH_BYTES);
    sha256_final(&c, digest);
    __asm__ volatile("" : : "r"(digest) : "memory"); /* keep the hash */
}

static uint32_t clamp_u32(int64_t v) {
    return v < 0 ? 0 : v > 0xffffffffLL ? 0xffffffffu : (uint32_t)v;
}

static void *heartbeat_main(void *arg) {
    struct heartbeat_args *a = arg;
    struct sched_param sp = {.sched_priority = 50};
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp); /* best effort */
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("mb-guestd: heartbeat socket");
        return NULL;
    }
    uint8_t dgram[84];
    uint32_t interval_us = (uint32_t)(a->interval_ns / 1000);
    int64_t start = now_ns(CLOCK_MONOTONIC);
    int64_t next_slot = start;
    uint64_t seq = 0;
    int64_t work_ns = 0;
    for (;;) {
        sleep_until(next_slot);
        int64_t mono = now_ns(CLOCK_MONOTONIC);
        int64_t utc = now_ns(CLOCK_REALTIME);
        memcpy(dgram, "MBHB", 4);
        dgram[4] = 2; /* version */
        dgram[5] = 0; /* flags */
        dgram[6] = dgram[7] = 0;
        put_be(dgram + 8, agent_id, 8);
        put_be(dgram + 16, seq, 8);
        put_be(dgram + 24, (uint64_t)utc, 8);
        put_be(dgram + 32, (uint64_t)mono, 8);
        put_be(dgram + 40, interval_us, 4);
        put_be(dgram + 44, clamp_u32(mono - next_slot), 4);
        put_be(dgram + 48, clamp_u32(work_ns), 4);
        hmac_sha256(token, token_len, dgram, 52, dgram + 52);
        if (sendto(fd, dgram, sizeof dgram, MSG_DONTWAIT, (struct sockaddr *)&a->target,
                   sizeof a->target) == (ssize_t)sizeof dgram)
            atomic_fetch_add(&hb_sent, 1);
        else
            atomic_fetch_add(&hb_errors, 1);
        seq++;
        /* Counted from the slot: late to start is slow too (docs/guest-agent.md). */
        work_unit();
        work_ns = now_ns(CLOCK_MONOTONIC) - next_slot;
        next_slot = start + ((now_ns(CLOCK_MONOTONIC) - start) / a->interval_ns + 1) * a->interval_ns;
    }
    return NULL;
}

/* ---------------------------------------------------------------- dirtier */

#define PAGE 4096L
#define SLICE_NS 10000000LL

static void *dirtier_main(void *arg) {
    (void)arg;
    uint8_t *buffer = NULL;
    size_t pages = 0, at = 0;
    unsigned generation = ~0u;
    uint8_t stamp = 1;
    int64_t slice_start = now_ns(CLOCK_MONOTONIC);
    double credit = 0; /* pages we may still write in this slice */
    for (;;) {
        unsigned g = atomic_load(&dirty_generation);
        if (g != generation) {
            generation = g;
            if (buffer) munmap(buffer, pages * PAGE);
            buffer = NULL;
            pages = 0;
            at = 0;
            int mib = atomic_load(&dirty_mib);
            if (mib > 0) {
                pages = (size_t)mib * 256;
                buffer = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
                if (buffer == MAP_FAILED) {
                    perror("mb-guestd: dirtier mmap");
                    buffer = NULL;
                    pages = 0;
                }
            }
            slice_start = now_ns(CLOCK_MONOTONIC);
            credit = 0;
        }
        if (!buffer) {
            usleep(20000);
            continue;
        }
        int rate = atomic_load(&dirty_rate);
        size_t batch;
        if (rate > 0) {
            int64_t now = now_ns(CLOCK_MONOTONIC);
            if (now >= slice_start + SLICE_NS) {
                slice_start += ((now - slice_start) / SLICE_NS) * SLICE_NS;
                credit = (double)rate * 256.0 * SLICE_NS / 1e9;
            }
            if (credit < 1) {
                sleep_until(slice_start + SLICE_NS);
                continue;
            }
            batch = (size_t)credit;
            credit -= (double)batch;
        } else {
            batch = 256; /* 1 MiB, then look at the settings again */
        }
        for (size_t i = 0; i < batch; i++) {
            buffer[at * PAGE + (at & 0xff) * 8] = stamp;
            if (++at == pages) {
                at = 0;
                stamp = (uint8_t)(stamp == 255 ? 1 : stamp + 1); /* never a zero page */
            }
        }
        atomic_fetch_add(&pages_written, batch);
    }
    return NULL;
}

/* ---------------------------------------------------------------- witnesses */

static int constant_time_equal(const uint8_t *a, const uint8_t *b, size_t n) {
    uint8_t diff = 0;
    for (size_t i = 0; i < n; i++) diff |= a[i] ^ b[i];
    return diff == 0;
}


#define MAX_STREAMS 4
#define MAX_SESSIONS 16
#define STREAM_MAX_FRAME (1u << 20)
#define STREAM_MAX_OUTBOX (4u << 20)
#define MAX_ECHOES 65536

static uint64_t get_be(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = v << 8 | p[i];
    return v;
}

struct session {
    uint64_t id, received, highest, last, run_start, used;
    int valid;
};

struct stream {
    int fd, welcomed;
    int64_t accepted_ns, interval_ns, next_slot;
    uint64_t seq;
    uint8_t *inbox;
    size_t in_len;
    uint8_t *outbox;
    size_t out_len, out_cap;
    uint8_t *echoes; /* 16 bytes each: data seq, guest receive stamp */
    size_t n_echoes;
};

static struct session sessions[MAX_SESSIONS];
static struct stream streams[MAX_STREAMS];
static uint64_t session_clock;

static void answer_probe(int fd, const uint8_t *probe, const struct sockaddr_in *from,
                         socklen_t from_len, int64_t mono, int64_t utc) {
    uint8_t mac[32], answer[104];
    hmac_sha256(token, token_len, probe, 32, mac);
    if (memcmp(probe, "MBUP", 4) != 0 || probe[4] != 1 || !constant_time_equal(mac, probe + 32, 32))
        return;
    uint64_t id = get_be(probe + 8, 8), seq = get_be(probe + 16, 8);
    struct session *s = NULL, *oldest = &sessions[0];
    for (int i = 0; i < MAX_SESSIONS; i++) {
        if (sessions[i].valid && sessions[i].id == id) s = &sessions[i];
        if (!sessions[i].valid || sessions[i].used < oldest->used) oldest = &sessions[i];
    }
    if (!s) {
        s = oldest;
        *s = (struct session){.id = id, .highest = seq, .last = seq, .run_start = seq, .valid = 1};
    } else if (seq != s->last + 1) {
        s->run_start = seq; /* a hole (or reordering): a new run starts here */
    }
    s->received++;
    if (seq > s->highest) s->highest = seq;
    s->last = seq;
    s->used = ++session_clock;
    memcpy(answer, "MBUA", 4);
    answer[4] = 1;
    answer[5] = answer[6] = answer[7] = 0;
    put_be(answer + 8, agent_id, 8);
    put_be(answer + 16, id, 8);
    put_be(answer + 24, seq, 8);
    put_be(answer + 32, (uint64_t)mono, 8);
    put_be(answer + 40, (uint64_t)utc, 8);
    put_be(answer + 48, s->received, 8);
    put_be(answer + 56, s->highest, 8);
    put_be(answer + 64, s->run_start, 8);
    hmac_sha256(token, token_len, answer, 72, answer + 72);
    sendto(fd, answer, sizeof answer, MSG_DONTWAIT, (const struct sockaddr *)from, from_len);
}

static void stream_close(struct stream *st) {
    close(st->fd);
    free(st->inbox);
    free(st->outbox);
    free(st->echoes);
    memset(st, 0, sizeof *st);
    st->fd = -1;
}

static int stream_flush(struct stream *st) {
    while (st->out_len) {
        ssize_t n = send(st->fd, st->outbox, st->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        memmove(st->outbox, st->outbox + n, st->out_len - (size_t)n);
        st->out_len -= (size_t)n;
    }
    return 0;
}

static int stream_send(struct stream *st, uint8_t kind, const uint8_t *payload, size_t n) {
    size_t need = st->out_len + 5 + n;
    if (need > STREAM_MAX_OUTBOX) return -1;
    if (need > st->out_cap) {
        size_t cap = need * 2;
        uint8_t *bigger = realloc(st->outbox, cap);
        if (!bigger) return -1;
        st->outbox = bigger;
        st->out_cap = cap;
    }
    put_be(st->outbox + st->out_len, n + 1, 4);
    st->outbox[st->out_len + 4] = kind;
    memcpy(st->outbox + st->out_len + 5, payload, n);
    st->out_len = need;
    return stream_flush(st);
}

/* One frame; -1 closes the stream. */
static int stream_frame(struct stream *st, uint8_t kind, const uint8_t *p, size_t n, int64_t at) {
    if (kind == 'D' && st->welcomed && n == 24) {
        if (st->n_echoes == MAX_ECHOES) return 0; /* a tick will make room */
        if (!st->echoes && !(st->echoes = malloc(16 * (size_t)MAX_ECHOES))) return -1;
        memcpy(st->echoes + 16 * st->n_echoes, p, 8);
        put_be(st->echoes + 16 * st->n_echoes + 8, (uint64_t)at, 8);
        st->n_echoes++;
        return 0;
    }
    if (kind != 'H' || st->welcomed || n != 28 + 32) return -1;
    uint8_t mac[32], welcome[28 + 32], signed_[8 + 28];
    hmac_sha256(token, token_len, p, 28, mac);
    if (!constant_time_equal(mac, p + 28, 32) || memcmp(p, "MBTS", 4) != 0 || p[4] != 1) return -1;
    uint64_t interval_us = get_be(p + 16, 4), nonce = get_be(p + 20, 8);
    if (!interval_us) return -1;
    welcome[0] = 1;
    welcome[1] = welcome[2] = welcome[3] = 0;
    put_be(welcome + 4, agent_id, 8);
    put_be(welcome + 12, (uint64_t)at, 8);
    put_be(welcome + 20, (uint64_t)now_ns(CLOCK_REALTIME), 8);
    put_be(signed_, nonce, 8);
    memcpy(signed_ + 8, welcome, 28);
    hmac_sha256(token, token_len, signed_, sizeof signed_, welcome + 28);
    st->welcomed = 1;
    st->interval_ns = interval_us < 1000 ? 1000000 : (int64_t)interval_us * 1000;
    st->next_slot = (at / st->interval_ns + 1) * st->interval_ns;
    return stream_send(st, 'W', welcome, sizeof welcome);
}

static void stream_read(struct stream *st) {
    if (!st->inbox && !(st->inbox = malloc(STREAM_MAX_FRAME + 5))) {
        stream_close(st);
        return;
    }
    ssize_t n = recv(st->fd, st->inbox + st->in_len, STREAM_MAX_FRAME + 5 - st->in_len, 0);
    int64_t at = now_ns(CLOCK_MONOTONIC);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        stream_close(st);
        return;
    }
    st->in_len += (size_t)n;
    size_t used = 0;
    while (st->in_len - used >= 5) {
        uint64_t length = get_be(st->inbox + used, 4);
        if (length < 1 || length > STREAM_MAX_FRAME) {
            stream_close(st);
            return;
        }
        if (st->in_len - used < 4 + length) break;
        if (stream_frame(st, st->inbox[used + 4], st->inbox + used + 5, length - 1, at) < 0) {
            stream_close(st);
            return;
        }
        used += 4 + length;
    }
    memmove(st->inbox, st->inbox + used, st->in_len - used);
    st->in_len -= used;
}

static void stream_tick(struct stream *st, int64_t now) {
    size_t count = st->n_echoes;
    uint8_t *frame = malloc(28 + 16 * count);
    if (!frame) {
        stream_close(st);
        return;
    }
    put_be(frame, st->seq++, 8);
    put_be(frame + 8, (uint64_t)now_ns(CLOCK_MONOTONIC), 8);
    put_be(frame + 16, (uint64_t)now_ns(CLOCK_REALTIME), 8);
    put_be(frame + 24, count, 4);
    if (count) memcpy(frame + 28, st->echoes, 16 * count);
    st->n_echoes = 0;
    int failed = stream_send(st, 'T', frame, 28 + 16 * count) < 0;
    free(frame);
    if (failed) {
        stream_close(st);
        return;
    }
    st->next_slot = (now / st->interval_ns + 1) * st->interval_ns;
}

static void *witness_main(void *arg) {
    int port = *(int *)arg;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    int udp = socket(AF_INET, SOCK_DGRAM, 0), tcp = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (udp < 0 || tcp < 0 || bind(udp, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        bind(tcp, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(tcp, 8) < 0) {
        perror("mb-guestd: witness sockets");
        return NULL;
    }
    for (int i = 0; i < MAX_STREAMS; i++) streams[i].fd = -1;
    for (;;) {
        struct pollfd fds[2 + MAX_STREAMS];
        int index[2 + MAX_STREAMS], nfds = 2;
        fds[0] = (struct pollfd){.fd = udp, .events = POLLIN};
        fds[1] = (struct pollfd){.fd = tcp, .events = POLLIN};
        int64_t now = now_ns(CLOCK_MONOTONIC), wait_ns = 200000000;
        for (int i = 0; i < MAX_STREAMS; i++) {
            struct stream *st = &streams[i];
            if (st->fd < 0) continue;
            if (st->welcomed && st->next_slot - now < wait_ns) wait_ns = st->next_slot - now;
            index[nfds] = i;
            fds[nfds++] = (struct pollfd){
                .fd = st->fd, .events = (short)(POLLIN | (st->out_len ? POLLOUT : 0))};
        }
        if (wait_ns < 0) wait_ns = 0;
        poll(fds, (nfds_t)nfds, (int)((wait_ns + 999999) / 1000000));
        if (fds[0].revents & POLLIN) {
            for (int batch = 0; batch < 64; batch++) {
                uint8_t probe[65];
                struct sockaddr_in from;
                socklen_t from_len = sizeof from;
                ssize_t n = recvfrom(udp, probe, sizeof probe, MSG_DONTWAIT,
                                     (struct sockaddr *)&from, &from_len);
                if (n < 0) break;
                if (n == 64)
                    answer_probe(udp, probe, &from, from_len, now_ns(CLOCK_MONOTONIC),
                                 now_ns(CLOCK_REALTIME));
            }
        }
        if (fds[1].revents & POLLIN) {
            int fd = accept(tcp, NULL, NULL);
            int slot = -1;
            for (int i = 0; fd >= 0 && i < MAX_STREAMS; i++)
                if (streams[i].fd < 0) slot = i;
            if (fd >= 0 && slot < 0) close(fd);
            if (slot >= 0) {
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                streams[slot] = (struct stream){.fd = fd, .accepted_ns = now_ns(CLOCK_MONOTONIC)};
            }
        }
        for (int k = 2; k < nfds; k++) {
            struct stream *st = &streams[index[k]];
            if (st->fd < 0 || st->fd != fds[k].fd) continue;
            if ((fds[k].revents & POLLOUT) && stream_flush(st) < 0) {
                stream_close(st);
                continue;
            }
            if (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) stream_read(st);
        }
        now = now_ns(CLOCK_MONOTONIC);
        for (int i = 0; i < MAX_STREAMS; i++) {
            struct stream *st = &streams[i];
            if (st->fd < 0) continue;
            if (!st->welcomed && now - st->accepted_ns > 5000000000LL) stream_close(st);
            else if (st->welcomed && now >= st->next_slot) stream_tick(st, now);
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- control */

static int parse_ipv4_port(const char *text, struct sockaddr_in *out) {
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host) return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = 0;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    long port = strtol(colon + 1, NULL, 10);
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, host, &out->sin_addr) != 1) return -1;
    out->sin_port = htons((uint16_t)port);
    return 0;
}

static int read_token(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, token, sizeof token);
    close(fd);
    if (n <= 0) return -1;
    while (n > 0 && (token[n - 1] == '\n' || token[n - 1] == '\r' || token[n - 1] == 0)) n--;
    token_len = (size_t)n;
    return n > 0 ? 0 : -1;
}

/* Idempotent: asking again for what runs changes nothing (a retried request must
 * not make the dirtier map and populate its buffer anew). */
static void set_dirty(int mib, int rate) {
    atomic_store(&dirty_rate, rate);
    if (atomic_exchange(&dirty_mib, mib) != mib) atomic_fetch_add(&dirty_generation, 1);
}

static void serve_control(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("mb-guestd: control socket");
        for (;;) pause();
    }
    uint64_t last_nonce = 0;
    for (;;) {
        uint8_t request[512];
        char text[480], reply[512];
        struct sockaddr_in from;
        socklen_t from_len = sizeof from;
        ssize_t n = recvfrom(fd, request, sizeof request - 1, 0, (struct sockaddr *)&from,
                             &from_len);
        if (n < 32 + 6 || (size_t)n - 32 >= sizeof text) continue;
        size_t text_len = (size_t)n - 32;
        uint8_t mac[32];
        hmac_sha256(token, token_len, request, text_len, mac);
        if (!constant_time_equal(mac, request + text_len, 32)) continue; /* not ours: silence */
        memcpy(text, request, text_len);
        text[text_len] = 0;
        uint64_t nonce = 0;
        int consumed = 0;
        if (sscanf(text, "MBCT1 %" SCNu64 " %n", &nonce, &consumed) != 1 || consumed == 0) continue;
        const char *command = text + consumed;
        int mib, rate;
        if (nonce <= last_nonce) {
            snprintf(reply, sizeof reply, "error %" PRIu64 " stale-nonce", nonce);
        } else {
            last_nonce = nonce;
            if (sscanf(command, "dirty %d %d", &mib, &rate) == 2 && mib >= 0 && mib <= 4096 &&
                rate >= 0) {
                set_dirty(mib, rate);
                snprintf(reply, sizeof reply, "ok %" PRIu64 " dirty_mib=%d dirty_rate=%d", nonce,
                         mib, rate);
            } else if (strncmp(command, "status", 6) == 0) {
                snprintf(reply, sizeof reply,
                         "ok %" PRIu64 " agent_id=%016" PRIx64 " heartbeats_sent=%" PRIu64
                         " heartbeat_errors=%" PRIu64 " dirty_mib=%d dirty_rate=%d"
                         " pages_written=%" PRIu64 " mono_ns=%" PRId64,
                         nonce, agent_id, atomic_load(&hb_sent), atomic_load(&hb_errors),
                         atomic_load(&dirty_mib), atomic_load(&dirty_rate),
                         atomic_load(&pages_written), now_ns(CLOCK_MONOTONIC));
            } else {
                snprintf(reply, sizeof reply, "error %" PRIu64 " unknown-command", nonce);
            }
        }
        sendto(fd, reply, strlen(reply), 0, (struct sockaddr *)&from, from_len);
    }
}

/* ---------------------------------------------------------------- main */

static int selftest(const char *key, const char *hex) {
    size_t n = strlen(hex) / 2;
    uint8_t *msg = malloc(n + 1), mac[32];
    for (size_t i = 0; i < n; i++) sscanf(hex + 2 * i, "%2hhx", &msg[i]);
    hmac_sha256((const uint8_t *)key, strlen(key), msg, n, mac);
    for (int i = 0; i < 32; i++) printf("%02x", mac[i]);
    printf("\n");
    free(msg);
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: mb-guestd --heartbeat IPV4:PORT --token-file PATH [--hz 100]\n"
            "                 [--control-port 7100] [--agent-id HEX16]\n"
            "                 [--dirty-mib N --dirty-rate MIB_PER_S] [--witness-port PORT]\n"
            "       mb-guestd --selftest KEY HEX\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--selftest") == 0) return selftest(argv[2], argv[3]);
    const char *target = NULL, *token_file = NULL;
    double hz = 100;
    int control_port = 7100, mib = 0, rate = 0;
    static int witness_port = 0;
    int have_agent_id = 0;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc) usage();
        const char *value = argv[++i];
        if (!strcmp(opt, "--heartbeat")) target = value;
        else if (!strcmp(opt, "--token-file")) token_file = value;
        else if (!strcmp(opt, "--hz")) hz = atof(value);
        else if (!strcmp(opt, "--control-port")) control_port = atoi(value);
        else if (!strcmp(opt, "--agent-id")) {
            agent_id = strtoull(value, NULL, 16);
            have_agent_id = 1;
        } else if (!strcmp(opt, "--dirty-mib")) mib = atoi(value);
        else if (!strcmp(opt, "--dirty-rate")) rate = atoi(value);
        else if (!strcmp(opt, "--witness-port")) witness_port = atoi(value);
        else usage();
    }
    static struct heartbeat_args hb;
    if (!target || !token_file || parse_ipv4_port(target, &hb.target) != 0 || hz <= 0 ||
        hz > 10000)
        usage();
    if (read_token(token_file) != 0) {
        fprintf(stderr, "mb-guestd: cannot read a token from %s\n", token_file);
        return 1;
    }
    if (!have_agent_id) {
        int fd = open("/dev/urandom", O_RDONLY);
        if (fd < 0 || read(fd, &agent_id, sizeof agent_id) != (ssize_t)sizeof agent_id) {
            perror("mb-guestd: /dev/urandom");
            return 1;
        }
        close(fd);
    }
    hb.interval_ns = (int64_t)(1e9 / hz);
    atomic_store(&dirty_generation, 1);
    set_dirty(mib, rate);
    signal(SIGPIPE, SIG_IGN);
    pthread_t heartbeat, dirtier, witnesses;
    if (pthread_create(&heartbeat, NULL, heartbeat_main, &hb) != 0 ||
        pthread_create(&dirtier, NULL, dirtier_main, NULL) != 0 ||
        (witness_port > 0 && pthread_create(&witnesses, NULL, witness_main, &witness_port) != 0)) {
        perror("mb-guestd: pthread_create");
        return 1;
    }
    fprintf(stderr, "mb-guestd: agent %016" PRIx64 ", heartbeat to %s at %.0f Hz, control port %d\n",
            agent_id, target, hz, control_port);
    serve_control(control_port);
    return 0;
}
