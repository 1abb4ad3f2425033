package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The options of a subcommand, parsed the way GNU tools parse them: long
// options as --name, --name=VALUE or --name VALUE, one-letter ones as -n,
// -nVALUE or -n VALUE and in clusters (-nv); options and positional
// arguments in any order; "--" ends the options. For compatibility with
// earlier versions (which used package flag), a long option may also be
// given with one dash (-all, -dry-run). Help shows the GNU forms only.

// opt is one option of a subcommand.
type opt struct {
	long  string
	short byte   // 0: none
	arg   string // the value's name in help; "" for a switch
	help  string
	def   string // the default to show in help; "" shows none
	set   func(string) error
}

// optSet is the options of one subcommand.
type optSet struct {
	cmd  string
	opts []*opt
	// help is set when -h or --help was given.
	help bool
	// shortHelp is false when -h means something else (ls -h: --human).
	shortHelp bool
}

func newOptSet(cmd string) *optSet { return &optSet{cmd: cmd, shortHelp: true} }

func (s *optSet) add(o *opt) *opt {
	for _, p := range s.opts {
		if p.long == o.long || o.short != 0 && p.short == o.short {
			panic("shmctl: option defined twice: " + o.long)
		}
	}
	if o.short == 'h' {
		s.shortHelp = false
	}
	s.opts = append(s.opts, o)
	return o
}

// Bool defines a switch.
func (s *optSet) Bool(long string, short byte, help string) *bool {
	v := new(bool)
	s.add(&opt{long: long, short: short, help: help, set: func(a string) error {
		if a == "" {
			*v = true
			return nil
		}
		b, err := strconv.ParseBool(a)
		if err != nil {
			return fmt.Errorf("want true or false")
		}
		*v = b
		return nil
	}})
	return v
}

// String defines an option with a value.
func (s *optSet) String(long string, short byte, arg, def, help string) *string {
	v := new(string)
	*v = def
	s.add(&opt{long: long, short: short, arg: arg, def: def, help: help, set: func(a string) error {
		*v = a
		return nil
	}})
	return v
}

// Int defines an option with an integer value.
func (s *optSet) Int(long string, short byte, arg string, def int64, showDef bool, help string) *int64 {
	v := new(int64)
	*v = def
	o := &opt{long: long, short: short, arg: arg, help: help, set: func(a string) error {
		n, err := strconv.ParseInt(a, 0, 64)
		if err != nil {
			return fmt.Errorf("want an integer")
		}
		*v = n
		return nil
	}}
	if showDef {
		o.def = strconv.FormatInt(def, 10)
	}
	s.add(o)
	return v
}

// Seconds defines an option that takes a number of seconds, as flock(1)
// and watch(1) do ("1.5"), or a Go duration ("200ms", "2m").
func (s *optSet) Seconds(long string, short byte, help string) *time.Duration {
	v := new(time.Duration)
	*v = -1
	s.add(&opt{long: long, short: short, arg: "SECONDS", help: help, set: func(a string) error {
		d, err := parseSeconds(a)
		if err != nil {
			return err
		}
		*v = d
		return nil
	}})
	return v
}

// Func defines an option whose value fn takes (repeatable).
func (s *optSet) Func(long string, short byte, arg, help string, fn func(string) error) {
	s.add(&opt{long: long, short: short, arg: arg, help: help, set: fn})
}

