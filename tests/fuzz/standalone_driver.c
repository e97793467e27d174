/* standalone_driver.c - main() for a fuzz target where libFuzzer is absent (no clang with
 * -fsanitize=fuzzer): it does not fuzz, it replays every file of the directories (or files) given,
 * once each, plus the empty input, each from an exactly sized heap copy so ASan sees a read past its
 * end. Takes libFuzzer's command line and ignores its flags. Prints "replayed N inputs (standalone
 * driver, no fuzzing)", which tests/fuzz/run_fuzz.sh reports as a skip of the fuzzing. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static long replayed;

static void run_one(const uint8_t *bytes, size_t size) {
    uint8_t *copy = (uint8_t *)malloc(size ? size : 1);
    if (!copy) abort();
    if (size) memcpy(copy, bytes, size);
    LLVMFuzzerTestOneInput(copy, size);
    free(copy);
    replayed++;
}

static void replay_file(const char *path) {
    FILE *file = fopen(path, "rb");
    long length;
    if (!file) return;
    if (fseek(file, 0, SEEK_END) == 0 && (length = ftell(file)) >= 0 && fseek(file, 0, SEEK_SET) == 0) {
        uint8_t *bytes = (uint8_t *)malloc((size_t)length + 1);
        if (bytes && fread(bytes, 1, (size_t)length, file) == (size_t)length) run_one(bytes, (size_t)length);
        free(bytes);
    }
    fclose(file);
}

static void replay_path(const char *path) {
    struct stat info;
    DIR *directory;
    struct dirent *item;
    if (stat(path, &info) != 0) return;
    if (!S_ISDIR(info.st_mode)) {
        replay_file(path);
        return;
    }
    if (!(directory = opendir(path))) return;
    while ((item = readdir(directory)) != NULL) {
        char child[4096];
        if (item->d_name[0] == '.') continue;
        snprintf(child, sizeof child, "%s/%s", path, item->d_name);
        if (stat(child, &info) == 0 && S_ISREG(info.st_mode)) replay_file(child);
    }
    closedir(directory);
}

int main(int argc, char **argv) {
    int a;
    run_one((const uint8_t *)"", 0);
    for (a = 1; a < argc; a++)
        if (argv[a][0] != '-') replay_path(argv[a]);
    printf("replayed %ld inputs (standalone driver, no fuzzing)\n", replayed);
    return 0;
}
