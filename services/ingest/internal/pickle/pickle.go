// Package pickle decodes Python pickles (protocols 0 to 5) into plain Go
// values without executing anything: the RefCOCO family ships its
// referring expressions as `refs(unc).p`, a pickled list of dicts written by
// Python 2, and nothing else in groundmesh speaks pickle.
//
// Values map as follows: None -> nil, bool -> bool, int -> int64 (or
// *big.Int when it does not fit), float -> float64, str/unicode -> string,
// Python 2 str (STRING, BINSTRING, SHORT_BINSTRING) -> string holding the raw
// bytes (callers check UTF-8), bytes/bytearray -> []byte, list -> *List,
// tuple -> Tuple, dict -> *Dict, set/frozenset -> *Set. Class references
// become Global and instances Object; no code is ever imported or run.
//
// The decoder is iterative (no recursion), bounds every allocation by bytes
// actually read, and returns an error (never panics) on malformed input.
package pickle

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrMalformed is wrapped by every error about the pickle stream itself.
var ErrMalformed = errors.New("malformed pickle")

// Tuple is a Python tuple.
type Tuple []any

// List is a Python list. It is a pointer type because pickles append to a
// list after it has been memoized and shared.
type List struct{ Items []any }

// Set is a Python set or frozenset.
type Set struct{ Items []any }

// Dict is a Python dict with its insertion order kept.
type Dict struct {
	Keys   []any
	Values []any
	strIdx map[string]int
	intIdx map[int64]int
}

// Global is a class or function reference (module and qualified name).
type Global struct{ Module, Name string }

// Object is an instance built by REDUCE, NEWOBJ, INST or OBJ, with the state
// BUILD set on it; nothing is constructed.
type Object struct {
	Class  any
	Args   Tuple
	Kwargs *Dict
	State  any
}

// Get returns the value stored under a string key.
func (d *Dict) Get(key string) (any, bool) {
	if d == nil || d.strIdx == nil {
		return nil, false
	}
	i, ok := d.strIdx[key]
	if !ok {
		return nil, false
	}
	return d.Values[i], true
}

// Len returns the number of entries.
func (d *Dict) Len() int {
	if d == nil {
		return 0
	}
	return len(d.Keys)
}

// Set stores value under key, replacing an equal key.
func (d *Dict) Set(key, value any) {
	switch k := key.(type) {
	case string:
		if d.strIdx == nil {
			d.strIdx = map[string]int{}
		}
		if i, ok := d.strIdx[k]; ok {
			d.Values[i] = value
			return
		}
		d.strIdx[k] = len(d.Keys)
	case int64:
		if d.intIdx == nil {
			d.intIdx = map[int64]int{}
		}
		if i, ok := d.intIdx[k]; ok {
			d.Values[i] = value
			return
		}
		d.intIdx[k] = len(d.Keys)
	default:
		for i, existing := range d.Keys {
			if scalarEqual(existing, key) {
				d.Values[i] = value
				return
			}
		}
	}
	d.Keys = append(d.Keys, key)
	d.Values = append(d.Values, value)
}

// scalarEqual compares keys that are neither strings nor ints: scalars by
// value, everything else by identity (Python would reject unhashable keys;
// we only need not to panic).
func scalarEqual(a, b any) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case float64:
		y, ok := b.(float64)
		return ok && x == y
	case *big.Int:
		y, ok := b.(*big.Int)
		return ok && x.Cmp(y) == 0
	case *List, *Dict, *Set, *Object, *Global:
		return a == b
	}
	return false
}

// Limits bound a decode. Zero fields take the defaults.
type Limits struct {
	// MaxBytes is the largest single string or bytes value (default 64 MiB).
	MaxBytes int64
	// MaxStack is the largest stack depth plus marks (default 1<<24).
	MaxStack int
	// MaxMemo is the largest memo size (default 1<<24).
	MaxMemo int
}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = 64 << 20
	}
	if l.MaxStack <= 0 {
		l.MaxStack = 1 << 24
	}
	if l.MaxMemo <= 0 {
		l.MaxMemo = 1 << 24
	}
	return l
}

