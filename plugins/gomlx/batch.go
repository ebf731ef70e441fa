package gomlx

import (
	"github.com/groundmesh/groundmesh/model"
)

// Bucket sizes. A batch is trimmed to its longest sequence (rounded up to
// seqBucket positions), runs the vision encoder only on the images present
// (rounded up to a multiple of imageBucket(B)), and computes logits only at
// target positions (rounded up to a power of two, at least minLossBucket).
// Padding costs little and the compiled-graph cache stays small.
const (
	seqBucket     = 16
	minLossBucket = 16
)

func imageBucket(batch int) int { return max(1, batch/2) }

// trainBatch is one step's inputs, flattened row-major.
type trainBatch struct {
	B, L, K  int
	textLen  int       // T, the width of textMask
	tokens   []int32   // [B*L]
	patchIdx []int32   // [B*L] row of the patch feature (K*P rows)
	isPatch  []float32 // [B*L]
	images   []float32 // [K*S*S*3] normalized
	lossIdx  []int32   // [Nt] flat position into B*L
	lossTgt  []int32   // [Nt]
	lossW    []float32 // [Nt]
	// patchTgt and patchW are Config.GroundLossWeight's labels [B*L]: the
	// covered fraction of a labelled patch position, and 1 there (0
	// elsewhere).
	patchTgt, patchW []float32
	// patchBox [B*L*4] and patchBoxW [B*L] are Config.BoxLossWeight's: a
	// covered patch position's box (0..1) and its covered fraction (0
	// elsewhere).
	patchBox, patchBoxW []float32
	// Config.Grounder's inputs: textMask [B*T] is 1 at the text positions
	// before a row's first patch (what its sentence vector reads), over the
	// first T positions of the rows (T = textLen, the longest such text
	// rounded up to seqBucket: the sentence encoder runs on those only);
	// imgRow
	// [K] is the batch row each image belongs to (0 for bucket padding);
	// imgFirst [B] is the row's first image (0 for none); refBox [B*4] and
	// refW [B] are the referent's normalized box and 1 where the row has
	// one (Shard.RefBoxes).
	textMask         []float32
	imgRow, imgFirst []int32
	refBox, refW     []float32
	// exists [B] and existsW [B]: the row's existence label (1 present, 0
	// absent) and 1 where it has one (Shard.RefExists).
	exists, existsW []float32
	// cellIDs [B*P*CellWords] are the word ids each cell of a row's first
	// image is labelled with (0 in empty slots), cellIDW 1 in the filled
	// slots, and cellW [B*P] 1 at every cell of a labelled row
	// (Shard.CellWords).
	cellIDs        []int32
	cellIDW, cellW []float32
	// nameImg [nameN] are the first images of the rows with a name
	// (Shard.NameIDs; Config.GrounderNameSlots), nameN their count rounded
	// up to a power of two (image 0 and no label in the padding), so that
	// the name head runs on those images alone; nameIDs [nameN*NameSlots]
	// are their names' words (0 in unlabelled slots) and nameW 1 in the
	// labelled slots.
	nameImg []int32
	nameN   int
	nameIDs []int32
	nameW   []float32
	// labelled counts the positions with a patchW of 1.
	labelled int
	// realTokens counts non-padding positions, for tokens/s.
	realTokens int
}

// batchRow is one sequence with its images in slot order.
type batchRow struct {
	tokens, targets []int32
	images          [][]byte
	patchTargets    []uint8 // model.Shard.PatchTargets' row, or nil
	patchBoxes      []uint8 // model.Shard.PatchBoxes' row, or nil
	refBox          []int32 // model.Shard.RefBoxRow, or nil
	exists          int32   // model.Shard.RefExists' value plus 1: 0 no label, 1 absent, 2 present
	cells           []int32 // model.Shard.CellWordsRow, or nil
	name            []int32 // model.Shard.NameRow, or nil
}

// nameSlots is the second dimension of a batch's nameIDs and nameW:
// Config.GrounderNameSlots, and 1 (all zero, never read) without a name
// head, so that no step input has a zero dimension.
func nameSlots(c model.Config) int { return max(c.GrounderNameSlots, 1) }

func roundUp(x, m int) int { return (x + m - 1) / m * m }

func nextPow2(x int) int {
	p := 1
	for p < x {
		p <<= 1
	}
	return p
}

