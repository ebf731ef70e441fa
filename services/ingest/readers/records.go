package readers

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strconv"
)

// maxRecordLine bounds one record of the instruction and question formats
// (a LLaVA conversation with a long dense description stays far below).
const maxRecordLine = 16 << 20

// forEachRecord reads a file of JSON objects written either as JSON Lines
// (b.line set to each record's line) or as one JSON list (b.line 0; pos
// names the element). fn gets each record's bytes and its position
// ("line 12", "element 3") for ids and messages. A file cut in the middle
// of its last line fails (see scanJSONL).
func forEachRecord(ctx context.Context, f io.Reader, kind string, b *builder, fn func(raw []byte, pos string)) error {
	br := bufio.NewReaderSize(f, 256<<10)
	first := byte(0)
	for {
		c, err := br.ReadByte()
		if err != nil {
			return nil // empty file: no records
		}
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			first = c
			_ = br.UnreadByte()
			break
		}
	}
	if first != '[' {
		return scanJSONL(ctx, br, maxRecordLine, kind, b, func(line []byte) {
			fn(line, "line "+strconv.Itoa(b.line))
		})
	}
	dec := json.NewDecoder(br)
	return walkArray(ctx, dec, func(i int) error {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		fn(raw, "element "+strconv.Itoa(i))
		return nil
	})
}
