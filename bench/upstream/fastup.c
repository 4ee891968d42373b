/*
 * fastup: the benchmark's upstream. A compiled stand-in for Ollama that is
 * never the limit of a measurement (one thread, epoll, HTTP/1.1 keep-alive),
 * so that what the bench sees is the proxy in front of it.
 *
 * It speaks just enough of Ollama's wire format for a proxy to do its whole
 * job on it:
 *
 *   POST /v1/chat/completions   non-streamed: a small JSON answer (Content-Length)
 *                               "stream": true: SSE events, each in a chunk of
 *                               its own (Transfer-Encoding: chunked, as Ollama)
 *   GET  /v1/models, /api/tags, /api/version, /   the listings and probes
 *   GET  /bench/stats[?tag=T]   its own counters: requests answered, content
 *                               events sent, streams open now, and slow streams
 *                               open whose first message's content was "T"
 *
 * The model named in the request chooses the stream's shape:
 *
 *   "paced"  --paced-events events, one every --paced-us microseconds (a model
 *            generating tokens on an otherwise idle machine)
 *   "slow"   one event, then the stream is held open until the client leaves
 *            (for memory per open stream)
 *   other    --events events as fast as the sockets take them, round robin
 *            over the open streams, one event per stream per loop turn
 *
 * Every content event carries the CLOCK_MONOTONIC time (ns) at which it was
 * written, as its delta content, so a client on the same machine measures
 * each event's one-way delay through whatever sits between. A stream whose
 * request asks for "include_usage": true ends, like Ollama's, with a usage
 * chunk ("choices": [] and the token figures) after the finish chunk.
 *
 *   cc -O2 -o fastup fastup.c && ./fastup --port 11434
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADER (64 * 1024)
#define MAX_BODY (16 * 1024 * 1024)

enum shape { FAST, PACED, SLOW };

struct conn {
    int fd;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_off, out_cap;
    int close_after;    /* Connection: close, or HTTP/1.0 */
    int streaming;      /* a streamed answer is in progress */
    enum shape shape;
    int events_left;
    int64_t due_ns;     /* next event of a paced stream */
    int active_index;   /* position in the active list, -1 if absent */
    int counted_slow;
    int tag;            /* of a slow stream: index in tags[], -1 if none */
    int usage_tokens;   /* completion tokens for the usage chunk; 0: not asked for */
    char model[64];
    char id[32];
};

static struct {
    int events;         /* events of a fast stream */
    int paced_events;
    int64_t paced_ns;
} opt = {16, 20, 10 * 1000000LL};

static struct {
    uint64_t requests, streams, events, open_slow, open_streams;
    uint64_t cut_streams; /* fast or paced streams whose connection closed mid-way */
} stats;

/* Slow streams open per tag (the first message's content), so a client can
 * count its own streams while other proxies still hold theirs. */
#define MAX_TAGS 256
static struct {
    char name[48];
    uint64_t open;
} tags[MAX_TAGS];
static int n_tags;

static int tag_index(const char *name) {
    for (int i = 0; i < n_tags; i++)
        if (strcmp(tags[i].name, name) == 0) return i;
    if (n_tags == MAX_TAGS) return -1;
    snprintf(tags[n_tags].name, sizeof tags[n_tags].name, "%s", name);
    return n_tags++;
}

static struct conn **active;    /* streams with an event still to send */
static int n_active, cap_active;
static int epfd;
static uint64_t next_id;

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void reserve(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n *= 2;
    char *p = realloc(*buf, n);
    if (!p) die("realloc");
    *buf = p;
    *cap = n;
}

static void out_append(struct conn *c, const char *data, size_t len) {
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    reserve(&c->out, &c->out_cap, c->out_len + len);
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void out_printf(struct conn *c, const char *fmt, ...) {
    char tmp[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        fprintf(stderr, "fastup: response too long\n");
        exit(1);
    }
    out_append(c, tmp, (size_t)n);
}

static const char *http_date(void) {
    static char buf[64];
    static time_t last;
    time_t t = time(NULL);
    if (t != last) {
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        last = t;
    }
    return buf;
}

static void set_events(struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
}

static void active_add(struct conn *c) {
    if (c->active_index >= 0) return;
    if (n_active == cap_active) {
        cap_active = cap_active ? cap_active * 2 : 256;
        active = realloc(active, sizeof *active * (size_t)cap_active);
        if (!active) die("realloc");
    }
    c->active_index = n_active;
    active[n_active++] = c;
}

static void active_remove(struct conn *c) {
    if (c->active_index < 0) return;
    struct conn *last = active[--n_active];
    active[c->active_index] = last;
    last->active_index = c->active_index;
    c->active_index = -1;
}

static void conn_close(struct conn *c) {
    active_remove(c);
    if (c->counted_slow) stats.open_slow--;
    if (c->tag >= 0) tags[c->tag].open--;
    if (c->streaming) stats.open_streams--;
    if (c->streaming && c->shape != SLOW) stats.cut_streams++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

/* Write what is buffered. Returns -1 if the connection died. */
static int flush_out(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(c, EPOLLIN | EPOLLOUT);
            return 0;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return -1;
        }
    }
    c->out_off = c->out_len = 0;
    return 0;
}