// Decode reads one pickle from r and returns its value.
func Decode(r io.Reader) (any, error) { return DecodeLimits(r, Limits{}) }

// DecodeLimits is Decode with explicit limits.
func DecodeLimits(r io.Reader, lim Limits) (any, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	d := &decoder{r: br, lim: lim.withDefaults(), memo: map[int64]any{}}
	v, err := d.run()
	if err != nil {
		return nil, fmt.Errorf("decode pickle at byte %d: %w", d.pos, err)
	}
	return v, nil
}

type decoder struct {
	r     *bufio.Reader
	lim   Limits
	pos   int64
	stack []any
	marks []int
	memo  map[int64]any
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func (d *decoder) byte1() (byte, error) {
	b, err := d.r.ReadByte()
	if err != nil {
		return 0, eof(err)
	}
	d.pos++
	return b, nil
}

func eof(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return bad("unexpected end of data")
	}
	return err
}

// readN reads n bytes, growing the buffer only as data arrives so that a
// forged length cannot make us allocate more than the input holds.
func (d *decoder) readN(n int64) ([]byte, error) {
	if n < 0 || n > d.lim.MaxBytes {
		return nil, bad("length %d out of range", n)
	}
	const chunk = 64 << 10
	if n <= chunk {
		buf := make([]byte, n)
		if _, err := io.ReadFull(d.r, buf); err != nil {
			return nil, eof(err)
		}
		d.pos += n
		return buf, nil
	}
	var out bytes.Buffer
	if _, err := io.CopyN(&out, d.r, n); err != nil {
		return nil, eof(err)
	}
	d.pos += n
	return out.Bytes(), nil
}

func (d *decoder) line() ([]byte, error) {
	var out []byte
	for {
		frag, err := d.r.ReadSlice('\n')
		d.pos += int64(len(frag))
		out = append(out, frag...)
		if err == nil {
			return out[:len(out)-1], nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, eof(err)
		}
		if int64(len(out)) > d.lim.MaxBytes {
			return nil, bad("line too long")
		}
	}
}

func (d *decoder) uint(n int) (uint64, error) {
	b, err := d.readN(int64(n))
	if err != nil {
		return 0, err
	}
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v, nil
}

func (d *decoder) push(v any) error {
	if len(d.stack)+len(d.marks) >= d.lim.MaxStack {
		return bad("stack too deep")
	}
	d.stack = append(d.stack, v)
	return nil
}

func (d *decoder) pop() (any, error) {
	if len(d.stack) == 0 || (len(d.marks) > 0 && len(d.stack) <= d.marks[len(d.marks)-1]) {
		return nil, bad("stack underflow")
	}
	v := d.stack[len(d.stack)-1]
	d.stack = d.stack[:len(d.stack)-1]
	return v, nil
}

func (d *decoder) top() (any, error) {
	if len(d.stack) == 0 || (len(d.marks) > 0 && len(d.stack) <= d.marks[len(d.marks)-1]) {
		return nil, bad("stack underflow")
	}
	return d.stack[len(d.stack)-1], nil
}

// popMark returns the items pushed since the last MARK and removes them.
func (d *decoder) popMark() ([]any, error) {
	if len(d.marks) == 0 {
		return nil, bad("no mark")
	}
	m := d.marks[len(d.marks)-1]
	d.marks = d.marks[:len(d.marks)-1]
	items := append([]any(nil), d.stack[m:]...)
	d.stack = d.stack[:m]
	return items, nil
}

func (d *decoder) memoPut(idx int64) error {
	v, err := d.top()
	if err != nil {
		return err
	}
	if _, ok := d.memo[idx]; !ok && len(d.memo) >= d.lim.MaxMemo {
		return bad("memo too large")
	}
	d.memo[idx] = v
	return nil
}

func (d *decoder) memoGet(idx int64) error {
	v, ok := d.memo[idx]
	if !ok {
		return bad("memo key %d not found", idx)
	}
	return d.push(v)
}