func parseSeconds(a string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(a, 64); err == nil {
		if f < 0 || f > 1e9 {
			return 0, fmt.Errorf("want a number of seconds from 0 to 1e9")
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(a)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("want a number of seconds (1.5) or a duration (200ms)")
	}
	return d, nil
}

func (s *optSet) long(name string) *opt {
	for _, o := range s.opts {
		if o.long == name {
			return o
		}
	}
	return nil
}

func (s *optSet) short(c byte) *opt {
	for _, o := range s.opts {
		if o.short == c {
			return o
		}
	}
	return nil
}

// parse parses args. With maxPos >= 0, the arguments after the maxPos-th
// positional one are returned in rest untouched, and so is what follows
// "--" (lock: KEY, then CMD and its arguments); otherwise arguments after
// "--" are positional, and rest is nil. s.help is set when -h or --help
// was given.
func (s *optSet) parse(args []string, maxPos int) (pos, rest []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if maxPos >= 0 && len(pos) == maxPos && a != "--" && (a == "-" || !strings.HasPrefix(a, "-")) {
			return pos, args[i:], nil
		}
		switch {
		case a == "--":
			if maxPos >= 0 {
				return pos, append([]string{}, args[i+1:]...), nil
			}
			return append(pos, args[i+1:]...), nil, nil
		case a == "-" || !strings.HasPrefix(a, "-") || negative(a) && s.short(a[1]) == nil:
			pos = append(pos, a)
			continue
		}
		next := func() (string, bool) {
			if i+1 < len(args) {
				i++
				return args[i], true
			}
			return "", false
		}
		if strings.HasPrefix(a, "--") || s.long(longName(a[1:])) != nil || a == "-help" {
			// --name[=value], or a long name with one dash.
			name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if name == "help" {
				s.help = true
				continue
			}
			o := s.long(name)
			if o == nil {
				return nil, nil, usagef("unknown option --%s", name)
			}
			if o.arg == "" {
				if err := o.set(val); err != nil {
					return nil, nil, usagef("bad value %q for --%s: %v", val, name, err)
				}
				continue
			}
			if !hasVal {
				if val, hasVal = next(); !hasVal {
					return nil, nil, usagef("option --%s needs a value (%s)", name, o.arg)
				}
			}
			if err := o.set(val); err != nil {
				return nil, nil, usagef("bad value %q for --%s: %v", val, name, err)
			}
			continue
		}
		// A cluster of one-letter options: -nv, -w5, -w 5.
		for j := 1; j < len(a); j++ {
			c := a[j]
			if c == 'h' && s.shortHelp {
				s.help = true
				continue
			}
			o := s.short(c)
			if o == nil {
				return nil, nil, usagef("unknown option -%c", c)
			}
			if o.arg == "" {
				o.set("")
				continue
			}
			val := a[j+1:]
			if val == "" {
				var ok bool
				if val, ok = next(); !ok {
					return nil, nil, usagef("option -%c needs a value (%s)", c, o.arg)
				}
			}
			if err := o.set(val); err != nil {
				return nil, nil, usagef("bad value %q for -%c: %v", val, c, err)
			}
			break
		}
	}
	return pos, nil, nil
}

// negative reports whether a is a negative number ("-12"): an argument,
// not an option, when no option is a digit (a SysV key_t may be negative).
func negative(a string) bool {
	_, err := strconv.ParseInt(a, 10, 64)
	return len(a) > 1 && err == nil
}

func longName(a string) string {
	name, _, _ := strings.Cut(a, "=")
	return name
}

// optName is how help and messages name o.
func optName(o *opt) string {
	if o.short != 0 {
		return "-" + string(o.short) + ", --" + o.long
	}
	return "    --" + o.long
}

// writeOptions prints the options of s, one a line, in the GNU style.
func (s *optSet) writeOptions(w io.Writer) {
	type line struct{ left, right string }
	var lines []line
	width := 0
	for _, o := range s.opts {
		left := optName(o)
		if o.arg != "" {
			left += " " + o.arg
		}
		right := o.help
		if o.def != "" {
			right += " (default " + o.def + ")"
		}
		lines = append(lines, line{left, right})
		width = max(width, len(left))
	}
	lines = append(lines, line{"-h, --help", "show this help"})
	if !s.shortHelp {
		lines[len(lines)-1].left = "    --help"
	}
	indent := 2 + width + 2
	for _, l := range lines {
		for i, part := range wrap(l.right, max(30, 79-indent)) {
			left := l.left
			if i > 0 {
				left = ""
			}
			fmt.Fprintf(w, "  %-*s  %s\n", width, left, part)
		}
	}
}

// wrap breaks s into lines of at most width bytes, at spaces.
func wrap(s string, width int) []string {
	var out []string
	line := ""
	for _, word := range strings.Fields(s) {
		if line != "" && len(line)+1+len(word) > width {
			out = append(out, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += word
	}
	return append(out, line)
}
