package synth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sync"

	// Source images may be JPEG (COCO) as well as PNG; crops are always PNG.
	_ "image/jpeg"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
)

// cropRef is one stored crop.
type cropRef struct {
	key  string
	w, h int
	box  [4]float64 // pixel xyxy of the crop in its source image
	src  *imgInfo
}

// cropRect grows box about its centre by factor, rounds outwards to whole
// pixels and clips to the image.
func cropRect(b dataset.Box, factor float64, w, h int) image.Rectangle {
	cx, cy := (b.X1+b.X2)/2, (b.Y1+b.Y2)/2
	hw, hh := b.W()*factor/2, b.H()*factor/2
	r := image.Rect(int(math.Floor(cx-hw)), int(math.Floor(cy-hh)), int(math.Ceil(cx+hw)), int(math.Ceil(cy+hh)))
	return r.Intersect(image.Rect(0, 0, w, h))
}

// cropStore writes content-addressed PNG crops. Keys carry the split, so a
// crop of a test image never shares a key with a training crop even when
// the pixels happen to be equal.
//
// Writes are asynchronous: a crop's key is known from its content before the
// file exists, so generation goes on while a few writer goroutines create the
// files (file creation, not encoding, is what costs on small VMs). wait
// returns once every file is on disk. Crops are not fsynced one by one
// (tens of thousands of small files, each re-creatable from its source),
// unlike shards and manifests.
type cropStore struct {
	blob   blob.Store
	prefix string
	jobs   chan cropJob
	wg     sync.WaitGroup
	once   sync.Once

	mu      sync.Mutex
	seen    map[cropID]struct{}
	bytes   int64
	written int64 // files newly created by this build
	dirs    map[string]struct{}
	err     error
}

type cropID struct {
	split string
	sum   [32]byte
}

type cropJob struct {
	key  string
	data []byte
}

// cropWriters is the number of goroutines creating crop files.
const cropWriters = 4

func newCropStore(b blob.Store, prefix string) *cropStore {
	s := &cropStore{blob: b, prefix: prefix, seen: map[cropID]struct{}{}, dirs: map[string]struct{}{}, jobs: make(chan cropJob, 256)}
	for range cropWriters {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for j := range s.jobs {
				if err := s.write(j); err != nil {
					s.mu.Lock()
					if s.err == nil {
						s.err = err
					}
					s.mu.Unlock()
				}
			}
		}()
	}
	return s
}

func (s *cropStore) key(split string, sum [32]byte) string {
	// One directory per split: on ext4, spreading small files over many
	// directories made each creation markedly dearer than one large
	// (hash-indexed) directory.
	return s.prefix + "/" + split + "/" + hex.EncodeToString(sum[:]) + ".png"
}

// put schedules data to be stored under its content key (unless this build
// already did) and returns the key. It reports the first failed write.
func (s *cropStore) put(split string, data []byte) (string, error) {
	id := cropID{split, sha256.Sum256(data)}
	key := s.key(split, id.sum)
	s.mu.Lock()
	err := s.err
	_, ok := s.seen[id]
	if !ok {
		s.seen[id] = struct{}{}
		s.bytes += int64(len(data))
	}
	s.mu.Unlock()
	if err != nil {
		return "", err
	}
	if !ok {
		s.jobs <- cropJob{key: key, data: bytes.Clone(data)}
	}
	return key, nil
}

// write creates the file unless an earlier build did. O_EXCL spares the
// temp file and rename: an existing file of the right size is the same
// content (the name is its hash); one of another size is the remains of an
// interrupted write and is replaced.
//
// On a store other than a local directory, a key already holding
// len(data) bytes is kept, and a missing one is stored through Put.
func (s *cropStore) write(j cropJob) error {
	local, ok := s.blob.(*blob.Local)
	if !ok {
		return s.putStore(j)
	}
	p, err := local.Path(j.key)
	if err != nil {
		return fmt.Errorf("store crop: %w", err)
	}
	dir := filepath.Dir(p)
	s.mu.Lock()
	_, haveDir := s.dirs[dir]
	s.mu.Unlock()
	if !haveDir {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("store crop %s: %w", j.key, err)
		}
		s.mu.Lock()
		s.dirs[dir] = struct{}{}
		s.mu.Unlock()
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		if st, serr := os.Stat(p); serr == nil && st.Size() == int64(len(j.data)) {
			return nil
		}
		f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	}
	if err != nil {
		return fmt.Errorf("store crop %s: %w", j.key, err)
	}
	_, err = f.Write(j.data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
		return fmt.Errorf("store crop %s: %w", j.key, err)
	}
	s.mu.Lock()
	s.written++
	s.mu.Unlock()
	return nil
}

