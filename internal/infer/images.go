package infer

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // dataset images and uploads may be JPEG
	_ "image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/model"
)

// LoadImage opens a record's image: "image" paths are relative to the
// dataset root, "crop" paths are blob keys.
func LoadImage(root string, bs blob.Store, ref model.ImageRef) (image.Image, error) {
	var path string
	switch ref.Kind {
	case "crop":
		if bs == nil {
			return nil, fmt.Errorf("load crop %s: no blob store", ref.Path)
		}
		p, err := bs.LocalPath(ref.Path)
		if err != nil {
			return nil, fmt.Errorf("load crop %s: %w", ref.Path, err)
		}
		path = p
	default:
		if root == "" {
			return nil, fmt.Errorf("load image %s: dataset root unknown", ref.Path)
		}
		path = filepath.Join(root, filepath.FromSlash(ref.Path))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load image: %w", err)
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("decode image %s: %w", path, err)
	}
	if img, err = model.ApplyTransform(img, ref.Transform); err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	return img, nil
}

// ImageCache keeps decoded images: a synth set asks many questions about
// the same image. It is dropped whole when full (records come grouped by
// image, so recency matters little).
type ImageCache struct {
	root string
	bs   blob.Store
	max  int
	mu   sync.Mutex
	m    map[string]image.Image
}

// NewImageCache returns a cache of at most n images (default 256) read
// with LoadImage from root and bs.
func NewImageCache(root string, bs blob.Store, n int) *ImageCache {
	if n <= 0 {
		n = 256
	}
	return &ImageCache{root: root, bs: bs, max: n, m: map[string]image.Image{}}
}

// Get returns the decoded image of ref.
func (c *ImageCache) Get(ref model.ImageRef) (image.Image, error) {
	key := ref.Key()
	c.mu.Lock()
	img, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return img, nil
	}
	img, err := LoadImage(c.root, c.bs, ref)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[key] = img
	c.mu.Unlock()
	return img, nil
}

// ImageLimits bound an image a caller sends. Zero fields are not checked.
type ImageLimits struct {
	// MaxBytes bounds the encoded size.
	MaxBytes int
	// MaxPixels bounds width x height, read from the header before any
	// pixel is decoded (a small file can declare a huge image).
	MaxPixels int
	// Formats are the accepted formats as image.DecodeConfig names them
	// ("png", "jpeg"); empty accepts every registered one.
	Formats []string
}

// Errors of DecodeImage, each wrapped with the figures.
var (
	ErrImageTooLarge   = errors.New("image too large")
	ErrTooManyPixels   = errors.New("image has too many pixels")
	ErrImageFormat     = errors.New("unsupported image format")
	ErrImageUndecoded  = errors.New("image does not decode")
	ErrImageDimensions = errors.New("image has no pixels")
)

// CheckImage checks b against lim from its header alone, without
// decoding a pixel, and returns the header and the format's name.
func CheckImage(b []byte, lim ImageLimits) (image.Config, string, error) {
	if len(b) == 0 {
		return image.Config{}, "", fmt.Errorf("%w: empty", ErrImageUndecoded)
	}
	if lim.MaxBytes > 0 && len(b) > lim.MaxBytes {
		return image.Config{}, "", fmt.Errorf("%w: %d bytes, the limit is %d", ErrImageTooLarge, len(b), lim.MaxBytes)
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(b))
	if errors.Is(err, image.ErrFormat) {
		return image.Config{}, "", fmt.Errorf("%w: not one of %s (read from the file's first bytes)", ErrImageFormat, formatList(lim.Formats))
	}
	if err != nil {
		return image.Config{}, "", fmt.Errorf("%w: header: %v", ErrImageUndecoded, err)
	}
	if len(lim.Formats) > 0 && !slices.Contains(lim.Formats, format) {
		return image.Config{}, "", fmt.Errorf("%w: %s, accepted: %s", ErrImageFormat, format, formatList(lim.Formats))
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return image.Config{}, "", fmt.Errorf("%w: %dx%d", ErrImageDimensions, cfg.Width, cfg.Height)
	}
	if px := int64(cfg.Width) * int64(cfg.Height); lim.MaxPixels > 0 && px > int64(lim.MaxPixels) {
		return image.Config{}, "", fmt.Errorf("%w: %dx%d is %d pixels, the limit is %d", ErrTooManyPixels, cfg.Width, cfg.Height, px, lim.MaxPixels)
	}
	return cfg, format, nil
}

// DecodeImage checks b against lim (CheckImage) and decodes it.
func DecodeImage(b []byte, lim ImageLimits) (image.Image, string, error) {
	if _, _, err := CheckImage(b, lim); err != nil {
		return nil, "", err
	}
	img, format, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrImageUndecoded, err)
	}
	return img, format, nil
}

func formatList(fs []string) string {
	if len(fs) == 0 {
		return "the registered formats"
	}
	return strings.Join(fs, ", ")
}
