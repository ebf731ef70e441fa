package readers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// jsonScanner streams a large JSON document one value at a time, faster than
// encoding/json's Decoder for the COCO instances file, whose bulk
// (segmentation polygons) nobody reads: a value is delimited by matching
// brackets and strings (structure is checked, the grammar of skipped
// values is not), and only the fields a reader wants are decoded, with
// strict JSON rules. Memory holds one buffer and the current value.
type jsonScanner struct {
	r        io.Reader
	buf      []byte
	pos, end int
	off      int64 // bytes consumed before buf[0]
	err      error // sticky read error
	val      []byte
	maxValue int
}

// errJSON marks malformed JSON found by the scanner.
var errJSON = errors.New("malformed JSON")

// errTooLarge marks a kept value over the scanner's limit.
var errTooLarge = errors.New("a value too large to keep")

func newJSONScanner(r io.Reader) *jsonScanner {
	return &jsonScanner{r: r, buf: make([]byte, 1<<20), maxValue: 256 << 20}
}

func (s *jsonScanner) syntax(format string, args ...any) error {
	return fmt.Errorf("%w at byte %d: %s", errJSON, s.off+int64(s.pos), fmt.Sprintf(format, args...))
}

// fill reads more input after buf[pos:end], moving unread bytes to the front.
func (s *jsonScanner) fill() bool {
	if s.err != nil {
		return false
	}
	if s.pos > 0 {
		n := copy(s.buf, s.buf[s.pos:s.end])
		s.off += int64(s.pos)
		s.pos, s.end = 0, n
	}
	for s.end < len(s.buf) {
		n, err := s.r.Read(s.buf[s.end:])
		s.end += n
		if err != nil {
			s.err = err
			return n > 0
		}
		if n > 0 {
			return true
		}
	}
	return true
}

func (s *jsonScanner) eof() error {
	if s.err != nil && !errors.Is(s.err, io.EOF) {
		return s.err
	}
	return s.syntax("unexpected end of input")
}

// peek skips whitespace and returns the next byte without consuming it.
func (s *jsonScanner) peek() (byte, error) {
	for {
		for s.pos < s.end {
			switch c := s.buf[s.pos]; c {
			case ' ', '\t', '\n', '\r':
				s.pos++
			default:
				return c, nil
			}
		}
		if !s.fill() {
			return 0, s.eof()
		}
	}
}

// expect consumes the next non-space byte, which must be c.
func (s *jsonScanner) expect(c byte) error {
	got, err := s.peek()
	if err != nil {
		return err
	}
	if got != c {
		return s.syntax("want %q, got %q", c, got)
	}
	s.pos++
	return nil
}

// atEOF reports whether only whitespace remains.
func (s *jsonScanner) atEOF() bool {
	_, err := s.peek()
	return err != nil && s.err != nil && errors.Is(s.err, io.EOF)
}

// structural marks the bytes that end a scalar; nesting marks the only
// bytes that matter inside a container (numbers, commas and spaces, the
// bulk of a polygon, are jumped over).
var structural, nesting = func() (s, n [256]bool) {
	for _, c := range []byte("\"[]{},: \t\r\n") {
		s[c] = true
	}
	for _, c := range []byte(`"[]{}`) {
		n[c] = true
	}
	return s, n
}()

