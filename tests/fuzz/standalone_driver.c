/* standalone_driver.c - main() for fuzz_checkpoint_load.c where libFuzzer is missing (no clang):
 * replays every file of the directories given, then mutates them at random (bit flips, interesting
 * bytes, cut, insert, copy, splice, header-length edits) until -max_total_time=S seconds have
 * passed. Built with ASan/UBSan, so a memory error stops it. Takes libFuzzer's flags it knows
 * (-max_total_time=, -seed=, -runs=, -max_len=) and ignores the others. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct input {
    uint8_t *bytes;
    size_t size;
} input;

static input *inputs;
static size_t n_inputs, inputs_capacity;
static uint64_t rng_state;

static uint64_t next_random(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t below(size_t n) { return n ? (size_t)(next_random() % n) : 0; }

static void add_file(const char *path) {
    FILE *file = fopen(path, "rb");
    long length;
    if (!file) return;
    if (fseek(file, 0, SEEK_END) == 0 && (length = ftell(file)) >= 0 && fseek(file, 0, SEEK_SET) == 0) {
        uint8_t *bytes = (uint8_t *)malloc((size_t)length + 1);
        if (bytes && fread(bytes, 1, (size_t)length, file) == (size_t)length) {
            if (n_inputs == inputs_capacity) {
                inputs_capacity = inputs_capacity ? 2 * inputs_capacity : 64;
                inputs = (input *)realloc(inputs, inputs_capacity * sizeof *inputs);
                if (!inputs) abort();
            }
            inputs[n_inputs].bytes = bytes;
            inputs[n_inputs].size = (size_t)length;
            n_inputs++;
        } else {
            free(bytes);
        }
    }
    fclose(file);
}

static void add_path(const char *path) {
    struct stat info;
    DIR *directory;
    struct dirent *item;
    if (stat(path, &info) != 0) return;
    if (!S_ISDIR(info.st_mode)) {
        add_file(path);
        return;
    }
    if (!(directory = opendir(path))) return;
    while ((item = readdir(directory)) != NULL) {
        char child[4096];
        if (item->d_name[0] == '.') continue;
        snprintf(child, sizeof child, "%s/%s", path, item->d_name);
        if (stat(child, &info) == 0 && S_ISREG(info.st_mode)) add_file(child);
    }
    closedir(directory);
}

/* Runs one input from an exactly sized heap copy, so ASan sees any read past its end. */
static void run_one(const uint8_t *bytes, size_t size) {
    uint8_t *copy = (uint8_t *)malloc(size ? size : 1);
    if (!copy) abort();
    if (size) memcpy(copy, bytes, size);
    LLVMFuzzerTestOneInput(copy, size);
    free(copy);
}

static const uint8_t interesting[] = {0, 1, 0x7F, 0x80, 0xFF, '"', '\\', '{', '}', '[', ']', ',', ':',
                                      '-', '0', '9', 'e', '.', ' ', 'u', 0xC3, 0xED, 0xF4};

