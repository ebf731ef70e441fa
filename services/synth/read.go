package synth

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"iter"
	"slices"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/model"
)

// OpenManifest reads the manifest stored at key.
func OpenManifest(b blob.Store, key string) (Manifest, error) {
	f, err := b.Open(key)
	if err != nil {
		return Manifest{}, fmt.Errorf("open synth manifest: %w", err)
	}
	defer f.Close()
	var m Manifest
	if err := json.NewDecoder(f).Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("decode synth manifest %s: %w", key, err)
	}
	if m.Format != ManifestFormat {
		return Manifest{}, fmt.Errorf("decode synth manifest %s: format %q, want %q", key, m.Format, ManifestFormat)
	}
	m.Key = key
	return m, nil
}

// Select returns a copy of m whose Shards are only those of the given
// stages and splits (nil or empty: all), so that readers skip whole shards.
func (m Manifest) Select(stages, splits []string) Manifest {
	out := m
	out.Shards = nil
	for _, s := range m.Shards {
		if (len(stages) == 0 || slices.Contains(stages, s.Stage)) && (len(splits) == 0 || slices.Contains(splits, s.Split)) {
			out.Shards = append(out.Shards, s)
		}
	}
	return out
}

// ReadRecords streams the records of m's shards in manifest order, calling
// fn for those that filter accepts (nil: all). Each record is freshly
// allocated, so fn may keep it. Every shard's sha256 is verified as it is
// read; a mismatch is an error. fn's error stops the read and is returned.
func ReadRecords(ctx context.Context, b blob.Store, m Manifest, filter func(*model.Record) bool, fn func(*model.Record) error) error {
	for _, sh := range m.Shards {
		if err := readShard(ctx, b, sh, filter, fn); err != nil {
			return err
		}
	}
	return nil
}

// OpenShards opens the manifest at manifestKey and returns it with an
// iterator over all its records (see ReadRecords; use m.Select and
// ReadRecords to read a subset). The iterator yields a non-nil error once,
// last, when reading fails.
func OpenShards(ctx context.Context, b blob.Store, manifestKey string) (Manifest, iter.Seq2[*model.Record, error], error) {
	m, err := OpenManifest(b, manifestKey)
	if err != nil {
		return Manifest{}, nil, err
	}
	seq := func(yield func(*model.Record, error) bool) {
		stopped := false
		err := ReadRecords(ctx, b, m, nil, func(r *model.Record) error {
			if !yield(r, nil) {
				stopped = true
				return errStop
			}
			return nil
		})
		if err != nil && !stopped {
			yield(nil, err)
		}
	}
	return m, seq, nil
}

var errStop = fmt.Errorf("stop")

type hashingReader struct {
	r io.Reader
	h hash.Hash
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}

func readShard(ctx context.Context, b blob.Store, sh Shard, filter func(*model.Record) bool, fn func(*model.Record) error) error {
	f, err := b.Open(sh.Key)
	if err != nil {
		return fmt.Errorf("read shard: %w", err)
	}
	defer f.Close()
	hr := &hashingReader{r: bufio.NewReaderSize(f, 256<<10), h: sha256.New()}
	gz, err := gzip.NewReader(hr)
	if err != nil {
		return fmt.Errorf("read shard %s: %w", sh.Name, err)
	}
	sc := bufio.NewScanner(gz)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	line := 0
	for sc.Scan() {
		line++
		if line%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		rec := new(model.Record)
		if err := json.Unmarshal(sc.Bytes(), rec); err != nil {
			return fmt.Errorf("read shard %s line %d: %w", sh.Name, line, err)
		}
		if filter != nil && !filter(rec) {
			continue
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read shard %s: %w", sh.Name, err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("read shard %s: %w", sh.Name, err)
	}
	// Drain what gzip did not consume so the digest covers the whole file.
	if _, err := io.Copy(io.Discard, hr); err != nil {
		return fmt.Errorf("read shard %s: %w", sh.Name, err)
	}
	if got := hex.EncodeToString(hr.h.Sum(nil)); sh.SHA256 != "" && got != sh.SHA256 {
		return fmt.Errorf("read shard %s: sha256 %s, manifest says %s", sh.Name, got, sh.SHA256)
	}
	if int64(line) != sh.Records {
		return fmt.Errorf("read shard %s: %d records, manifest says %d", sh.Name, line, sh.Records)
	}
	return nil
}