func (d *decoder) run() (any, error) {
	for {
		op, err := d.byte1()
		if err != nil {
			return nil, err
		}
		switch op {
		case '.': // STOP
			return d.pop()
		case 0x80: // PROTO
			p, err := d.byte1()
			if err != nil {
				return nil, err
			}
			if p > 5 {
				return nil, bad("unsupported protocol %d", p)
			}
		case 0x95: // FRAME: a hint for buffering; contents follow inline
			if _, err := d.uint(8); err != nil {
				return nil, err
			}
		case '(': // MARK
			if len(d.stack)+len(d.marks) >= d.lim.MaxStack {
				return nil, bad("stack too deep")
			}
			d.marks = append(d.marks, len(d.stack))
		case '0': // POP
			if len(d.stack) > 0 && (len(d.marks) == 0 || len(d.stack) > d.marks[len(d.marks)-1]) {
				d.stack = d.stack[:len(d.stack)-1]
			} else if _, err := d.popMark(); err != nil { // POP on a mark pops the mark
				return nil, err
			}
		case '1': // POP_MARK
			if _, err := d.popMark(); err != nil {
				return nil, err
			}
		case '2': // DUP
			v, err := d.top()
			if err != nil {
				return nil, err
			}
			if err := d.push(v); err != nil {
				return nil, err
			}
		default:
			if err := d.value(op); err != nil {
				return nil, err
			}
		}
	}
}