static int pending_out(struct conn *c) { return c->out_off < c->out_len; }

static void respond(struct conn *c, int status, const char *reason, const char *type,
                    const char *body, int head_only) {
    size_t len = strlen(body);
    out_printf(c,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nDate: %s\r\nContent-Length: %zu\r\n%s\r\n",
               status, reason, type, http_date(), len,
               c->close_after ? "Connection: close\r\n" : "");
    if (!head_only) out_append(c, body, len);
}

static const char *MODELS[] = {"llama3.2:1b", "paced", "slow"};
#define N_MODELS (sizeof MODELS / sizeof *MODELS)

static void models_openai(char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < N_MODELS; i++)
        n += (size_t)snprintf(buf + n, size - n,
                              "%s{\"id\":\"%s\",\"object\":\"model\",\"created\":1700000000,"
                              "\"owned_by\":\"library\"}",
                              i ? "," : "", MODELS[i]);
    snprintf(buf + n, size - n, "]}");
}

static void models_ollama(char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "{\"models\":[");
    for (size_t i = 0; i < N_MODELS; i++)
        n += (size_t)snprintf(
            buf + n, size - n,
            "%s{\"name\":\"%s\",\"model\":\"%s\",\"modified_at\":\"2025-01-01T00:00:00Z\","
            "\"size\":1321098329,\"digest\":\"a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3b"
            "cd3abbcb5b8b72\",\"details\":{\"format\":\"gguf\",\"family\":\"llama\","
            "\"parameter_size\":\"1.2B\",\"quantization_level\":\"Q8_0\"}}",
            i ? "," : "", MODELS[i], MODELS[i]);
    snprintf(buf + n, size - n, "]}");
}

/* The string value of "key" in a JSON object, found by scanning (enough for
 * the flat request bodies clients send). */
static int json_string(const char *body, size_t len, const char *key, char *out, size_t size) {
    size_t klen = strlen(key);
    for (size_t i = 0; i + klen + 2 <= len; i++) {
        if (body[i] != '"' || memcmp(body + i + 1, key, klen) != 0 || body[i + 1 + klen] != '"')
            continue;
        size_t j = i + klen + 2;
        while (j < len && (body[j] == ' ' || body[j] == '\t' || body[j] == '\n' || body[j] == '\r'))
            j++;
        if (j >= len || body[j] != ':') continue;
        j++;
        while (j < len && (body[j] == ' ' || body[j] == '\t' || body[j] == '\n' || body[j] == '\r'))
            j++;
        if (j >= len) return 0;
        if (body[j] != '"') {
            size_t k = 0;
            while (j < len && k + 1 < size && body[j] != ',' && body[j] != '}' && body[j] != ' ')
                out[k++] = body[j++];
            out[k] = 0;
            return 1;
        }
        j++;
        size_t k = 0;
        while (j < len && body[j] != '"' && k + 1 < size) out[k++] = body[j++];
        out[k] = 0;
        return 1;
    }
    return 0;
}

static void chunk(struct conn *c, const char *data, size_t len) {
    out_printf(c, "%zx\r\n", len);
    out_append(c, data, len);
    out_append(c, "\r\n", 2);
}

/* The start every chunk of a stream shares; returns its length in ev. */
static int chunk_head(const struct conn *c, char *ev, size_t size) {
    return snprintf(ev, size,
                    "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":%lld,"
                    "\"model\":\"%s\",\"system_fingerprint\":\"fp_ollama\",",
                    c->id, (long long)(now_ns(CLOCK_REALTIME) / 1000000000LL), c->model);
}

