package synth

import (
	"bufio"
	"cmp"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"

	"github.com/groundmesh/groundmesh/internal/blob"
)

// chunkSize is how much JSONL a stream buffers before handing it to its
// compressor goroutine.
const chunkSize = 256 << 10

// shardSet writes the records of each (stage, split) stream into numbered
// gzip shards. Each open shard compresses on its own goroutine and streams
// through a pipe into blob.Put, so no shard is ever held in memory.
type shardSet struct {
	blob    blob.Store
	prefix  string
	maxRecs int64
	level   int
	streams map[[2]string]*stream
	done    []Shard
	raw     int64
}

type stream struct {
	stage, split string
	next         int // next shard number
	cur          *openShard
	buf          []byte
}

type openShard struct {
	info    Shard
	ch      chan []byte
	done    chan error
	aborted bool // set before ch is closed: fail the Put so no partial shard remains
}

var errAborted = errors.New("shard aborted")

func newShardSet(b blob.Store, prefix string, maxRecs, level int) *shardSet {
	return &shardSet{blob: b, prefix: prefix, maxRecs: int64(maxRecs), level: level, streams: map[[2]string]*stream{}}
}

var chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize+64<<10); return &b }}

// add appends one JSON line to its stream, rotating shards at maxRecs.
func (s *shardSet) add(stage, split string, line []byte) error {
	k := [2]string{stage, split}
	st := s.streams[k]
	if st == nil {
		st = &stream{stage: stage, split: split}
		s.streams[k] = st
	}
	if st.cur == nil {
		if err := s.open(st); err != nil {
			return err
		}
	}
	if st.buf == nil {
		st.buf = (*chunkPool.Get().(*[]byte))[:0]
	}
	st.buf = append(st.buf, line...)
	st.cur.info.Records++
	st.cur.info.RawBytes += int64(len(line))
	s.raw += int64(len(line))
	if len(st.buf) >= chunkSize {
		st.cur.ch <- st.buf
		st.buf = nil
	}
	if st.cur.info.Records >= s.maxRecs {
		return s.finish(st, false)
	}
	return nil
}

func (s *shardSet) open(st *stream) error {
	name := "shards/" + st.stage + "-" + st.split + "-" + pad5(st.next) + ".jsonl.gz"
	st.next++
	key := s.prefix + "/" + name
	pr, pw := io.Pipe()
	sh := &openShard{info: Shard{Key: key, Name: name, Stage: st.stage, Split: st.split}, ch: make(chan []byte, 4), done: make(chan error, 1)}
	// A zero gzip.Header writes no name and a zero mtime: the bytes depend
	// on the records only.
	gz, err := gzip.NewWriterLevel(pw, s.level)
	if err != nil {
		return fmt.Errorf("open shard %s: %w", name, err)
	}
	putDone := make(chan struct{})
	var putErr error
	go func() {
		defer close(putDone)
		sum, n, err := s.blob.Put(key, pr)
		if err != nil {
			putErr = err
			pr.CloseWithError(err)
			return
		}
		sh.info.SHA256, sh.info.Bytes = sum, n
	}()
	go func() {
		bw := bufio.NewWriterSize(gz, 64<<10)
		var err error
		for chunk := range sh.ch {
			if err == nil {
				_, err = bw.Write(chunk)
			}
			chunk = chunk[:0]
			chunkPool.Put(&chunk)
		}
		if err == nil && sh.aborted {
			err = errAborted
		}
		if err == nil {
			err = bw.Flush()
		}
		if err == nil {
			err = gz.Close()
		}
		pw.CloseWithError(err)
		<-putDone
		if err == nil {
			err = putErr
		}
		sh.done <- err
	}()
	st.cur = sh
	return nil
}

// finish flushes and closes the stream's open shard and records it.
func (s *shardSet) finish(st *stream, abort bool) error {
	sh := st.cur
	if sh == nil {
		return nil
	}
	sh.aborted = abort
	if len(st.buf) > 0 {
		sh.ch <- st.buf
	} else if st.buf != nil {
		b := st.buf[:0]
		chunkPool.Put(&b)
	}
	st.buf = nil
	close(sh.ch)
	err := <-sh.done
	st.cur = nil
	if err != nil {
		return fmt.Errorf("write shard %s: %w", sh.info.Name, err)
	}
	s.done = append(s.done, sh.info)
	return nil
}

// close finishes every open shard.
func (s *shardSet) close() error {
	var first error
	for _, st := range s.sortedStreams() {
		if err := s.finish(st, false); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// abort discards every open shard (the set is abandoned).
func (s *shardSet) abort() {
	for _, st := range s.sortedStreams() {
		_ = s.finish(st, true)
	}
}

func (s *shardSet) sortedStreams() []*stream {
	out := make([]*stream, 0, len(s.streams))
	for _, st := range s.streams {
		out = append(out, st)
	}
	// Order does not matter for the output (shards are sorted by name in
	// the manifest); sort anyway so errors are reported deterministically.
	slices.SortFunc(out, func(a, b *stream) int {
		return cmp.Or(cmp.Compare(a.stage, b.stage), cmp.Compare(a.split, b.split))
	})
	return out
}

func pad5(n int) string {
	s := strconv.Itoa(n)
	for len(s) < 5 {
		s = "0" + s
	}
	return s
}