// value handles every opcode that builds or stores a value.
func (d *decoder) value(op byte) error {
	switch op {
	case 'N':
		return d.push(nil)
	case 0x88:
		return d.push(true)
	case 0x89:
		return d.push(false)
	case 'I': // INT (text); "01"/"00" are True/False
		l, err := d.line()
		if err != nil {
			return err
		}
		s := string(l)
		switch s {
		case "01":
			return d.push(true)
		case "00":
			return d.push(false)
		}
		return d.pushIntText(s)
	case 'L': // LONG (text), trailing L optional
		l, err := d.line()
		if err != nil {
			return err
		}
		return d.pushIntText(strings.TrimSuffix(string(l), "L"))
	case 'J':
		v, err := d.uint(4)
		if err != nil {
			return err
		}
		return d.push(int64(int32(uint32(v))))
	case 'K':
		v, err := d.uint(1)
		if err != nil {
			return err
		}
		return d.push(int64(v))
	case 'M':
		v, err := d.uint(2)
		if err != nil {
			return err
		}
		return d.push(int64(v))
	case 0x8a, 0x8b: // LONG1, LONG4: little-endian two's complement
		size := 1
		if op == 0x8b {
			size = 4
		}
		n, err := d.uint(size)
		if err != nil {
			return err
		}
		b, err := d.readN(int64(n))
		if err != nil {
			return err
		}
		return d.push(decodeLong(b))
	case 'F':
		l, err := d.line()
		if err != nil {
			return err
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(string(l)), 64)
		if err != nil {
			return bad("float %q", l)
		}
		return d.push(f)
	case 'G':
		b, err := d.readN(8)
		if err != nil {
			return err
		}
		return d.push(math.Float64frombits(binary.BigEndian.Uint64(b)))
	case 'S': // STRING: Python repr, quoted
		l, err := d.line()
		if err != nil {
			return err
		}
		s, err := unquotePy(l)
		if err != nil {
			return err
		}
		return d.push(s)
	case 'T', 'U', 'X', 0x8c, 0x8d, 'B', 'C', 0x8e, 0x96:
		return d.counted(op)
	case 'V': // UNICODE: raw-unicode-escape line
		l, err := d.line()
		if err != nil {
			return err
		}
		s, err := rawUnicodeEscape(l)
		if err != nil {
			return err
		}
		return d.push(s)
	case ']':
		return d.push(&List{})
	case ')':
		return d.push(Tuple{})
	case '}':
		return d.push(&Dict{})
	case 0x8f:
		return d.push(&Set{})
	case 'l':
		items, err := d.popMark()
		if err != nil {
			return err
		}
		return d.push(&List{Items: items})
	case 't':
		items, err := d.popMark()
		if err != nil {
			return err
		}
		return d.push(Tuple(items))
	case 0x91: // FROZENSET
		items, err := d.popMark()
		if err != nil {
			return err
		}
		return d.push(&Set{Items: items})
	case 0x85, 0x86, 0x87: // TUPLE1..3
		n := int(op - 0x84)
		if len(d.stack) < n || (len(d.marks) > 0 && len(d.stack)-n < d.marks[len(d.marks)-1]) {
			return bad("stack underflow")
		}
		t := append(Tuple(nil), d.stack[len(d.stack)-n:]...)
		d.stack = d.stack[:len(d.stack)-n]
		return d.push(t)
	case 'd':
		items, err := d.popMark()
		if err != nil {
			return err
		}
		if len(items)%2 != 0 {
			return bad("odd number of dict items")
		}
		dict := &Dict{}
		for i := 0; i < len(items); i += 2 {
			dict.Set(items[i], items[i+1])
		}
		return d.push(dict)
	case 'a': // APPEND
		v, err := d.pop()
		if err != nil {
			return err
		}
		return d.appendTo([]any{v})
	case 'e': // APPENDS
		items, err := d.popMark()
		if err != nil {
			return err
		}
		return d.appendTo(items)
	case 's': // SETITEM
		v, err := d.pop()
		if err != nil {
			return err
		}
		k, err := d.pop()
		if err != nil {
			return err
		}
		return d.setItems([]any{k, v})
	case 'u': // SETITEMS
		items, err := d.popMark()
		if err != nil {
			return err
		}
		if len(items)%2 != 0 {
			return bad("odd number of dict items")
		}
		return d.setItems(items)
	case 0x90: // ADDITEMS
		items, err := d.popMark()
		if err != nil {
			return err
		}
		t, err := d.top()
		if err != nil {
			return err
		}
		s, ok := t.(*Set)
		if !ok {
			return bad("ADDITEMS to %T", t)
		}
		s.Items = append(s.Items, items...)
		return nil
	case 'p': // PUT
		l, err := d.line()
		if err != nil {
			return err
		}
		idx, err := strconv.ParseInt(string(l), 10, 64)
		if err != nil {
			return bad("memo index %q", l)
		}
		return d.memoPut(idx)
	case 'q', 'r':
		size := 1
		if op == 'r' {
			size = 4
		}
		idx, err := d.uint(size)
		if err != nil {
			return err
		}
		return d.memoPut(int64(idx))
	case 0x94: // MEMOIZE
		return d.memoPut(int64(len(d.memo)))
	case 'g':
		l, err := d.line()
		if err != nil {
			return err
		}
		idx, err := strconv.ParseInt(string(l), 10, 64)
		if err != nil {
			return bad("memo index %q", l)
		}
		return d.memoGet(idx)
	case 'h', 'j':
		size := 1
		if op == 'j' {
			size = 4
		}
		idx, err := d.uint(size)
		if err != nil {
			return err
		}
		return d.memoGet(int64(idx))
	case 'c': // GLOBAL
		mod, err := d.line()
		if err != nil {
			return err
		}
		name, err := d.line()
		if err != nil {
			return err
		}
		return d.push(&Global{Module: string(mod), Name: string(name)})
	case 0x93: // STACK_GLOBAL
		name, err := d.pop()
		if err != nil {
			return err
		}
		mod, err := d.pop()
		if err != nil {
			return err
		}
		ms, ok1 := mod.(string)
		ns, ok2 := name.(string)
		if !ok1 || !ok2 {
			return bad("STACK_GLOBAL needs two strings")
		}
		return d.push(&Global{Module: ms, Name: ns})
	case 'R': // REDUCE
		args, err := d.pop()
		if err != nil {
			return err
		}
		fn, err := d.pop()
		if err != nil {
			return err
		}
		t, ok := args.(Tuple)
		if !ok {
			return bad("REDUCE args are %T", args)
		}
		return d.push(reduce(fn, t))
	case 0x81: // NEWOBJ
		args, err := d.pop()
		if err != nil {
			return err
		}
		cls, err := d.pop()
		if err != nil {
			return err
		}
		t, ok := args.(Tuple)
		if !ok {
			return bad("NEWOBJ args are %T", args)
		}
		return d.push(reduce(cls, t))
	case 0x92: // NEWOBJ_EX
		kw, err := d.pop()
		if err != nil {
			return err
		}
		args, err := d.pop()
		if err != nil {
			return err
		}
		cls, err := d.pop()
		if err != nil {
			return err
		}
		t, ok1 := args.(Tuple)
		kd, ok2 := kw.(*Dict)
		if !ok1 || !ok2 {
			return bad("NEWOBJ_EX arguments")
		}
		return d.push(&Object{Class: cls, Args: t, Kwargs: kd})
	case 'i': // INST
		mod, err := d.line()
		if err != nil {
			return err
		}
		name, err := d.line()
		if err != nil {
			return err
		}
		items, err := d.popMark()
		if err != nil {
			return err
		}
		return d.push(&Object{Class: &Global{Module: string(mod), Name: string(name)}, Args: items})
	case 'o': // OBJ
		items, err := d.popMark()
		if err != nil {
			return err
		}
		if len(items) == 0 {
			return bad("OBJ without class")
		}
		return d.push(&Object{Class: items[0], Args: items[1:]})
	case 'b': // BUILD
		state, err := d.pop()
		if err != nil {
			return err
		}
		t, err := d.top()
		if err != nil {
			return err
		}
		switch o := t.(type) {
		case *Object:
			o.State = state
		case *Dict: // e.g. OrderedDict reduced to a Dict: state carries nothing we need
		default:
			return bad("BUILD on %T", t)
		}
		return nil
	case 'P', 'Q':
		return bad("persistent ids are not supported")
	case 0x82, 0x83, 0x84:
		return bad("extension registry codes are not supported")
	case 0x97, 0x98:
		return bad("out-of-band buffers are not supported")
	}
	return bad("unknown opcode 0x%02x", op)
}