static void send_event(struct conn *c) {
    char ev[1024];
    int n = chunk_head(c, ev, sizeof ev);
    if (c->events_left > 0) {
        int64_t t = now_ns(CLOCK_MONOTONIC);
        n += snprintf(ev + n, sizeof ev - (size_t)n,
                      "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                      "\"content\":\"%lld\"},\"finish_reason\":null}]}\n\n",
                      (long long)t);
        chunk(c, ev, (size_t)n);
        c->events_left--;
        stats.events++;
        if (c->shape == SLOW) {
            /* held open: nothing more until the client leaves */
            active_remove(c);
            return;
        }
        return;
    }
    n += snprintf(ev + n, sizeof ev - (size_t)n,
                  "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                  "\"finish_reason\":\"stop\"}]}\n\n");
    chunk(c, ev, (size_t)n);
    if (c->usage_tokens) {
        n = chunk_head(c, ev, sizeof ev);
        n += snprintf(ev + n, sizeof ev - (size_t)n,
                      "\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":%d,"
                      "\"total_tokens\":%d}}\n\n",
                      c->usage_tokens, c->usage_tokens + 1);
        chunk(c, ev, (size_t)n);
    }
    static const char done[] = "data: [DONE]\n\n";
    chunk(c, done, sizeof done - 1);
    out_append(c, "0\r\n\r\n", 5);
    c->streaming = 0;
    stats.open_streams--;
    active_remove(c);
}

static void start_stream(struct conn *c, const char *model, const char *tag, int usage) {
    snprintf(c->model, sizeof c->model, "%s", model);
    snprintf(c->id, sizeof c->id, "chatcmpl-%llu", (unsigned long long)++next_id);
    c->streaming = 1;
    stats.streams++;
    stats.open_streams++;
    if (strcmp(model, "slow") == 0) {
        c->shape = SLOW;
        c->events_left = 1;
        c->counted_slow = 1;
        stats.open_slow++;
        if (tag[0] && (c->tag = tag_index(tag)) >= 0) tags[c->tag].open++;
    } else if (strcmp(model, "paced") == 0) {
        c->shape = PACED;
        c->events_left = opt.paced_events;
    } else {
        c->shape = FAST;
        c->events_left = opt.events;
    }
    c->usage_tokens = usage ? c->events_left : 0;
    out_printf(c,
               "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nDate: %s\r\n"
               "Transfer-Encoding: chunked\r\n\r\n",
               http_date());
    /* The first event goes out with the head, as Ollama's first flush does. */
    send_event(c);
    if (c->streaming && c->shape != SLOW) {
        c->due_ns = now_ns(CLOCK_MONOTONIC) + (c->shape == PACED ? opt.paced_ns : 0);
        active_add(c);
    }
}

static void chat(struct conn *c, const char *body, size_t len) {
    char model[64] = "", stream[16] = "", tag[48] = "", include_usage[16] = "";
    if (!json_string(body, len, "model", model, sizeof model) || !model[0]) {
        respond(c, 400, "Bad Request", "application/json",
                "{\"error\":{\"message\":\"model is required\",\"type\":\"invalid_request_error\","
                "\"param\":null,\"code\":null}}",
                0);
        return;
    }
    json_string(body, len, "stream", stream, sizeof stream);
    if (strcmp(stream, "true") == 0) {
        /* the tag of a held stream is its (first) message's content: every
         * proxy forwards that untouched */
        json_string(body, len, "content", tag, sizeof tag);
        json_string(body, len, "include_usage", include_usage, sizeof include_usage);
        start_stream(c, model, tag, strcmp(include_usage, "true") == 0);
        return;
    }
    char out[1024];
    snprintf(out, sizeof out,
             "{\"id\":\"chatcmpl-%llu\",\"object\":\"chat.completion\",\"created\":%lld,"
             "\"model\":\"%s\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,"
             "\"message\":{\"role\":\"assistant\",\"content\":\"The sky is blue because air "
             "molecules scatter blue sunlight the most.\"},\"finish_reason\":\"stop\"}],"
             "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":12,\"total_tokens\":13}}",
             (unsigned long long)++next_id, (long long)(now_ns(CLOCK_REALTIME) / 1000000000LL),
             model);
    respond(c, 200, "OK", "application/json", out, 0);
}

