/*
 * The RKLLM result callback in C: copy the token, stamp it, return.
 *
 * The runtime waits for its callback to return before it decodes the next token (rkllm.h from
 * rknn-llm 1.2.1: "return 0: continue; 1: pause"), so whatever the callback does, the NPU waits
 * for. A ctypes callback must first take the GIL, which another thread of ours may hold for tens
 * of microseconds. This one never touches Python: it appends the bytes to a buffer under a
 * mutex and returns; a Python thread in rkmq_handoff_read (a ctypes call, so without the GIL)
 * takes them from there.
 *
 * Mostly it does not even wake that reader. Waking a sleeping thread (a futex wake, an interrupt
 * to another CPU) is the slow part of a hand-off: measured here it made 1 % of the callbacks take
 * 20-130 µs against 2.4 µs without it. But the NPU makes tokens at a steady pace, so the reader
 * knows when the next one is due: it sleeps until shortly before (the interval of the last two
 * tokens, minus an eighth of it, at least 1 ms), then looks every POLL_NS by itself until it
 * comes. The callback wakes the reader only when it is in that long sleep (the first tokens of a
 * run, a token earlier or later than due), so a token waits at most POLL_NS (plus the timer's
 * lateness; 1 µs timer slack is asked for) and the reader wakes a few dozen times per token,
 * not ten thousand times a second (that cost 20 % of a CPU here).
 *
 * Nothing here depends on one ABI family: the caller passes where `text` and `perf` sit in the
 * family's RKLLMResult (`text` is its first member in every release 1.1.0 - 1.3.0; `perf`
 * exists from 1.2.1). Each slot has its callback in both of the header's types: returning int
 * (always 0, "continue") for 1.2.1 and later, returning void for 1.1.x and 1.2.0, so the runtime
 * calls a function of exactly the type its rkllm.h declares.
 *
 * The session does not use `userdata` to find its state: each open session owns one of
 * HANDOFF_SLOTS slots, and each slot has its own callback function.
 *
 * Built by setuptools as an optional extension (pyproject.toml); it uses no Python API.
 */
#include <pthread.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HANDOFF_SLOTS 16
#define POLL_NS 100000L       /* how often the reader looks while a token is due */
#define MIN_WINDOW_NS 1000000L /* it starts looking at least this long before the token is due */

/* The caller's markers (negative, never an LLMCallState); handoff.py names them too. */
enum { END_OF_RUN = -1, STOP = -2, BEGIN_OF_RUN = -3 };

/* Entry layout in the buffer: header, then `len` bytes, padded to 8. */
typedef struct {
    int32_t state;  /* LLMCallState of the callback, or a negative marker from the caller */
    uint32_t len;   /* bytes of data after the header */
    int64_t t_ns;   /* CLOCK_MONOTONIC when the callback was made */
} entry_t;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned char *buf;
    size_t used, cap;
    size_t text_offset, perf_offset, perf_size;
    int64_t last_ns, interval_ns; /* the last token of this run, and the gap before it */
    int in_use, running, reader_waiting, reader_asleep;
} slot_t;

static slot_t slots[HANDOFF_SLOTS];
static pthread_mutex_t table_mu = PTHREAD_MUTEX_INITIALIZER;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static size_t padded(size_t n) { return (n + 7u) & ~(size_t)7u; }

enum { RUN_NORMAL = 0, RUN_WAITING = 1, RUN_FINISH = 2, RUN_ERROR = 3 };

/* Append one entry, waking the reader if `wake` or if it is in its long sleep; 0, or -1 if memory
 * ran out (the entry is lost, nothing else). */
