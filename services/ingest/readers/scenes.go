package readers

import (
	"fmt"
	"io"
	"strings"
)

// The built-in scene world (package services/ingest/scenes) writes standard
// files, and this reader reads them back with the COCO, RefCOCO and Visual
// Genome code above, nothing scene-specific:
//   annotations/instances_<split>.json  COCO instances, with "attributes" per annotation
//   images/<split>/<file_name>          PNG images
//   annotations/refs(scenes).json       RefCOCO refs (JSON form of refs(unc).p)
//   annotations/relationships.json      Visual Genome relationships (object ids = COCO annotation ids)
// (annotations/objects.json and attributes.json repeat the objects in VG
// form for VG tooling and are not read here.)

func (r *run) readScenesDir() error {
	match := func(n string) bool { return strings.HasPrefix(n, "instances_") && strings.HasSuffix(n, ".json") }
	insts := r.glob("annotations", match)
	if len(insts) == 0 {
		return fmt.Errorf("%w: no annotations/instances_*.json (scene world) under %s", ErrFormat, r.root)
	}
	for _, f := range insts {
		if err := r.readCOCOFile(f, ""); err != nil {
			return err
		}
	}
	const refsRel = "annotations/refs(scenes).json"
	if r.exists(refsRel) {
		var pending []refRecord
		err := r.withFile(refsRel, func(f io.Reader) error {
			var err error
			pending, err = decodeRefsJSON(r.ctx, f, nil, r.b, "", "")
			if err != nil {
				return formatErr(refsRel, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		addREFERRefs(pending, r.b, 0, false)
	}
	const relRel = "annotations/relationships.json"
	if r.exists(relRel) {
		st := newVGState(r.b, "")
		st.autoImage = false
		for i, im := range r.b.ds.Images {
			st.images[im.ID] = i
		}
		for i, o := range r.b.ds.Objects {
			if _, ok := st.objects[o.ID]; !ok {
				st.objects[o.ID] = i
			}
		}
		err := r.withFile(relRel, func(f io.Reader) error {
			if err := decodeVG(r.ctx, f, "relationships", st); err != nil {
				return formatErr(relRel, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