static void route(struct conn *c, const char *method, const char *path, const char *body,
                  size_t len) {
    int head = strcmp(method, "HEAD") == 0;
    int get = head || strcmp(method, "GET") == 0;
    char buf[4096];
    stats.requests++;
    const char *q = strchr(path, '?');
    size_t plen = q ? (size_t)(q - path) : strlen(path);
#define IS(p) (plen == sizeof(p) - 1 && memcmp(path, p, plen) == 0)
    if (strcmp(method, "POST") == 0 && IS("/v1/chat/completions")) {
        chat(c, body, len);
    } else if (get && IS("/v1/models")) {
        models_openai(buf, sizeof buf);
        respond(c, 200, "OK", "application/json", buf, head);
    } else if (get && IS("/api/tags")) {
        models_ollama(buf, sizeof buf);
        respond(c, 200, "OK", "application/json", buf, head);
    } else if (get && IS("/api/version")) {
        respond(c, 200, "OK", "application/json", "{\"version\":\"0.12.6\"}", head);
    } else if (get && IS("/api/ps")) {
        respond(c, 200, "OK", "application/json", "{\"models\":[]}", head);
    } else if (get && IS("/")) {
        respond(c, 200, "OK", "text/plain; charset=utf-8", "Ollama is running", head);
    } else if (get && IS("/bench/stats")) {
        /* ?tag=NAME: also the slow streams open under that tag */
        uint64_t tagged = 0;
        if (q && strncmp(q, "?tag=", 5) == 0)
            for (int i = 0; i < n_tags; i++)
                if (strcmp(tags[i].name, q + 5) == 0) tagged = tags[i].open;
        snprintf(buf, sizeof buf,
                 "{\"requests\":%llu,\"streams\":%llu,\"events\":%llu,\"open_streams\":%llu,"
                 "\"open_slow\":%llu,\"open_tagged\":%llu,\"cut_streams\":%llu}",
                 (unsigned long long)stats.requests, (unsigned long long)stats.streams,
                 (unsigned long long)stats.events, (unsigned long long)stats.open_streams,
                 (unsigned long long)stats.open_slow, (unsigned long long)tagged,
                 (unsigned long long)stats.cut_streams);
        respond(c, 200, "OK", "application/json", buf, head);
    } else {
        respond(c, 404, "Not Found", "text/plain; charset=utf-8", "404 page not found", head);
    }
#undef IS
}

/* Decode a chunked body in place. Returns its length, -1 if incomplete,
 * -2 if malformed; *used is how many input bytes it took. */
static long dechunk(char *p, size_t len, size_t *used) {
    size_t r = 0, w = 0;
    for (;;) {
        char *eol = memmem(p + r, len - r, "\r\n", 2);
        if (!eol) return -1;
        char *end;
        unsigned long size = strtoul(p + r, &end, 16);
        if (end == p + r) return -2;
        r = (size_t)(eol - p) + 2;
        if (size == 0) {
            char *fin = memmem(p + r, len - r, "\r\n", 2); /* no trailers expected */
            if (!fin) return -1;
            *used = (size_t)(fin - p) + 2;
            return (long)w;
        }
        if (len - r < size + 2) return -1;
        memmove(p + w, p + r, size);
        w += size;
        r += size + 2;
    }
}

/* Parse and answer every complete request in the input buffer. */
static void process(struct conn *c) {
    while (!c->streaming && c->in_len > 0) {
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!end) {
            if (c->in_len > MAX_HEADER) c->close_after = 2;
            return;
        }
        size_t head_len = (size_t)(end - c->in) + 4;
        char method[16], path[2048], version[16];
        if (sscanf(c->in, "%15s %2047s %15s", method, path, version) != 3) {
            c->close_after = 2;
            return;
        }
        long content_length = 0;
        int chunked = 0;
        /* applies once the whole request is in: until then nothing is closed */
        int close_after = strcmp(version, "HTTP/1.0") == 0;
        for (char *line = memmem(c->in, head_len, "\r\n", 2) + 2; line < end;) {
            char *eol = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
            if (!eol) break;
            if (strncasecmp(line, "content-length:", 15) == 0) {
                content_length = strtol(line + 15, NULL, 10);
            } else if (strncasecmp(line, "transfer-encoding:", 18) == 0) {
                chunked = memmem(line, (size_t)(eol - line), "chunked", 7) != NULL;
            } else if (strncasecmp(line, "connection:", 11) == 0) {
                size_t n = (size_t)(eol - line);
                if (memmem(line, n, "close", 5)) close_after = 1;
                if (memmem(line, n, "keep-alive", 10) || memmem(line, n, "Keep-Alive", 10))
                    close_after = 0;
            }
            line = eol + 2;
        }
        size_t consumed;
        char *body = c->in + head_len;
        size_t body_len;
        if (chunked) {
            size_t used;
            long n = dechunk(body, c->in_len - head_len, &used);
            if (n == -1) return;
            if (n == -2) {
                c->close_after = 2;
                return;
            }
            body_len = (size_t)n;
            consumed = head_len + used;
        } else {
            if (content_length < 0 || content_length > MAX_BODY) {
                c->close_after = 2;
                return;
            }
            if (c->in_len - head_len < (size_t)content_length) return;
            body_len = (size_t)content_length;
            consumed = head_len + body_len;
        }
        c->close_after = close_after;
        route(c, method, path, body, body_len);
        memmove(c->in, c->in + consumed, c->in_len - consumed);
        c->in_len -= consumed;
        if (c->close_after) return;
    }
}