// value consumes one JSON value and returns its bytes (valid until the next
// call on s: they may alias the read buffer); with discard it keeps nothing
// and returns nil.
func (s *jsonScanner) value(discard bool) ([]byte, error) {
	c, err := s.peek()
	if err != nil {
		return nil, err
	}
	switch c {
	case '}', ']', ',', ':':
		return nil, s.syntax("unexpected %q", c)
	}
	s.val = s.val[:0]
	start := s.pos
	keep := func() error {
		if !discard {
			if len(s.val)+s.pos-start > s.maxValue {
				return fmt.Errorf("%w: the value at byte %d is larger than %d bytes (the limit for one field that is read, not skipped; readers.Options.MaxValue)", errTooLarge, s.off+int64(start)-int64(len(s.val)), s.maxValue)
			}
			if need := len(s.val) + s.pos - start; need > cap(s.val) {
				// Double (append grows large slices by a quarter, leaving
				// several dead copies of a big value for the collector).
				grown := make([]byte, len(s.val), min(max(2*cap(s.val), need, 4096), s.maxValue))
				copy(grown, s.val)
				s.val = grown
			}
			s.val = append(s.val, s.buf[start:s.pos]...)
		}
		return nil
	}
	scalar := c != '{' && c != '[' && c != '"'
	depth := 0
	inString, escaped := false, false
	if !scalar {
		s.pos++
		if c == '"' {
			inString = true
		} else {
			depth = 1
		}
	}
loop:
	for {
		if s.pos >= s.end {
			if err := keep(); err != nil {
				return nil, err
			}
			ok := s.fill()
			start = s.pos
			if !ok {
				if scalar {
					break loop // a scalar may end the input
				}
				return nil, s.eof()
			}
			continue
		}
		switch {
		case inString:
			if escaped {
				s.pos++ // the escaped byte, whatever it is
				escaped = false
				continue
			}
			i := bytes.IndexAny(s.buf[s.pos:s.end], "\"\\")
			if i < 0 {
				s.pos = s.end
				continue
			}
			s.pos += i + 1
			if s.buf[s.pos-1] == '\\' {
				escaped = true
				continue
			}
			inString = false
			if depth == 0 {
				break loop
			}
		case scalar:
			for s.pos < s.end && !structural[s.buf[s.pos]] {
				s.pos++
			}
			if s.pos < s.end {
				break loop
			}
		default:
			// Inside a container: jump over bytes that cannot change the structure.
			for s.pos < s.end && !nesting[s.buf[s.pos]] {
				s.pos++
			}
			if s.pos >= s.end {
				continue
			}
			switch s.buf[s.pos] {
			case '"':
				inString = true
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			s.pos++
			if depth == 0 {
				break loop
			}
		}
	}
	if discard {
		return nil, nil
	}
	if len(s.val) == 0 {
		return s.buf[start:s.pos], nil // the whole value is in the buffer: no copy
	}
	if err := keep(); err != nil {
		return nil, err
	}
	return s.val, nil
}

// object walks a JSON object, calling fn with each key; fn must consume the value.
func (s *jsonScanner) object(fn func(key string) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if c, err := s.peek(); err != nil {
		return err
	} else if c == '}' {
		s.pos++
		return nil
	}
	for {
		raw, err := s.value(false)
		if err != nil {
			return err
		}
		key, err := jsonKey(raw)
		if err != nil {
			return s.syntax("object key: %v", err)
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := fn(key); err != nil {
			return err
		}
		c, err := s.peek()
		if err != nil {
			return err
		}
		s.pos++
		switch c {
		case ',':
		case '}':
			return nil
		default:
			return s.syntax("want ',' or '}', got %q", c)
		}
	}
}

// array walks a JSON array, calling fn for each element; fn must consume it.
func (s *jsonScanner) array(fn func(i int) error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	if c, err := s.peek(); err != nil {
		return err
	} else if c == ']' {
		s.pos++
		return nil
	}
	for i := 0; ; i++ {
		if err := fn(i); err != nil {
			return err
		}
		c, err := s.peek()
		if err != nil {
			return err
		}
		s.pos++
		switch c {
		case ',':
		case ']':
			return nil
		default:
			return s.syntax("want ',' or ']', got %q", c)
		}
	}
}

// jsonString decodes a JSON string value (strict), without reflection when
// it has no escapes.
func jsonString(raw []byte) (string, error) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", fmt.Errorf("%.40q is not a JSON string", raw)
	}
	return jsonKey(raw)
}

