/* json_reader.h - a pull reader of JSON text (RFC 8259) for the checkpoint loader; not installed.
 *
 * The caller walks the document it expects, token by token: peek at the next character, take
 * punctuation, strings and integers, and refuse what its schema does not allow. Nothing recurses,
 * so no input can exhaust the stack; fadam_json_skip_value walks any value with a depth limit.
 * Strings are decoded into an arena the caller provides (length + 1 bytes of the text suffice: a
 * decoded string is never longer than its JSON), must be UTF-8 and may not hold NUL. Integers are
 * 0 to 2^63-1, no sign, fraction or exponent. Every error is FADAM_ERR_CORRUPT, "FUNCTION: malformed
 * header: WHAT at byte N of the JSON". */
#ifndef FADAM_JSON_READER_H
#define FADAM_JSON_READER_H

#include <stddef.h>
#include <stdint.h>

#include "fusedadam.h"

typedef struct fadam_json_reader {
    const char *text;
    size_t length, position;
    char *arena; /* decoded strings, NUL-terminated, one after the other */
    size_t arena_used;
    const char *function; /* the public call, for messages */
} fadam_json_reader;

/* Reads `length` bytes of `text` (not NUL-terminated) from the start, decoding into `arena`. */
void fadam_json_reader_init(fadam_json_reader *r, const char *text, size_t length, char *arena, const char *function);

/* The error at the current position: "malformed header: WHAT at byte N of the JSON". */
fadam_status fadam_json_error(const fadam_json_reader *r, const char *what);

/* The next character after white space, not taken; '\0' at the end. */
char fadam_json_peek(fadam_json_reader *r);
/* Takes `c` if it is next (after white space): 1, else 0 and nothing taken. */
int fadam_json_accept(fadam_json_reader *r, char c);
/* Takes `c`, or fails with `what`. */
fadam_status fadam_json_expect(fadam_json_reader *r, char c, const char *what);

/* A string, decoded into the arena; *out points at it. */
fadam_status fadam_json_string(fadam_json_reader *r, const char **out);
/* An integer in [0, 2^63-1]. */
fadam_status fadam_json_integer(fadam_json_reader *r, uint64_t *out);
/* Any value (object, array, string, number, true, false, null) nested at most `max_depth` deep,
 * checked and passed over; strings still go to the arena. Numbers follow RFC 8259's grammar. */
fadam_status fadam_json_skip_value(fadam_json_reader *r, int max_depth);
/* Only white space may follow. */
fadam_status fadam_json_end(fadam_json_reader *r);

#endif