static size_t mutate(uint8_t *buffer, size_t size, size_t max_size) {
    int rounds = 1 + (int)below(6), r;
    for (r = 0; r < rounds; r++) {
        switch (below(9)) {
        case 0: /* flip one bit */
            if (size) buffer[below(size)] ^= (uint8_t)(1u << below(8));
            break;
        case 1: /* an interesting byte */
            if (size) buffer[below(size)] = interesting[below(sizeof interesting)];
            break;
        case 2: /* cut the tail */
            size = below(size + 1);
            break;
        case 3: { /* erase a range */
            size_t at = below(size + 1), count = below(size - at + 1) % 64;
            memmove(buffer + at, buffer + at + count, size - at - count);
            size -= count;
            break;
        }
        case 4: { /* insert random bytes */
            size_t at = below(size + 1), count = 1 + below(16), i;
            if (size + count > max_size) break;
            memmove(buffer + at + count, buffer + at, size - at);
            for (i = 0; i < count; i++) buffer[at + i] = (uint8_t)next_random();
            size += count;
            break;
        }
        case 5: { /* copy a range over another */
            size_t from = below(size + 1), to = below(size + 1), count = below(64);
            if (from + count > size) count = size - from;
            if (to + count > size) count = size - to;
            memmove(buffer + to, buffer + from, count);
            break;
        }
        case 6: { /* splice the tail of another input */
            const input *other = &inputs[below(n_inputs)];
            size_t at = below(size + 1), from = below(other->size + 1), count = other->size - from;
            if (at + count > max_size) count = max_size - at;
            memcpy(buffer + at, other->bytes + from, count);
            size = at + count;
            break;
        }
        case 7: { /* a new header length: near the old one, or anything */
            uint64_t length = 0;
            int i;
            if (size < 8) break;
            for (i = 7; i >= 0; i--) length = length << 8 | buffer[i];
            length = below(2) ? length + (uint64_t)(int64_t)((int)below(17) - 8) : next_random() >> below(64);
            for (i = 0; i < 8; i++) buffer[i] = (uint8_t)(length >> (8 * i));
            break;
        }
        default: { /* a digit run replaced by a large or odd number */
            static const char *numbers[] = {"0", "1", "18446744073709551616", "9223372036854775807", "4294967296",
                                            "-1", "1e3", "01", "1.5"};
            const char *number = numbers[below(sizeof numbers / sizeof numbers[0])];
            size_t at = below(size + 1), end = at, length = strlen(number);
            while (at < size && !(buffer[at] >= '0' && buffer[at] <= '9')) at++;
            end = at;
            while (end < size && buffer[end] >= '0' && buffer[end] <= '9') end++;
            if (at >= size || size - (end - at) + length > max_size) break;
            memmove(buffer + at + length, buffer + end, size - end);
            memcpy(buffer + at, number, length);
            size = size - (end - at) + length;
            break;
        }
        }
    }
    return size;
}

int main(int argc, char **argv) {
    double seconds = 20;
    long long max_runs = -1, runs = 0;
    size_t max_len = 1 << 16, i;
    uint64_t seed = (uint64_t)time(NULL);
    uint8_t *buffer;
    struct timespec start, now;
    int a;
    for (a = 1; a < argc; a++) {
        if (strncmp(argv[a], "-max_total_time=", 16) == 0) seconds = atof(argv[a] + 16);
        else if (strncmp(argv[a], "-seed=", 6) == 0) seed = strtoull(argv[a] + 6, NULL, 0);
        else if (strncmp(argv[a], "-runs=", 6) == 0) max_runs = atoll(argv[a] + 6);
        else if (strncmp(argv[a], "-max_len=", 9) == 0) max_len = (size_t)atoll(argv[a] + 9);
        else if (argv[a][0] != '-') add_path(argv[a]);
    }
    rng_state = seed;
    printf("# standalone fuzz driver (no libFuzzer): %zu seed inputs, %.0f s, seed=%llu\n", n_inputs, seconds,
           (unsigned long long)seed);
    run_one((const uint8_t *)"", 0);
    for (i = 0; i < n_inputs; i++) {
        run_one(inputs[i].bytes, inputs[i].size);
        if (inputs[i].size > max_len) max_len = inputs[i].size;
    }
    if (n_inputs == 0) {
        static uint8_t empty_object[] = {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
        inputs = (input *)malloc(sizeof *inputs);
        if (!inputs) abort();
        inputs[0].bytes = empty_object;
        inputs[0].size = sizeof empty_object;
        n_inputs = 1;
    }
    buffer = (uint8_t *)malloc(max_len + 64);
    if (!buffer) abort();
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        const input *base = &inputs[below(n_inputs)];
        size_t size = base->size;
        memcpy(buffer, base->bytes, size);
        size = mutate(buffer, size, max_len);
        run_one(buffer, size);
        runs++;
        if (max_runs >= 0 && runs >= max_runs) break;
        if (runs % 64 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((double)(now.tv_sec - start.tv_sec) + 1e-9 * (double)(now.tv_nsec - start.tv_nsec) >= seconds) break;
        }
    }
    printf("Done %lld runs (standalone driver)\n", runs);
    free(buffer);
    return 0;
}