func (d *decoder) pushIntText(s string) error {
	s = strings.TrimSpace(s)
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		return d.push(v)
	}
	b, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return bad("integer %q", s)
	}
	return d.push(b)
}

// counted handles the length-prefixed string and bytes opcodes.
func (d *decoder) counted(op byte) error {
	size := 4
	switch op {
	case 'U', 0x8c, 'C':
		size = 1
	case 0x8d, 0x8e, 0x96:
		size = 8
	}
	n, err := d.uint(size)
	if err != nil {
		return err
	}
	if op == 'T' && int32(uint32(n)) < 0 {
		return bad("negative string length")
	}
	if n > math.MaxInt64 {
		return bad("length out of range")
	}
	b, err := d.readN(int64(n))
	if err != nil {
		return err
	}
	switch op {
	case 'X', 0x8c, 0x8d: // unicode: UTF-8 (surrogatepass); invalid bytes are the caller's to report
		return d.push(string(b))
	case 'B', 'C', 0x8e, 0x96:
		return d.push(b)
	}
	return d.push(string(b)) // Python 2 str: raw bytes
}

func (d *decoder) appendTo(items []any) error {
	t, err := d.top()
	if err != nil {
		return err
	}
	switch l := t.(type) {
	case *List:
		l.Items = append(l.Items, items...)
	case *Set:
		l.Items = append(l.Items, items...)
	default:
		return bad("append to %T", t)
	}
	return nil
}

func (d *decoder) setItems(kv []any) error {
	t, err := d.top()
	if err != nil {
		return err
	}
	dict, ok := t.(*Dict)
	if !ok {
		return bad("setitem on %T", t)
	}
	for i := 0; i < len(kv); i += 2 {
		dict.Set(kv[i], kv[i+1])
	}
	return nil
}