// putStore stores a crop on a non-local store, skipping one already there.
func (s *cropStore) putStore(j cropJob) error {
	if info, err := s.blob.Stat(j.key); err == nil && info.Size == int64(len(j.data)) {
		return nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store crop %s: %w", j.key, err)
	}
	if _, _, err := s.blob.Put(j.key, bytes.NewReader(j.data)); err != nil {
		return fmt.Errorf("store crop %s: %w", j.key, err)
	}
	s.mu.Lock()
	s.written++
	s.mu.Unlock()
	return nil
}

// wait stops the writers once every scheduled crop is written and returns
// the first write error. It is safe to call more than once.
func (s *cropStore) wait() error {
	s.once.Do(func() { close(s.jobs) })
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *cropStore) stats() (unique, bytes, written int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.seen)), s.bytes, s.written
}

// cropper is a worker's view of the current image: the decoded pixels and
// the crops already made from them.
type cropper struct {
	store *cropStore
	root  string
	enc   png.Encoder
	buf   bytes.Buffer

	cur     *imgInfo
	raw     []byte // file bytes of cur, when read
	rawErr  error
	pix     image.Image
	pixErr  error
	decoded bool
	cache   map[[2]int]cropRef // (object, scale index) -> crop
	// palettize scratch
	idx    []uint8
	pal    []uint32
	colors map[uint32]uint8
}

type encBufPool struct{ p sync.Pool }

func (b *encBufPool) Get() *png.EncoderBuffer {
	v, _ := b.p.Get().(*png.EncoderBuffer)
	return v
}
func (b *encBufPool) Put(e *png.EncoderBuffer) { b.p.Put(e) }

var pngBuffers = &encBufPool{}

func newCropper(store *cropStore, root string) *cropper {
	return &cropper{
		store: store, root: root,
		enc:   png.Encoder{CompressionLevel: png.BestSpeed, BufferPool: pngBuffers},
		cache: map[[2]int]cropRef{}, colors: map[uint32]uint8{},
	}
}

func (c *cropper) reset(ii *imgInfo) {
	c.cur, c.raw, c.rawErr, c.pix, c.pixErr, c.decoded = ii, nil, nil, nil, nil, false
	clear(c.cache)
}

// fileBytes reads the current image file once.
func (c *cropper) fileBytes() ([]byte, error) {
	if c.raw == nil && c.rawErr == nil {
		c.raw, c.rawErr = os.ReadFile(filepath.Join(c.root, filepath.FromSlash(c.cur.src.File)))
		if c.rawErr != nil {
			c.rawErr = fmt.Errorf("read image %s: %w", c.cur.src.ID, c.rawErr)
		}
	}
	return c.raw, c.rawErr
}

func (c *cropper) image() (image.Image, error) {
	if c.decoded {
		return c.pix, c.pixErr
	}
	c.decoded = true
	raw, err := c.fileBytes()
	if err != nil {
		c.pixErr = err
		return nil, err
	}
	img, _, err := image.Decode(bytes.NewReader(raw))
	if err != nil {
		c.pixErr = fmt.Errorf("decode image %s: %w", c.cur.src.ID, err)
		return nil, c.pixErr
	}
	if b := img.Bounds(); b.Dx() != c.cur.src.Width || b.Dy() != c.cur.src.Height {
		c.pixErr = fmt.Errorf("decode image %s: size %dx%d, annotated %dx%d", c.cur.src.ID, b.Dx(), b.Dy(), c.cur.src.Width, c.cur.src.Height)
		return nil, c.pixErr
	}
	c.pix = img
	return img, nil
}

// errUnreadable marks image problems that skip a sample rather than fail the
// build.
type errUnreadable struct{ err error }

func (e errUnreadable) Error() string { return e.err.Error() }
func (e errUnreadable) Unwrap() error { return e.err }

