package main

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Keys, paths and error messages come from other users: a key may hold
// any byte but '/' and NUL, so printing one raw lets its creator send
// escape sequences to whoever runs shmctl (set the terminal's title, clear
// the screen, forge lines with a newline). Every string that shmctl prints
// for a human goes through esc or escText; JSON output is escaped by
// encoding/json (and carries the raw bytes of invalid UTF-8 keys in
// key_hex).

// esc escapes s for printing as one word: control bytes and other runes
// that are not printable (C0, DEL, C1, format characters such as the
// bidirectional overrides, non-ASCII spaces, unassigned code points) as \xHH,
// \uHHHH or \UHHHHHHHH, the usual \n, \r and \t, bytes that are not valid
// UTF-8 as \xHH, and the backslash itself as \\, so that the printed form is
// unambiguous. Printable text, including non-ASCII letters, is left as it is.
func esc(s string) string { return escape(s, true, false) }

// escCell is esc for a column of a table, where a space would split the
// cell: it also escapes spaces, as \x20.
func escCell(s string) string { return escape(s, true, true) }

// escText escapes free text (error messages, reasons) as esc does, but
// leaves backslashes alone: such text often quotes keys already, with Go's
// %q.
func escText(s string) string { return escape(s, false, false) }

func escape(s string, backslash, space bool) string {
	if !needsEscape(s, backslash, space) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\' && backslash:
			b.WriteString(`\\`)
		case r == ' ' && space:
			b.WriteString(`\x20`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80 && !printable(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case !printable(r) && r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		case !printable(r):
			fmt.Fprintf(&b, `\U%08x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func needsEscape(s string, backslash, space bool) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f || c == '\\' && backslash || c == ' ' && space {
				return true
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 || !printable(r) {
			return true
		}
		i += n
	}
	return false
}

// printable reports whether r may reach a terminal as it is: letters,
// marks, numbers, punctuation, symbols and the ASCII space (unicode.IsPrint),
// which excludes controls (C0, DEL, C1), format characters (U+200B..U+200F,
// U+202A..U+202E, U+2066..U+2069, U+FEFF), other spaces, private use and
// unassigned code points.
func printable(r rune) bool { return unicode.IsPrint(r) }

// escLines escapes each line of a message (errLines' output).
func escLines(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = escText(l)
	}
	return out
}