// reduce turns the few callables that plain-data pickles use into values:
// Python 3's protocol-2 encoding of bytes, sets, and ordered dicts.
func reduce(fn any, args Tuple) any {
	if g, ok := fn.(*Global); ok {
		switch g.Module + "." + g.Name {
		case "_codecs.encode":
			if len(args) == 2 {
				s, ok1 := args[0].(string)
				enc, ok2 := args[1].(string)
				if ok1 && ok2 && (enc == "latin1" || enc == "latin-1") {
					out := make([]byte, 0, len(s))
					for _, r := range s {
						out = append(out, byte(r))
					}
					return out
				}
			}
		case "__builtin__.bytes", "builtins.bytes", "__builtin__.bytearray", "builtins.bytearray":
			if len(args) == 0 {
				return []byte{}
			}
		case "__builtin__.set", "builtins.set", "__builtin__.frozenset", "builtins.frozenset":
			if len(args) == 0 {
				return &Set{}
			}
			if l, ok := args[0].(*List); ok {
				return &Set{Items: append([]any(nil), l.Items...)}
			}
		case "collections.OrderedDict":
			return &Dict{}
		}
	}
	return &Object{Class: fn, Args: args}
}

// decodeLong decodes a little-endian two's-complement integer.
func decodeLong(b []byte) any {
	if len(b) == 0 {
		return int64(0)
	}
	if len(b) <= 8 {
		var v uint64
		for i := len(b) - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
		shift := uint(64 - 8*len(b))
		return int64(v<<shift) >> shift
	}
	be := make([]byte, len(b))
	for i := range b {
		be[len(b)-1-i] = b[i]
	}
	v := new(big.Int).SetBytes(be)
	if b[len(b)-1]&0x80 != 0 {
		v.Sub(v, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	if v.IsInt64() {
		return v.Int64()
	}
	return v
}

// unquotePy decodes a Python 2 str repr as written by protocol 0 STRING.
func unquotePy(l []byte) (string, error) {
	if len(l) < 2 || (l[0] != '\'' && l[0] != '"') || l[len(l)-1] != l[0] {
		return "", bad("STRING not quoted")
	}
	s := l[1 : len(l)-1]
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(s) {
			return "", bad("trailing backslash in STRING")
		}
		switch e := s[i]; e {
		case '\\', '\'', '"':
			out = append(out, e)
		case 'n':
			out = append(out, '\n')
		case 't':
			out = append(out, '\t')
		case 'r':
			out = append(out, '\r')
		case 'a':
			out = append(out, 7)
		case 'b':
			out = append(out, 8)
		case 'f':
			out = append(out, 12)
		case 'v':
			out = append(out, 11)
		case '\n':
		case 'x':
			if i+2 >= len(s) {
				return "", bad("short \\x escape")
			}
			v, err := strconv.ParseUint(string(s[i+1:i+3]), 16, 8)
			if err != nil {
				return "", bad("bad \\x escape")
			}
			out = append(out, byte(v))
			i += 2
		default:
			if e >= '0' && e <= '7' {
				v := 0
				j := i
				for ; j < len(s) && j < i+3 && s[j] >= '0' && s[j] <= '7'; j++ {
					v = v*8 + int(s[j]-'0')
				}
				out = append(out, byte(v))
				i = j - 1
			} else {
				out = append(out, '\\', e)
			}
		}
	}
	return string(out), nil
}

// rawUnicodeEscape decodes Python's raw-unicode-escape codec: bytes are
// Latin-1 code points except \uXXXX and \UXXXXXXXX escapes.
func rawUnicodeEscape(l []byte) (string, error) {
	var sb strings.Builder
	for i := 0; i < len(l); i++ {
		c := l[i]
		if c == '\\' && i+1 < len(l) && (l[i+1] == 'u' || l[i+1] == 'U') {
			n := 4
			if l[i+1] == 'U' {
				n = 8
			}
			if i+2+n > len(l) {
				return "", bad("short unicode escape")
			}
			v, err := strconv.ParseUint(string(l[i+2:i+2+n]), 16, 32)
			if err != nil || v > utf8.MaxRune {
				return "", bad("bad unicode escape")
			}
			sb.WriteRune(rune(v))
			i += 1 + n
			continue
		}
		sb.WriteRune(rune(c))
	}
	return sb.String(), nil
}
