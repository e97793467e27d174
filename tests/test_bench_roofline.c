/* test_bench_roofline.c - the GPU bench's bytes per element (bench/roofline.h) against the list in
 * kernels/adam_step.cu's opening comment, which is where they are derived: every row of the table is
 * a line of the comment with the same numbers, every line "NAME:  R + W = T B" of the comment's lists
 * has a row and adds up, and the precisions every bench shares (bench/model_shapes.h) use the same
 * numbers. No random inputs. Usage: test_bench_roofline [path of adam_step.cu] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../bench/model_shapes.h"
#include "../bench/roofline.h"
#include "check.h"

#define MAX_LINES 64

typedef struct comment_line {
    char section[8];
    char layout[128];
    int read, write, total, scales;
    int used; /* a row names it */
} comment_line;

/* The text after " * " of a comment line, with trailing spaces removed. */
static char *comment_text(char *line) {
    char *end;
    while (*line == ' ' || *line == '\t' || *line == '/' || *line == '*') line++;
    end = line + strlen(line);
    while (end > line && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ')) *--end = '\0';
    return line;
}

/* Parses "NAME:  R + W = T B [(+ 16/256)]..." into *out; 0 when the line is not of that form. */
static int parse_bytes_line(const char *text, comment_line *out) {
    const char *colon = strchr(text, ':'), *rest;
    int consumed = 0;
    size_t length;
    if (!colon) return 0;
    if (sscanf(colon + 1, " %d + %d = %d B%n", &out->read, &out->write, &out->total, &consumed) != 3 || !consumed)
        return 0;
    rest = colon + 1 + consumed;
    if (*rest != '\0' && *rest != ' ') return 0; /* "20-22 B" and the like */
    while (*rest == ' ') rest++;
    out->scales = strncmp(rest, "(+ 16/256)", 10) == 0;
    length = (size_t)(colon - text);
    if (length >= sizeof out->layout) length = sizeof out->layout - 1;
    memcpy(out->layout, text, length);
    out->layout[length] = '\0';
    return 1;
}

/* The byte lists of the file's opening comment (up to its first "*" "/"), by section. */
static int read_comment(const char *path, comment_line *lines, int *n_lines) {
    char buffer[512];
    char section[8] = "";
    FILE *file = fopen(path, "r");
    *n_lines = 0;
    if (!file) return 0;
    while (fgets(buffer, sizeof buffer, file)) {
        int ends = strstr(buffer, "*/") != NULL;
        char *text = comment_text(buffer);
        comment_line parsed;
        if (strncmp(text, "Bytes moved per element", 23) == 0) snprintf(section, sizeof section, "Adam");
        else if (strncmp(text, "Lean layouts", 12) == 0) snprintf(section, sizeof section, "Lean");
        else if (strncmp(text, "Lion (", 6) == 0) snprintf(section, sizeof section, "Lion");
        else if (section[0] && parse_bytes_line(text, &parsed) && *n_lines < MAX_LINES) {
            snprintf(parsed.section, sizeof parsed.section, "%s", section);
            parsed.used = 0;
            lines[(*n_lines)++] = parsed;
        }
        if (ends) break;
    }
    fclose(file);
    return 1;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "kernels/adam_step.cu";
    comment_line lines[MAX_LINES];
    int n_lines = 0, r, k;
    printf("# test_bench_roofline: no random inputs (reads %s)\n", path);

    check_case_begin();
    CHECK(read_comment(path, lines, &n_lines), "cannot read %s", path);
    CHECK(n_lines > 0, "no line 'NAME:  R + W = T B' in the opening comment of %s", path);
    for (r = 0; r < BENCH_N_ROOFLINE; r++) {
        const bench_roofline_row *row = &bench_roofline[r];
        comment_line *line = NULL;
        for (k = 0; k < n_lines && !line; k++)
            if (strcmp(lines[k].section, row->section) == 0 && strcmp(lines[k].layout, row->layout) == 0) line = &lines[k];
        CHECK(line, "%s '%s': no such line in the comment", row->section, row->layout);
        if (!line) continue;
        line->used = 1;
        CHECK(line->read == row->read && line->write == row->write && line->scales == row->scales,
              "%s '%s': the comment says %d + %d%s, bench/roofline.h %d + %d%s", row->section, row->layout, line->read,
              line->write, line->scales ? " (+ 16/256)" : "", row->read, row->write, row->scales ? " (+ 16/256)" : "");
    }
    check_case_end("bench_roofline_rows_match_kernel_comment");

    check_case_begin();
    CHECK(n_lines > 0, "no byte lines read from %s", path);
    for (k = 0; k < n_lines; k++) {
        CHECK(lines[k].read + lines[k].write == lines[k].total, "%.8s '%.120s': %d + %d is not %d", lines[k].section,
              lines[k].layout, lines[k].read, lines[k].write, lines[k].total);
        CHECK(lines[k].used, "%.8s '%.120s' (%d B) has no row in bench/roofline.h", lines[k].section, lines[k].layout,
              lines[k].total);
    }
    check_case_end("kernel_comment_byte_lines_add_up_and_have_rows");

    check_case_begin();
    {
        static const int rows[BENCH_N_PRECISIONS] = {BENCH_ROOF_FP32, BENCH_ROOF_BF16_MASTER,
                                                     BENCH_ROOF_BF16_MASTER_FP32_GRAD};
        for (k = 0; k < BENCH_N_PRECISIONS; k++)
            CHECK((double)bench_precisions[k].bytes_per_element == bench_roofline_bytes(rows[k]),
                  "precision '%s': %d B, its roofline row '%s' %g B", bench_precisions[k].label,
                  bench_precisions[k].bytes_per_element, bench_roofline[rows[k]].layout, bench_roofline_bytes(rows[k]));
    }
    check_case_end("bench_precisions_use_the_roofline_bytes");
    return check_failures_total ? 1 : 0;
}