static void on_readable(struct conn *c) {
    for (;;) {
        reserve(&c->in, &c->in_cap, c->in_len + 16384);
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if ((size_t)n < 16384) break;
        } else if (n == 0) {
            conn_close(c);
            return;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        } else if (errno == EINTR) {
            continue;
        } else {
            conn_close(c);
            return;
        }
    }
    if (c->streaming) {
        /* A held (slow) stream only waits for the client to leave; anything
         * it sends meanwhile is kept for after the stream. */
        if (c->in_len > MAX_HEADER + MAX_BODY) conn_close(c);
        return;
    }
    process(c);
    if (c->close_after == 2) {
        conn_close(c);
        return;
    }
    if (flush_out(c) < 0 || (!pending_out(c) && !c->streaming && c->close_after)) {
        conn_close(c);
    }
}

static void on_writable(struct conn *c) {
    if (flush_out(c) < 0) {
        conn_close(c);
        return;
    }
    if (pending_out(c)) return;
    set_events(c, EPOLLIN);
    if (!c->streaming) {
        if (c->close_after) {
            conn_close(c);
            return;
        }
        process(c);
        if (flush_out(c) < 0) conn_close(c);
    }
}

/* One event to every stream that is due and whose socket took the last one. */
static void run_streams(int64_t now) {
    for (int i = 0; i < n_active;) {
        struct conn *c = active[i];
        if (pending_out(c) || c->due_ns > now) {
            i++;
            continue;
        }
        send_event(c);
        if (c->streaming && c->shape == PACED) c->due_ns = now + opt.paced_ns;
        int still_here = c->active_index == i;
        if (flush_out(c) < 0) {
            conn_close(c);
            continue;
        }
        if (!c->streaming && !pending_out(c)) {
            if (c->close_after) {
                conn_close(c);
                continue;
            }
            process(c); /* a pipelined request behind the stream */
            if (flush_out(c) < 0) {
                conn_close(c);
                continue;
            }
        }
        if (still_here) i++;
    }
}

static int next_timeout_ms(int64_t now) {
    int64_t earliest = INT64_MAX;
    for (int i = 0; i < n_active; i++) {
        if (pending_out(active[i])) continue;
        if (active[i]->due_ns < earliest) earliest = active[i]->due_ns;
    }
    if (earliest == INT64_MAX) return -1;
    if (earliest <= now) return 0;
    return (int)((earliest - now + 999999) / 1000000);
}

static void usage(void) {
    fprintf(stderr,
            "usage: fastup --port N [--host 127.0.0.1] [--events 16] [--paced-events 20]"
            " [--paced-us 10000]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = -1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        if (strcmp(argv[i], "--port") == 0) port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--host") == 0) host = argv[++i];
        else if (strcmp(argv[i], "--events") == 0) opt.events = atoi(argv[++i]);
        else if (strcmp(argv[i], "--paced-events") == 0) opt.paced_events = atoi(argv[++i]);
        else if (strcmp(argv[i], "--paced-us") == 0) opt.paced_ns = atoll(argv[++i]) * 1000;
        else usage();
    }
    if (port < 0 || opt.events < 1 || opt.paced_events < 1 || opt.paced_ns < 0) usage();

    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "fastup: --host must be an IPv4 address\n");
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("fastup listening on %s:%d\n", host, ntohs(addr.sin_port));
    fflush(stdout);

    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) < 0) die("epoll_ctl add");

    struct epoll_event events[512];
    for (;;) {
        int timeout = next_timeout_ms(now_ns(CLOCK_MONOTONIC));
        int n = epoll_wait(epfd, events, 512, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    if (!c) die("calloc");
                    c->fd = fd;
                    c->active_index = -1;
                    c->tag = -1;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
                }
                continue;
            }
            if (events[i].events & (EPOLLERR | EPOLLHUP)) {
                conn_close(c);
                /* the same pointer cannot appear twice in one batch */
                continue;
            }
            if (events[i].events & EPOLLOUT) {
                on_writable(c);
                continue; /* if it is also readable, the next wait says so again */
            }
            if (events[i].events & EPOLLIN) on_readable(c);
        }
        if (n_active) run_streams(now_ns(CLOCK_MONOTONIC));
    }
}
