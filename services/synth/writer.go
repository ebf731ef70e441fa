package synth

// writer is the single ordered consumer of worker batches: it removes
// duplicates across images, counts, and feeds the shards.
type writer struct {
	b        *builder
	shards   *shardSet
	progress func(done, total int64)
	seen     map[[16]byte]struct{}
	counts   Counts
	cells    map[cellKey]int64
	quality  Quality
	total    int64
	cropRefs int64
	lastProg int64
}

type cellKey struct{ stage, task, dir, scale, bin string }

func newWriter(b *builder, s *shardSet, progress func(done, total int64)) *writer {
	return &writer{b: b, shards: s, progress: progress, seen: make(map[[16]byte]struct{}, b.opts.Samples), counts: newCounts(), cells: map[cellKey]int64{}}
}

func (w *writer) write(bt *batch) error {
	q := &w.quality
	q.Generated += bt.generated
	q.CropRefsChecked += bt.cropRefs
	if bt.unreadable {
		q.ImagesUnreadable++
	}
	for _, d := range bt.drops {
		w.addDrop(d.task, d.reason, d.n)
	}
	start := 0
	for i := range bt.recs {
		m := &bt.recs[i]
		line := bt.data[start:m.end]
		start = m.end
		if _, dup := w.seen[m.key]; dup {
			w.addDrop(m.task, DropDuplicate, 1)
			continue
		}
		w.seen[m.key] = struct{}{}
		if err := w.shards.add(m.stage, m.split, line); err != nil {
			return err
		}
		w.total++
		w.cropRefs += int64(m.crops)
		c := &w.counts
		c.Stage[m.stage]++
		c.Task[m.task]++
		c.Split[m.split]++
		if m.dir != "" {
			c.Direction[m.dir]++
		}
		if m.scale != "" {
			c.Scale[m.scale]++
		}
		if m.bin != "" {
			c.SizeBin[m.bin]++
		}
		if m.popeSplit != "" {
			c.PopeSplit[m.popeSplit]++
			c.PopeAnswer[m.yesNo]++
		}
		w.cells[cellKey{m.stage, m.task, m.dir, m.scale, m.bin}]++
	}
	if w.progress != nil && (w.total-w.lastProg >= 2000 || bt.idx == len(w.b.ix.images)-1) {
		w.lastProg = w.total
		w.progress(w.total, int64(w.b.opts.Samples))
	}
	if bt.idx == len(w.b.ix.images)-1 {
		w.finishCells()
	}
	return nil
}

func (w *writer) addDrop(task, reason string, n int64) {
	q := &w.quality
	switch reason {
	case DropDuplicate:
		q.Duplicates += n
	case DropLeak:
		q.Leaks += n
	case DropBoxOutside:
		q.BoxOutside += n
	case DropSplitViolation:
		q.SplitViolations += n
	case DropUnfilled:
		q.Unfilled += n
	}
	if q.Drops == nil {
		q.Drops = map[string]int64{}
	}
	q.Drops[task+"/"+reason] += n
}

func (w *writer) finishCells() {
	for k, v := range w.cells {
		w.counts.Cells[k.stage+"/"+k.task+"/"+k.dir+"/"+k.scale+"/"+k.bin] = v
	}
}