static int append(slot_t *s, int32_t state, const void *data, size_t len, int64_t t_ns, int wake) {
    size_t need = sizeof(entry_t) + padded(len);
    if (len > UINT32_MAX) return -1;
    pthread_mutex_lock(&s->mu);
    if (s->used + need > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->used + need) cap *= 2;
        unsigned char *grown = realloc(s->buf, cap);
        if (!grown) {
            pthread_mutex_unlock(&s->mu);
            return -1;
        }
        s->buf = grown, s->cap = cap;
    }
    entry_t head = {state, (uint32_t)len, t_ns};
    memcpy(s->buf + s->used, &head, sizeof head);
    if (len) memcpy(s->buf + s->used + sizeof head, data, len);
    s->used += need;
    if (state < 0) {
        s->running = state == BEGIN_OF_RUN;
        s->last_ns = s->interval_ns = 0;
    } else if (state == RUN_NORMAL || state == RUN_WAITING) {
        s->interval_ns = s->last_ns ? t_ns - s->last_ns : 0;
        s->last_ns = t_ns;
    }
    if (s->reader_waiting && (wake || s->reader_asleep)) pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int deliver(slot_t *s, const unsigned char *result, int state) {
    if (!s->in_use) return 0; /* a callback after the session let go of its slot */
    int64_t t = now_ns();
    if (state == RUN_NORMAL || state == RUN_WAITING) {
        /* the text is freed once we return: copied now; NULL or empty text carries nothing */
        const char *text = result ? *(const char *const *)(result + s->text_offset) : NULL;
        if (text && *text) append(s, state, text, strlen(text), t, 0);
    } else if (state == RUN_FINISH) {
        append(s, state, result && s->perf_size ? result + s->perf_offset : NULL,
               result ? s->perf_size : 0, t, 0);
    } else if (state == RUN_ERROR) {
        append(s, state, NULL, 0, t, 0);
    }
    return 0;
}

#define CALLBACK(n) \
    static int callback_##n(void *result, void *userdata, int state) { \
        (void)userdata; \
        return deliver(&slots[n], result, state); \
    } \
    static void void_callback_##n(void *result, void *userdata, int state) { \
        (void)userdata; \
        deliver(&slots[n], result, state); \
    }
CALLBACK(0) CALLBACK(1) CALLBACK(2) CALLBACK(3) CALLBACK(4) CALLBACK(5) CALLBACK(6) CALLBACK(7)
CALLBACK(8) CALLBACK(9) CALLBACK(10) CALLBACK(11) CALLBACK(12) CALLBACK(13) CALLBACK(14)
CALLBACK(15)

/* typedef int (*LLMResultCallback)(RKLLMResult*, void*, LLMCallState): rkllm.h 1.2.1 - 1.3.0 */
typedef int (*callback_t)(void *, void *, int);
static const callback_t callbacks[HANDOFF_SLOTS] = {
    callback_0, callback_1, callback_2, callback_3, callback_4, callback_5, callback_6,
    callback_7, callback_8, callback_9, callback_10, callback_11, callback_12, callback_13,
    callback_14, callback_15,
};

/* typedef void (*LLMResultCallback)(RKLLMResult*, void*, LLMCallState): rkllm.h 1.1.x, 1.2.0 */
typedef void (*void_callback_t)(void *, void *, int);
static const void_callback_t void_callbacks[HANDOFF_SLOTS] = {
    void_callback_0, void_callback_1, void_callback_2, void_callback_3, void_callback_4,
    void_callback_5, void_callback_6, void_callback_7, void_callback_8, void_callback_9,
    void_callback_10, void_callback_11, void_callback_12, void_callback_13, void_callback_14,
    void_callback_15,
};

/* A free slot for one session, or -1 when all are taken. */
int rkmq_handoff_open(size_t text_offset, size_t perf_offset, size_t perf_size) {
    int found = -1;
    pthread_mutex_lock(&table_mu);
    for (int i = 0; i < HANDOFF_SLOTS && found < 0; i++) {
        if (slots[i].in_use) continue;
        slot_t *s = &slots[i];
        memset(s, 0, sizeof *s);
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_mutex_init(&s->mu, NULL);
        pthread_cond_init(&s->cv, &attr);
        pthread_condattr_destroy(&attr);
        s->text_offset = text_offset, s->perf_offset = perf_offset, s->perf_size = perf_size;
        s->in_use = 1;
        found = i;
    }
    pthread_mutex_unlock(&table_mu);
    return found;
}