// jsonKey decodes a JSON string, taking the fast path when it has no escapes.
func jsonKey(raw []byte) (string, error) {
	if len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' && plainString(raw[1:len(raw)-1]) {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	return s, nil
}

// objectKeys walks a JSON object like object, but hands fn the key as a
// small integer chosen by keyOf from the raw key bytes (quotes included),
// so that no key string is allocated; keyOf runs before the buffer moves.
func (s *jsonScanner) objectKeys(keyOf func(raw []byte) int, fn func(key int) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if c, err := s.peek(); err != nil {
		return err
	} else if c == '}' {
		s.pos++
		return nil
	}
	for {
		c, err := s.peek()
		if err != nil {
			return err
		}
		if c != '"' {
			return s.syntax("object key must be a string, got %q", c)
		}
		raw, err := s.value(false)
		if err != nil {
			return err
		}
		key := keyOf(raw)
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := fn(key); err != nil {
			return err
		}
		c, err = s.peek()
		if err != nil {
			return err
		}
		s.pos++
		switch c {
		case ',':
		case '}':
			return nil
		default:
			return s.syntax("want ',' or '}', got %q", c)
		}
	}
}

// jsonNumber parses a JSON number with JSON's grammar (no NaN, Inf, hex,
// leading '+', or leading zeros).
func jsonNumber(b []byte) (float64, bool) {
	i, n := 0, len(b)
	if i < n && b[i] == '-' {
		i++
	}
	switch {
	case i < n && b[i] == '0':
		i++
	case i < n && b[i] >= '1' && b[i] <= '9':
		for i < n && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return 0, false
	}
	if i < n && b[i] == '.' {
		i++
		if i >= n || b[i] < '0' || b[i] > '9' {
			return 0, false
		}
		for i < n && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < n && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < n && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= n || b[i] < '0' || b[i] > '9' {
			return 0, false
		}
		for i < n && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i != n {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return 0, false // out of range
	}
	return v, true
}

// jsonNumbers parses a flat JSON array of numbers.
func jsonNumbers(b []byte, into []float64) ([]float64, bool) {
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return nil, false
	}
	inner := bytes.TrimSpace(b[1 : len(b)-1])
	into = into[:0]
	if len(inner) == 0 {
		return into, true
	}
	for len(inner) > 0 {
		var part []byte
		if i := bytes.IndexByte(inner, ','); i >= 0 {
			part, inner = inner[:i], inner[i+1:]
			if len(bytes.TrimSpace(inner)) == 0 {
				return nil, false // trailing comma
			}
		} else {
			part, inner = inner, nil
		}
		v, ok := jsonNumber(bytes.TrimSpace(part))
		if !ok {
			return nil, false
		}
		into = append(into, v)
	}
	return into, true
}

// jsonID decodes an id written as a number or a string (see flexID).
func jsonID(b []byte) (string, error) {
	if n := len(b); n > 0 && n <= 18 && (b[0] != '0' || n == 1) {
		digits := true
		for _, c := range b {
			digits = digits && c >= '0' && c <= '9'
		}
		if digits {
			return string(b), nil // the common case: a plain integer
		}
	}
	var f flexID
	if len(b) > 0 && b[0] != '"' && b[0] != 'n' {
		if _, ok := jsonNumber(b); !ok {
			return "", fmt.Errorf("id %.40q is not a JSON number or string", b)
		}
	}
	if err := f.UnmarshalJSON(b); err != nil {
		return "", err
	}
	return string(f), nil
}

// plainString reports whether b can stand between quotes as is: no quote,
// backslash or control character, valid UTF-8 (json.Unmarshal would turn
// invalid bytes into U+FFFD, and so must we: the validator looks for it).
func plainString(b []byte) bool {
	for _, c := range b {
		if c == '"' || c == '\\' || c < 0x20 {
			return false
		}
	}
	return utf8.Valid(b)
}