// makeBatch builds the step inputs for rows of MaxSeq positions.
func makeBatch(c model.Config, rows []batchRow) trainBatch {
	b := len(rows)
	P := c.Patches()
	length, nimg, real := 1, 0, 0
	for _, r := range rows {
		n := seqLen(c, r.tokens, r.targets)
		real += n
		length = max(length, n)
		nimg += len(r.images)
	}
	L := min(roundUp(length, seqBucket), c.MaxSeq)
	T := 1
	for _, r := range rows {
		T = max(T, textBeforeImage(c, r.tokens))
	}
	T = min(roundUp(T, seqBucket), L)
	k := roundUp(max(nimg, 1), imageBucket(b))
	imgLen := c.ImageSize * c.ImageSize * 3
	bt := trainBatch{
		B: b, L: L, K: k, textLen: T,
		tokens:     make([]int32, b*L),
		patchIdx:   make([]int32, b*L),
		isPatch:    make([]float32, b*L),
		patchTgt:   make([]float32, b*L),
		patchW:     make([]float32, b*L),
		patchBox:   make([]float32, b*L*4),
		patchBoxW:  make([]float32, b*L),
		images:     make([]float32, k*imgLen),
		textMask:   make([]float32, b*T),
		imgRow:     make([]int32, k),
		imgFirst:   make([]int32, b),
		refBox:     make([]float32, b*4),
		refW:       make([]float32, b),
		exists:     make([]float32, b),
		existsW:    make([]float32, b),
		cellIDs:    make([]int32, b*P*model.CellWords),
		cellIDW:    make([]float32, b*P*model.CellWords),
		cellW:      make([]float32, b*P),
		realTokens: real,
	}
	img0 := 0 // index of the row's first image among the batch's images
	for i, r := range rows {
		for j, img := range r.images {
			copy(bt.images[(img0+j)*imgLen:], model.NormalizePixels(img))
			bt.imgRow[img0+j] = int32(i)
		}
		if len(r.images) > 0 {
			bt.imgFirst[i] = int32(img0)
			if r.cells != nil {
				for j, id := range r.cells[:P*model.CellWords] {
					if id >= 0 {
						bt.cellIDs[i*P*model.CellWords+j], bt.cellIDW[i*P*model.CellWords+j] = id, 1
					}
				}
				for j := range P {
					bt.cellW[i*P+j] = 1
				}
			}
			if r.exists > 0 {
				bt.exists[i], bt.existsW[i] = float32(r.exists-1), 1
			}
			if r.name != nil && len(r.name) == c.GrounderNameSlots {
				bt.nameImg = append(bt.nameImg, int32(img0))
				for _, id := range r.name {
					if id >= 0 {
						bt.nameIDs, bt.nameW = append(bt.nameIDs, id), append(bt.nameW, 1)
					} else {
						bt.nameIDs, bt.nameW = append(bt.nameIDs, 0), append(bt.nameW, 0)
					}
				}
			}
			if r.refBox != nil {
				bt.refW[i] = 1
				for k := range 4 {
					bt.refBox[i*4+k] = float32(r.refBox[k]) / 1000
				}
			}
		}
		np := 0
		for t := range L {
			tok := r.tokens[t]
			bt.tokens[i*L+t] = tok
			if tok == c.PatchToken && np < len(r.images)*P {
				bt.patchIdx[i*L+t] = int32(img0*P + np)
				bt.isPatch[i*L+t] = 1
				np++
				if r.patchTargets != nil && r.patchTargets[t] != model.NoPatchTarget {
					bt.patchTgt[i*L+t] = float32(r.patchTargets[t]) / model.PatchTargetScale
					bt.patchW[i*L+t] = 1
					bt.labelled++
					if r.patchBoxes != nil && r.patchTargets[t] > 0 {
						bt.patchBoxW[i*L+t] = bt.patchTgt[i*L+t]
						for k := range 4 {
							bt.patchBox[(i*L+t)*4+k] = float32(r.patchBoxes[t*4+k]) / 100
						}
					}
				}
			}
			if tg := r.targets[t]; tg >= 0 {
				bt.lossIdx = append(bt.lossIdx, int32(i*L+t))
				bt.lossTgt = append(bt.lossTgt, tg)
				bt.lossW = append(bt.lossW, 1)
			}
		}
		markTextBeforeImage(c, r.tokens[:L], bt.textMask[i*T:(i+1)*T])
		img0 += len(r.images)
	}
	nt := max(min(nextPow2(max(len(bt.lossIdx), minLossBucket)), b*L), len(bt.lossIdx))
	for len(bt.lossIdx) < nt {
		bt.lossIdx = append(bt.lossIdx, 0)
		bt.lossTgt = append(bt.lossTgt, 0)
		bt.lossW = append(bt.lossW, 0)
	}
	// The named rows' count rounded up to a power of two; the padding is
	// image 0 with no label.
	bt.nameN = nextPow2(max(len(bt.nameImg), 1))
	bt.nameImg = append(bt.nameImg, make([]int32, bt.nameN-len(bt.nameImg))...)
	bt.nameIDs = append(bt.nameIDs, make([]int32, bt.nameN*nameSlots(c)-len(bt.nameIDs))...)
	bt.nameW = append(bt.nameW, make([]float32, bt.nameN*nameSlots(c)-len(bt.nameW))...)
	return bt
}

// hasGrounderLabels reports whether a row of bt has a referent or an
// existence label for Config.Grounder's loss.
func hasGrounderLabels(bt trainBatch) bool {
	for i, w := range bt.refW {
		if w > 0 || bt.existsW[i] > 0 {
			return true
		}
	}
	return false
}

// markTextBeforeImage sets mask[t] to 1 at the non-padding positions of
// tokens before the first patch token (up to len(mask)): the instruction
// Config.Grounder's sentence vector reads. Training batches and inference
// share it.
func markTextBeforeImage(c model.Config, tokens []int32, mask []float32) {
	for t, tok := range tokens[:min(textBeforeImage(c, tokens), len(mask))] {
		if tok != c.PadToken {
			mask[t] = 1
		}
	}
}

// textBeforeImage is the number of positions of tokens before the first
// patch token (all of them without one).
func textBeforeImage(c model.Config, tokens []int32) int {
	for t, tok := range tokens {
		if tok == c.PatchToken {
			return t
		}
	}
	return len(tokens)
}
