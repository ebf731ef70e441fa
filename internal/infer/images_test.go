package infer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"testing"
)

func encode(t *testing.T, format string, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	var buf bytes.Buffer
	var err error
	switch format {
	case "png":
		err = png.Encode(&buf, img)
	case "jpeg":
		err = jpeg.Encode(&buf, img, nil)
	case "gif":
		err = gif.Encode(&buf, img, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bombPNG is a PNG header declaring w x h pixels with no pixel data: what
// a decompression bomb looks like before it is inflated.
func bombPNG(w, h uint32) []byte {
	var buf bytes.Buffer
	buf.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2 // 8-bit RGB
	chunk := func(typ string, data []byte) {
		binary.Write(&buf, binary.BigEndian, uint32(len(data)))
		buf.WriteString(typ)
		buf.Write(data)
		binary.Write(&buf, binary.BigEndian, crc32.ChecksumIEEE(append([]byte(typ), data...)))
	}
	chunk("IHDR", ihdr)
	chunk("IEND", nil)
	return buf.Bytes()
}

func TestDecodeImageLimits(t *testing.T) {
	lim := ImageLimits{MaxBytes: 20000, MaxPixels: 100 * 100, Formats: []string{"png", "jpeg"}}
	cases := []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{name: "png ok", data: encode(t, "png", 40, 30)},
		{name: "jpeg ok", data: encode(t, "jpeg", 40, 30)},
		{name: "gif refused", data: encode(t, "gif", 8, 8), want: ErrImageFormat, msg: "unsupported image format: gif, accepted: png, jpeg"},
		{name: "not an image", data: []byte("hello, world"), want: ErrImageFormat, msg: "unsupported image format: not one of png, jpeg (read from the file's first bytes)"},
		{name: "empty", data: nil, want: ErrImageUndecoded, msg: "image does not decode: empty"},
		{name: "bytes", data: make([]byte, 20001), want: ErrImageTooLarge, msg: "image too large: 20001 bytes, the limit is 20000"},
		{name: "bomb", data: bombPNG(50000, 50000), want: ErrTooManyPixels, msg: "image has too many pixels: 50000x50000 is 2500000000 pixels, the limit is 10000"},
		{name: "pixels", data: encode(t, "png", 101, 100), want: ErrTooManyPixels, msg: "image has too many pixels: 101x100 is 10100 pixels, the limit is 10000"},
		{name: "truncated", data: encode(t, "png", 40, 30)[:60], want: ErrImageUndecoded},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, format, err := DecodeImage(c.data, lim)
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if b := img.Bounds(); b.Dx() != 40 || b.Dy() != 30 || format == "" {
					t.Fatalf("decoded %v as %q", b, format)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if c.msg != "" && err.Error() != c.msg {
				t.Fatalf("message %q, want %q", err, c.msg)
			}
		})
	}
}
