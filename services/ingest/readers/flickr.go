package readers

import (
	"bufio"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// Flickr30k Entities (github.com/BryanPlummer/flickr30k_entities):
//   Sentences/<id>.txt: five lines, phrases marked "[/EN#<entity>/<type>[/<type>...] words]".
//   Annotations/<id>.xml: PASCAL VOC style, <size>, and one <object> per box with one or
//     more <name> (entity ids) and either <bndbox> (1-based inclusive corners) or
//     <nobndbox>1</nobndbox>; <scene>1</scene> marks entities that are the whole scene.
//   train.txt / val.txt / test.txt: image ids per split (optional; default train).
// A flat directory (<id>.txt beside <id>.xml) is accepted too.
//
// Mapping: every (entity, box) pair is an Object (id "<image>_<entity>_<k>",
// category = the entity's first type, Attributes "entity" and "scene"); every
// phrase whose entity has boxes is a Region whose box is the union of the
// entity's boxes (the "merged" protocol of grounding papers). Entities
// without boxes (nobndbox, notvisual) produce nothing; they are not errors.
// Box conversion: x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax.

type flickrXML struct {
	Filename string `xml:"filename"`
	Size     struct {
		Width  float64 `xml:"width"`
		Height float64 `xml:"height"`
	} `xml:"size"`
	Objects []struct {
		Names  []string `xml:"name"`
		BndBox *struct {
			XMin float64 `xml:"xmin"`
			YMin float64 `xml:"ymin"`
			XMax float64 `xml:"xmax"`
			YMax float64 `xml:"ymax"`
		} `xml:"bndbox"`
		NoBndBox string `xml:"nobndbox"`
		Scene    string `xml:"scene"`
	} `xml:"object"`
}

// flickrPhrase is one marked phrase of a sentence.
type flickrPhrase struct {
	Entity string
	Types  []string
	Text   string
}

func (r *run) readFlickrDir() error {
	sentDir, annDir := "Sentences", "Annotations"
	if !r.isDir(sentDir) && !r.isDir(annDir) {
		sentDir, annDir = "", ""
	}
	ids := map[string]bool{}
	for _, f := range r.glob(annDir, func(n string) bool { return strings.HasSuffix(n, ".xml") }) {
		ids[strings.TrimSuffix(path.Base(f), ".xml")] = true
	}
	if len(ids) == 0 {
		return fmt.Errorf("%w: no Annotations/*.xml (Flickr30k Entities) under %s", ErrFormat, r.root)
	}
	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	sort.Strings(sorted)
	splits, err := r.flickrSplits()
	if err != nil {
		return err
	}
	imgDir := r.imageDir("flickr30k-images", "flickr30k-images", "flickr30k_images", "images")
	for i, id := range sorted {
		if i&255 == 0 {
			if err := r.ctx.Err(); err != nil {
				return err
			}
		}
		split := splits[id]
		if split == "" {
			split = dataset.SplitTrain
		}
		var ann flickrXML
		xmlRel := path.Join(annDir, id+".xml")
		err := r.withFile(xmlRel, func(f io.Reader) error { return decodeFlickrXML(f, &ann) })
		if err != nil {
			if isFlickrRecordErr(err) {
				r.b.reject(KindImage, id, "annotation xml: "+err.Error())
				continue
			}
			return err
		}
		var phrases [][]flickrPhrase
		txtRel := path.Join(sentDir, id+".txt")
		if r.exists(txtRel) {
			err := r.withFile(txtRel, func(f io.Reader) error {
				var err error
				phrases, err = decodeFlickrSentences(f, id, r.b)
				return err
			})
			if err != nil {
				return err
			}
		}
		addFlickrImage(r.b, id, split, imgDir, &ann, phrases)
	}
	return nil
}

// decodeFlickrXML parses one Annotations file.
func decodeFlickrXML(f io.Reader, ann *flickrXML) error {
	return xml.NewDecoder(f).Decode(ann)
}

// isFlickrRecordErr tells a malformed per-image file (reject the image)
// from an I/O failure.
func isFlickrRecordErr(err error) bool {
	var se *xml.SyntaxError
	var ue xml.UnmarshalError
	var pe *strconv.NumError
	return errors.As(err, &se) || errors.As(err, &ue) || errors.As(err, &pe) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func (r *run) flickrSplits() (map[string]string, error) {
	out := map[string]string{}
	for _, s := range []string{dataset.SplitTrain, dataset.SplitVal, dataset.SplitTest} {
		rel := s + ".txt"
		if !r.exists(rel) {
			continue
		}
		err := r.withFile(rel, func(f io.Reader) error {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if id := strings.TrimSpace(sc.Text()); id != "" {
					out[id] = s
				}
			}
			return sc.Err()
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// decodeFlickrSentences parses a Sentences file: one slice of phrases per line.
func decodeFlickrSentences(f io.Reader, imageID string, b *builder) ([][]flickrPhrase, error) {
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var out [][]flickrPhrase
	for n := 0; sc.Scan(); n++ {
		ps, err := parseFlickrLine(sc.Text())
		if err != nil {
			b.reject(KindRegion, imageID+"_"+strconv.Itoa(n), err.Error())
			ps = nil
		}
		out = append(out, ps)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			b.reject(KindImage, imageID, "sentence line too long")
			return nil, nil
		}
		return nil, err
	}
	return out, nil
}

// parseFlickrLine extracts the marked phrases of one sentence.
func parseFlickrLine(line string) ([]flickrPhrase, error) {
	var out []flickrPhrase
	for {
		i := strings.IndexByte(line, '[')
		if i < 0 {
			return out, nil
		}
		line = line[i+1:]
		j := strings.IndexByte(line, ']')
		if j < 0 {
			return nil, errors.New("unclosed phrase bracket")
		}
		inner := line[:j]
		line = line[j+1:]
		if !strings.HasPrefix(inner, "/EN#") {
			return nil, fmt.Errorf("phrase %q lacks /EN# markup", inner)
		}
		head, text, ok := strings.Cut(inner[len("/EN#"):], " ")
		if !ok {
			return nil, fmt.Errorf("phrase %q has no words", inner)
		}
		parts := strings.Split(head, "/")
		if parts[0] == "" {
			return nil, fmt.Errorf("phrase %q has no entity id", inner)
		}
		out = append(out, flickrPhrase{Entity: parts[0], Types: parts[1:], Text: strings.TrimSpace(text)})
	}
}

func addFlickrImage(b *builder, id, split, imgDir string, ann *flickrXML, phrases [][]flickrPhrase) {
	file := ann.Filename
	if strings.TrimSpace(file) == "" {
		file = id + ".jpg"
	}
	b.ds.Images = append(b.ds.Images, dataset.Image{
		ID: id, File: joinFile(imgDir, file), Width: dim(ann.Size.Width), Height: dim(ann.Size.Height), Split: split,
	})
	types := map[string]string{}
	for _, line := range phrases {
		for _, p := range line {
			if _, ok := types[p.Entity]; !ok && len(p.Types) > 0 {
				types[p.Entity] = p.Types[0]
			}
		}
	}
	boxes := map[string][]dataset.Box{}
	for k, o := range ann.Objects {
		if o.BndBox == nil {
			continue
		}
		bb := o.BndBox
		box, err := xyxy([]float64{bb.XMin - 1, bb.YMin - 1, bb.XMax, bb.YMax})
		if err != nil {
			b.reject(KindObject, id+"_#"+strconv.Itoa(k), err.Error())
			continue
		}
		for _, ent := range o.Names {
			ent = strings.TrimSpace(ent)
			if ent == "" {
				continue
			}
			cat := types[ent]
			if cat == "" {
				cat = "entity"
			}
			attrs := map[string]string{"entity": ent}
			if strings.TrimSpace(o.Scene) == "1" {
				attrs["scene"] = "1"
			}
			b.ds.Objects = append(b.ds.Objects, dataset.Object{
				ID: id + "_" + ent + "_" + strconv.Itoa(len(boxes[ent])), ImageID: id, Category: cat, Attributes: attrs, Box: box,
			})
			boxes[ent] = append(boxes[ent], box)
		}
	}
	for n, line := range phrases {
		for k, p := range line {
			bs := boxes[p.Entity]
			if len(bs) == 0 {
				continue
			}
			u := bs[0]
			for _, x := range bs[1:] {
				u = dataset.Box{X1: min(u.X1, x.X1), Y1: min(u.Y1, x.Y1), X2: max(u.X2, x.X2), Y2: max(u.Y2, x.Y2)}
			}
			b.ds.Regions = append(b.ds.Regions, dataset.Region{
				ID: id + "_" + strconv.Itoa(n) + "_" + strconv.Itoa(k), ImageID: id, Phrase: p.Text, Box: u,
			})
		}
	}
}