/* The slot's callback, to give rkllm_init: the one returning int, or the void one. */
void *rkmq_handoff_callback(int slot, int returns_int) {
    if (slot < 0 || slot >= HANDOFF_SLOTS) return NULL;
    return returns_int ? (void *)callbacks[slot] : (void *)void_callbacks[slot];
}

/* A marker from the caller's side, after everything before it; it wakes the reader. */
int rkmq_handoff_push(int slot, int32_t state) {
    if (slot < 0 || slot >= HANDOFF_SLOTS || !slots[slot].in_use || state >= 0) return -1;
    return append(&slots[slot], state, NULL, 0, now_ns(), 1);
}

static struct timespec at(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    return ts;
}

/* Wait until there is at least one entry, then move as many whole entries as fit into `out`.
 * While a token is due (see the top) the wait looks every POLL_NS; otherwise it sleeps until the
 * next token is due, or until the callback or a marker wakes it.
 * Returns the bytes moved; -(bytes needed) when the first entry alone is larger than `cap`;
 * -1 for a slot that is not open. */
long rkmq_handoff_read(int slot, unsigned char *out, size_t cap) {
    if (slot < 0 || slot >= HANDOFF_SLOTS || !slots[slot].in_use) return -1;
    slot_t *s = &slots[slot];
    static __thread int slack_set;
    if (!slack_set) slack_set = 1, prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    pthread_mutex_lock(&s->mu);
    while (s->used == 0) {
        int64_t now = now_ns(), due = s->last_ns + s->interval_ns;
        int64_t window = s->interval_ns / 8 > MIN_WINDOW_NS ? s->interval_ns / 8 : MIN_WINDOW_NS;
        int known = s->running && s->last_ns && s->interval_ns > 0;
        s->reader_waiting = 1;
        if (known && now >= due - window && now <= due + 2 * window) {
            struct timespec until = at(now + POLL_NS);  /* due: look again soon */
            pthread_cond_timedwait(&s->cv, &s->mu, &until);
        } else if (known && now < due - window) {
            struct timespec until = at(due - window);  /* not yet due: sleep until it is */
            s->reader_asleep = 1;
            pthread_cond_timedwait(&s->cv, &s->mu, &until);
        } else {  /* no run, no pace yet, or the token is late: sleep until woken */
            s->reader_asleep = 1;
            pthread_cond_wait(&s->cv, &s->mu);
        }
        s->reader_waiting = s->reader_asleep = 0;
    }
    size_t moved = 0;
    while (moved < s->used) {
        entry_t head;
        memcpy(&head, s->buf + moved, sizeof head);
        size_t size = sizeof head + padded(head.len);
        if (moved + size > cap) break;
        moved += size;
    }
    long result;
    if (moved == 0) {
        entry_t head;
        memcpy(&head, s->buf, sizeof head);
        result = -(long)(sizeof head + padded(head.len));
    } else {
        memcpy(out, s->buf, moved);
        memmove(s->buf, s->buf + moved, s->used - moved);
        s->used -= moved;
        result = (long)moved;
    }
    pthread_mutex_unlock(&s->mu);
    return result;
}

/* Free the slot; only once no callback and no reader can use it any more. */
void rkmq_handoff_close(int slot) {
    if (slot < 0 || slot >= HANDOFF_SLOTS) return;
    pthread_mutex_lock(&table_mu);
    slot_t *s = &slots[slot];
    if (s->in_use) {
        free(s->buf);
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        memset(s, 0, sizeof *s);
    }
    pthread_mutex_unlock(&table_mu);
}