// crop returns the crop of object k of the current image at scale si.
func (c *cropper) crop(k, si int, scale string) (cropRef, error) {
	ck := [2]int{k, si}
	if r, ok := c.cache[ck]; ok {
		return r, nil
	}
	img, err := c.image()
	if err != nil {
		return cropRef{}, errUnreadable{err}
	}
	ii := c.cur
	rect := cropRect(ii.objs[k].box, scaleFactor[scale], ii.src.Width, ii.src.Height)
	if rect.Empty() {
		return cropRef{}, errUnreadable{fmt.Errorf("crop %s/%s: empty", ii.src.ID, ii.objs[k].src.ID)}
	}
	off := img.Bounds().Min
	sub := c.palettize(img, rect.Add(off))
	if sub == nil {
		sub = subImage(img, rect.Add(off))
	}
	c.buf.Reset()
	if err := c.enc.Encode(&c.buf, sub); err != nil {
		return cropRef{}, fmt.Errorf("encode crop %s/%s: %w", ii.src.ID, ii.objs[k].src.ID, err)
	}
	key, err := c.store.put(ii.src.Split, c.buf.Bytes())
	if err != nil {
		return cropRef{}, err
	}
	r := cropRef{
		key: key, w: rect.Dx(), h: rect.Dy(),
		box: [4]float64{float64(rect.Min.X), float64(rect.Min.Y), float64(rect.Max.X), float64(rect.Max.Y)},
		src: ii,
	}
	c.cache[ck] = r
	return r, nil
}

// palettize returns r of img as a paletted image when it has at most 256
// colours (flat-shaded scenes always do), or nil. The PNG is the same pixels
// either way; a paletted one skips the per-row filter search and deflates a
// third of the bytes, which makes crop encoding several times cheaper.
// Palette order is first occurrence in scan order, so the bytes are
// deterministic.
func (c *cropper) palettize(img image.Image, r image.Rectangle) image.Image {
	var pix []uint8
	var stride int
	switch m := img.(type) {
	case *image.RGBA:
		pix, stride = m.Pix[m.PixOffset(r.Min.X, r.Min.Y):], m.Stride
	case *image.NRGBA:
		pix, stride = m.Pix[m.PixOffset(r.Min.X, r.Min.Y):], m.Stride
	default:
		return nil
	}
	w, h := r.Dx(), r.Dy()
	if cap(c.idx) < w*h {
		c.idx = make([]uint8, w*h)
	}
	idx := c.idx[:w*h]
	clear(c.colors)
	c.pal = c.pal[:0]
	last, lastI := uint32(0), -1
	for y := 0; y < h; y++ {
		row := pix[y*stride : y*stride+4*w]
		for x := 0; x < w; x++ {
			p := row[4*x : 4*x+4 : 4*x+4]
			v := uint32(p[0])<<24 | uint32(p[1])<<16 | uint32(p[2])<<8 | uint32(p[3])
			if v != last || lastI < 0 {
				i, ok := c.colors[v]
				if !ok {
					if len(c.pal) == 256 {
						return nil
					}
					i = uint8(len(c.pal))
					c.colors[v] = i
					c.pal = append(c.pal, v)
				}
				last, lastI = v, int(i)
			}
			idx[y*w+x] = uint8(lastI)
		}
	}
	pal := make(color.Palette, len(c.pal))
	_, premul := img.(*image.RGBA)
	for i, v := range c.pal {
		col := color.NRGBA{uint8(v >> 24), uint8(v >> 16), uint8(v >> 8), uint8(v)}
		if premul {
			pal[i] = color.RGBA(col) // same bytes, read as premultiplied
		} else {
			pal[i] = col
		}
	}
	return &image.Paletted{Pix: idx, Stride: w, Rect: image.Rect(0, 0, w, h), Palette: pal}
}

// subImage returns the pixels of r in a type the PNG encoder handles on its
// fast path.
func subImage(img image.Image, r image.Rectangle) image.Image {
	switch m := img.(type) {
	case *image.NRGBA:
		return m.SubImage(r)
	case *image.RGBA:
		return m.SubImage(r)
	case *image.Paletted:
		return m.SubImage(r)
	case *image.Gray:
		return m.SubImage(r)
	}
	dst := image.NewNRGBA(image.Rect(0, 0, r.Dx(), r.Dy()))
	draw.Draw(dst, dst.Bounds(), img, r.Min, draw.Src)
	return dst
}
