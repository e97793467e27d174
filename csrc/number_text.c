/* number_text.c - numbers as checkpoint metadata text: floats as "%.9g" (exact for every float) with
 * '.' whatever the locale, counts as plain decimal, digests as lowercase hex. */
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "number_text.h"

void fadam_format_float(float value, char out[FADAM_FLOAT_TEXT_MAX]) {
    const char *point = localeconv()->decimal_point;
    char raw[48];
    size_t i, j, point_length = point && point[0] ? strlen(point) : 1;
    if (value != value || value - value != 0.0f) { /* NaN, inf */
        snprintf(out, 48, "%s", value != value ? "nan" : value > 0 ? "inf" : "-inf");
        return;
    }
    snprintf(raw, sizeof raw, "%.9g", (double)value);
    for (i = j = 0; raw[i] && j + 1 < 48;) {
        if (point && point[0] && strncmp(raw + i, point, point_length) == 0) {
            out[j++] = '.';
            i += point_length;
        } else {
            out[j++] = raw[i++];
        }
    }
    out[j] = '\0';
}

/* Accepts -?digits(.digits)?([eE][+-]?digits)? that is a finite float: rounding is fine, but a
 * value that overflows to Inf or a nonzero one that underflows to 0 is refused (*why says which). */
int fadam_parse_float(const char *text, float *out, const char **why) {
    const char *point = localeconv()->decimal_point, *s = text;
    char localized[96], *end = NULL;
    size_t i, j;
    int nonzero_digit = 0;
    float value;
    *why = "not a finite number";
    if (strlen(text) > 64) return 0;
    if (*s == '-') s++;
    if (*s < '0' || *s > '9') return 0;
    for (; *s >= '0' && *s <= '9'; s++) nonzero_digit |= *s != '0';
    if (*s == '.') {
        s++;
        if (*s < '0' || *s > '9') return 0;
        for (; *s >= '0' && *s <= '9'; s++) nonzero_digit |= *s != '0';
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') s++;
        if (*s < '0' || *s > '9') return 0;
        while (*s >= '0' && *s <= '9') s++;
    }
    if (*s) return 0;
    for (i = j = 0; text[i] && j + 8 < sizeof localized; i++) {
        if (text[i] == '.' && point && point[0]) {
            size_t k;
            for (k = 0; point[k] && j + 1 < sizeof localized; k++) localized[j++] = point[k];
        } else {
            localized[j++] = text[i];
        }
    }
    localized[j] = '\0';
    value = strtof(localized, &end);
    if (!end || *end) return 0;
    if (!fadam_is_finite(value)) {
        *why = "out of the float range: it overflows to infinity";
        return 0;
    }
    /* errno is no guide: ERANGE also comes with nonzero subnormal results, which are fine. */
    if (value == 0.0f && nonzero_digit) {
        *why = "out of the float range: a nonzero number that underflows to 0";
        return 0;
    }
    *out = value;
    return 1;
}

/* fadam_parse_float, and "nan", "inf", "-inf" (the fused step's logged values). */
int fadam_parse_any_float(const char *text, float *out) {
    const char *why;
    if (strcmp(text, "nan") == 0)
        *out = __builtin_nanf("");
    else if (strcmp(text, "inf") == 0)
        *out = __builtin_inff();
    else if (strcmp(text, "-inf") == 0)
        *out = -__builtin_inff();
    else
        return fadam_parse_float(text, out, &why);
    return 1;
}

/* A decimal integer in [0, INT64_MAX], digits only, no leading zeros. */
int fadam_parse_count(const char *text, int64_t *out) {
    uint64_t value = 0;
    const char *s = text;
    if (*s < '0' || *s > '9' || (s[0] == '0' && s[1])) return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return 0;
        if (value > ((uint64_t)INT64_MAX - (uint64_t)(*s - '0')) / 10) return 0;
        value = value * 10 + (uint64_t)(*s - '0');
    }
    *out = (int64_t)value;
    return 1;
}

int fadam_hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void fadam_hex_encode(const unsigned char *bytes_in, size_t bytes, char *hex) {
    static const char digits[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < bytes; i++) {
        hex[2 * i] = digits[bytes_in[i] >> 4];
        hex[2 * i + 1] = digits[bytes_in[i] & 15];
    }
    hex[2 * bytes] = '\0';
}
