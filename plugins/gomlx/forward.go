package gomlx

import (
	"fmt"
	"math"

	"github.com/groundmesh/groundmesh/model"
)

// This file is the plain-Go float32 forward pass used for inference: the
// same function as the GoMLX graph in graph.go (a parity test holds them
// together), with a KV cache so that decoding one token costs one position.

// blockWeights are one pre-LN transformer block's parameters.
type blockWeights struct {
	ln1w, ln1b, qkvw, qkvb, projw, projb []float32
	ln2w, ln2b, fc1w, fc1b, fc2w, fc2b   []float32
	hidden                               int
}

// netWeights holds every parameter, sliced for the forward pass.
type netWeights struct {
	cfg                        model.Config
	patchW, patchB, vpos       []float32
	vblocks                    []blockWeights
	vlnW, vlnB                 []float32
	pfc1W, pfc1B, pfc2W, pfc2B []float32
	tok, pos, patchPos         []float32
	blocks                     []blockWeights
	lnW, lnB, head             []float32
	// Config.TextFusion only.
	fuseLnW, fuseLnB, fuseW, fuseB []float32
	fuseQuery                      []float32   // Config.FusionAttention only; nil without
	stemW, stemB                   [][]float32 // Config.ConvStem only
	// Config.GroundReadout only.
	groundLnW, groundLnB, groundW, groundB, readoutW []float32
}

func newNetWeights(c model.Config, w map[string][]float32) *netWeights {
	blk := func(prefix string, width int) blockWeights {
		return blockWeights{
			ln1w: w[prefix+".ln1.w"], ln1b: w[prefix+".ln1.b"],
			qkvw: w[prefix+".attn.qkv.w"], qkvb: w[prefix+".attn.qkv.b"],
			projw: w[prefix+".attn.out.w"], projb: w[prefix+".attn.out.b"],
			ln2w: w[prefix+".ln2.w"], ln2b: w[prefix+".ln2.b"],
			fc1w: w[prefix+".mlp.fc1.w"], fc1b: w[prefix+".mlp.fc1.b"],
			fc2w: w[prefix+".mlp.fc2.w"], fc2b: w[prefix+".mlp.fc2.b"],
			hidden: c.MLPHidden(width),
		}
	}
	n := &netWeights{
		cfg:    c,
		patchW: w["vision.patch_embed.w"], patchB: w["vision.patch_embed.b"], vpos: w["vision.pos"],
		vlnW: w["vision.ln_f.w"], vlnB: w["vision.ln_f.b"],
		pfc1W: w["projector.fc1.w"], pfc1B: w["projector.fc1.b"],
		pfc2W: w["projector.fc2.w"], pfc2B: w["projector.fc2.b"],
		tok: w["embed.tokens"], pos: w["embed.pos"], patchPos: w["embed.patch_pos"],
		lnW: w["lm.ln_f.w"], lnB: w["lm.ln_f.b"], head: w["lm_head.w"],
		fuseLnW: w["fusion.ln.w"], fuseLnB: w["fusion.ln.b"], fuseW: w["fusion.w"], fuseB: w["fusion.b"],
		fuseQuery: w["fusion.query"],
	}
	if c.GroundReadout {
		n.groundLnW, n.groundLnB, n.groundW, n.groundB = w["ground.ln.w"], w["ground.ln.b"], w["ground.w"], w["ground.b"]
		n.readoutW = w["readout.w"]
	}
	for i := range c.StemChannels() {
		n.stemW = append(n.stemW, w[fmt.Sprintf("vision.stem.%d.w", i)])
		n.stemB = append(n.stemB, w[fmt.Sprintf("vision.stem.%d.b", i)])
	}
	for i := range c.VisionDepth {
		n.vblocks = append(n.vblocks, blk(fmt.Sprintf("vision.blocks.%d", i), c.VisionWidth))
	}
	for i := range c.Depth {
		n.blocks = append(n.blocks, blk(fmt.Sprintf("lm.blocks.%d", i), c.Width))
	}
	return n
}

// linear computes out[t] = x[t]·w + b for rows t of x [rows, in]; w is
// [in, out]. out must hold rows*outDim values.
func linear(out, x []float32, rows, in int, w, b []float32, outDim int) {
	// Four rows at a time share each load of a weight row.
	t := 0
	for ; t+4 <= rows; t += 4 {
		o0 := out[t*outDim : (t+1)*outDim]
		o1 := out[(t+1)*outDim : (t+2)*outDim]
		o2 := out[(t+2)*outDim : (t+3)*outDim]
		o3 := out[(t+3)*outDim : (t+4)*outDim]
		for _, o := range [][]float32{o0, o1, o2, o3} {
			if b != nil {
				copy(o, b)
			} else {
				clear(o)
			}
		}
		for k := range in {
			x0, x1, x2, x3 := x[t*in+k], x[(t+1)*in+k], x[(t+2)*in+k], x[(t+3)*in+k]
			wr := w[k*outDim : (k+1)*outDim]
			o0, o1, o2, o3 := o0[:len(wr)], o1[:len(wr)], o2[:len(wr)], o3[:len(wr)]
			for j, wv := range wr {
				o0[j] += x0 * wv
				o1[j] += x1 * wv
				o2[j] += x2 * wv
				o3[j] += x3 * wv
			}
		}
	}
	for ; t < rows; t++ {
		o := out[t*outDim : (t+1)*outDim]
		if b != nil {
			copy(o, b)
		} else {
			clear(o)
		}
		xr := x[t*in : (t+1)*in]
		for k, xv := range xr {
			if xv == 0 {
				continue
			}
			wr := w[k*outDim : (k+1)*outDim]
			for j, wv := range wr {
				o[j] += xv * wv
			}
		}
	}
}

// layerNorm normalizes each row of x [rows, width] into out.
func layerNorm(out, x []float32, rows, width int, g, b []float32) {
	for t := range rows {
		xr := x[t*width : (t+1)*width]
		var mu float32
		for _, v := range xr {
			mu += v
		}
		mu /= float32(width)
		var va float32
		for _, v := range xr {
			d := v - mu
			va += d * d
		}
		va /= float32(width)
		inv := float32(1 / math.Sqrt(float64(va)+layerNormEps))
		o := out[t*width : (t+1)*width]
		for i, v := range xr {
			o[i] = (v-mu)*inv*g[i] + b[i]
		}
	}
}

func gelu(x []float32) {
	for i, v := range x {
		x[i] = float32(0.5 * float64(v) * (1 + math.Erf(float64(v)/math.Sqrt2)))
	}
}

// blockForward runs rows new positions x [rows, width] (positions
// pos0..pos0+rows-1) through one block, in place. kc and vc hold the keys
// and values of all positions [≥pos0+rows, width]; this call fills rows
// pos0.. of them. With causal, position p attends to keys 0..p; otherwise
// every position attends to all pos0+rows keys. attnSink, when not nil, is
// called with the head-averaged attention of the last new position over all
// its keys.
func blockForward(bw *blockWeights, heads int, x []float32, rows, width int, kc, vc []float32, pos0 int, causal bool, attnSink func([]float32)) {
	hd := width / heads
	h := make([]float32, rows*width)
	layerNorm(h, x, rows, width, bw.ln1w, bw.ln1b)
	qkv := make([]float32, rows*3*width)
	linear(qkv, h, rows, width, bw.qkvw, bw.qkvb, 3*width)
	for t := range rows {
		r := qkv[t*3*width:]
		copy(kc[(pos0+t)*width:(pos0+t+1)*width], r[width:2*width])
		copy(vc[(pos0+t)*width:(pos0+t+1)*width], r[2*width:3*width])
	}
	scale := float32(1 / math.Sqrt(float64(hd)))
	att := make([]float32, rows*width)
	total := pos0 + rows
	scores := make([]float32, total)
	var avg []float32
	for t := range rows {
		nk := total
		if causal {
			nk = pos0 + t + 1
		}
		last := t == rows-1 && attnSink != nil
		if last {
			avg = make([]float32, nk)
		}
		q := qkv[t*3*width : t*3*width+width]
		for hh := range heads {
			qh := q[hh*hd : (hh+1)*hd]
			mx := float32(math.Inf(-1))
			for k := range nk {
				kr := kc[k*width+hh*hd : k*width+(hh+1)*hd]
				var s float32
				for d, qv := range qh {
					s += qv * kr[d]
				}
				s *= scale
				scores[k] = s
				mx = max(mx, s)
			}
			var sum float32
			for k := range nk {
				e := float32(math.Exp(float64(scores[k] - mx)))
				scores[k] = e
				sum += e
			}
			o := att[t*width+hh*hd : t*width+(hh+1)*hd]
			for k := range nk {
				p := scores[k] / sum
				if last {
					avg[k] += p / float32(heads)
				}
				vr := vc[k*width+hh*hd : k*width+(hh+1)*hd]
				for d := range o {
					o[d] += p * vr[d]
				}
			}
		}
	}
	if avg != nil {
		attnSink(avg)
	}
	proj := make([]float32, rows*width)
	linear(proj, att, rows, width, bw.projw, bw.projb, width)
	for i := range x {
		x[i] += proj[i]
	}
	layerNorm(h, x, rows, width, bw.ln2w, bw.ln2b)
	mid := make([]float32, rows*bw.hidden)
	linear(mid, h, rows, width, bw.fc1w, bw.fc1b, bw.hidden)
	gelu(mid)
	linear(proj, mid, rows, bw.hidden, bw.fc2w, bw.fc2b, width)
	for i := range x {
		x[i] += proj[i]
	}
}

// imageFeatures encodes one normalized HWC image into patch features
// [P, featWidth()]: projected, or with Config.TextFusion not yet (embed
// modulates and projects them per position).
func (n *netWeights) imageFeatures(pixels []float32) []float32 {
	c := n.cfg
	g, p := c.ImageSize/c.PatchSize, c.PatchSize
	np, pd, vw := g*g, p*p*3, c.VisionWidth
	var patches []float32
	if chans := c.StemChannels(); chans != nil {
		patches, pd = pixels, 3
		side := c.ImageSize
		for i, out := range chans {
			patches = conv3x3s2(patches, side, pd, n.stemW[i], n.stemB[i], out)
			gelu(patches)
			side, pd = side/2, out
		}
	} else {
		patches = make([]float32, np*pd)
		for gy := range g {
			for gx := range g {
				dst := patches[(gy*g+gx)*pd:]
				i := 0
				for py := range p {
					row := ((gy*p+py)*c.ImageSize + gx*p) * 3
					copy(dst[i:i+p*3], pixels[row:row+p*3])
					i += p * 3
				}
			}
		}
	}
	x := make([]float32, np*vw)
	linear(x, patches, np, pd, n.patchW, n.patchB, vw)
	for i := range x {
		x[i] += n.vpos[i]
	}
	kc, vc := make([]float32, np*vw), make([]float32, np*vw)
	for i := range n.vblocks {
		blockForward(&n.vblocks[i], c.Heads, x, np, vw, kc, vc, 0, false, nil)
	}
	h := make([]float32, np*vw)
	layerNorm(h, x, np, vw, n.vlnW, n.vlnB)
	if c.TextFusion {
		return h // projected per position, after fusion (embed)
	}
	return n.project(h, np)
}

// conv3x3s2 is one of Config.ConvStem's convolutions: x [side, side, in]
// (HWC) with kernel w [3, 3, in, out], stride 2, zero padding 1, plus b;
// it returns [side/2, side/2, out].
func conv3x3s2(x []float32, side, in int, w, b []float32, out int) []float32 {
	os := side / 2
	y := make([]float32, os*os*out)
	for oy := range os {
		for ox := range os {
			dst := y[(oy*os+ox)*out : (oy*os+ox+1)*out]
			copy(dst, b)
			for ky := range 3 {
				iy := 2*oy + ky - 1
				if iy < 0 || iy >= side {
					continue
				}
				for kx := range 3 {
					ix := 2*ox + kx - 1
					if ix < 0 || ix >= side {
						continue
					}
					src := x[(iy*side+ix)*in : (iy*side+ix+1)*in]
					wk := w[(ky*3+kx)*in*out:]
					for ci, v := range src {
						row := wk[ci*out : (ci+1)*out]
						for co := range dst {
							dst[co] += v * row[co]
						}
					}
				}
			}
		}
	}
	return y
}

// featWidth is the width of imageFeatures' rows: the vision width when the
// text modulates them before the projector (Config.TextFusion), else the
// language model's.
func (n *netWeights) featWidth() int {
	if n.cfg.TextFusion {
		return n.cfg.VisionWidth
	}
	return n.cfg.Width
}

// project runs the projector over rows of vision features [rows, VisionWidth].
func (n *netWeights) project(h []float32, rows int) []float32 {
	c := n.cfg
	mid := make([]float32, rows*c.Width)
	linear(mid, h, rows, c.VisionWidth, n.pfc1W, n.pfc1B, c.Width)
	gelu(mid)
	out := make([]float32, rows*c.Width)
	linear(out, mid, rows, c.Width, n.pfc2W, n.pfc2B, c.Width)
	return out
}

// film is Config.TextFusion's scale and shift [2 * VisionWidth] for a patch
// read now: from the mean of the text embeddings seen so far (see
// netGraph.fuse). It changes only when text arrives, so embed computes it
// once per run of patches.
func (n *netWeights) film(sc *seqCache) []float32 {
	c := n.cfg
	w, vw := c.Width, c.VisionWidth
	mean := make([]float32, w)
	if sc.textN > 0 {
		for i, v := range sc.textSum {
			mean[i] = v / sc.textN
		}
	}
	normed := make([]float32, w)
	layerNorm(normed, mean, 1, w, n.fuseLnW, n.fuseLnB)
	out := make([]float32, 2*vw)
	linear(out, normed, 1, w, n.fuseW, n.fuseB, 2*vw)
	return out
}

// fusionWeight is the weight of token embedding e in the text that
// Config.TextFusion pools: exp(clip(fusion.query . e)) with
// FusionAttention, else 1 (see netGraph.fuse).
func (n *netWeights) fusionWeight(e []float32) float32 {
	if n.fuseQuery == nil {
		return 1
	}
	var s float32
	for i, v := range e {
		s += n.fuseQuery[i] * v
	}
	return float32(math.Exp(float64(min(max(s, -model.FusionScoreClip), model.FusionScoreClip))))
}

// seqCache is one sequence's KV cache.
type seqCache struct {
	k, v [][]float32 // per layer [MaxSeq, Width]
	n    int         // positions filled
	// patchPos are the positions holding the first image's patches.
	patchPos []int
	// textSum and textN are the weighted sum and the sum of the weights of
	// the token embeddings of the non-patch positions so far
	// (Config.TextFusion; every weight is 1 without FusionAttention).
	textSum []float32
	textN   float32
	// Config.GroundReadout: rowImg is, for the rows of the call in
	// progress, the image a patch row reads (-1 for text rows); gz, gv and
	// gImg are every patch so far's grounding logit, "ground.ln" state
	// [Width] and image; lastImg is the image of the latest patch (-1 for
	// none yet).
	rowImg  []int
	gz      []float32
	gv      [][]float32
	gImg    []int
	lastImg int
}

func (n *netWeights) newSeqCache() *seqCache {
	c := n.cfg
	sc := &seqCache{textSum: make([]float32, c.Width), lastImg: -1}
	for range c.Depth {
		sc.k = append(sc.k, make([]float32, c.MaxSeq*c.Width))
		sc.v = append(sc.v, make([]float32, c.MaxSeq*c.Width))
	}
	return sc
}

// embed builds the input rows of tokens at positions pos0.., reading image
// patch features in order at patch-token positions.
func (n *netWeights) embed(tokens []int32, pos0 int, feats []float32, featRows int, sc *seqCache) []float32 {
	c := n.cfg
	w := c.Width
	x := make([]float32, len(tokens)*w)
	next := 0
	var film []float32 // Config.TextFusion: valid until the next text token
	sc.rowImg = sc.rowImg[:0]
	for t, tok := range tokens {
		row := x[t*w : (t+1)*w]
		p := n.pos[(pos0+t)*w : (pos0+t+1)*w]
		if tok == c.PatchToken && next < featRows {
			sc.rowImg = append(sc.rowImg, next/c.Patches())
			if c.PatchPositions {
				k := next % c.Patches() // this patch's index in its image
				p = n.patchPos[k*w : (k+1)*w]
			}
			if c.TextFusion {
				if film == nil {
					film = n.film(sc)
				}
				vw := c.VisionWidth
				feat := make([]float32, vw)
				for i, v := range feats[next*vw : (next+1)*vw] {
					feat[i] = v*(1+film[i]) + film[vw+i]
				}
				copy(row, n.project(feat, 1))
			} else {
				copy(row, feats[next*w:(next+1)*w])
			}
			if next < c.Patches() {
				sc.patchPos = append(sc.patchPos, pos0+t)
			}
			next++
		} else {
			sc.rowImg = append(sc.rowImg, -1)
			e := n.tok[int(tok)*w : (int(tok)+1)*w]
			copy(row, e)
			if c.TextFusion {
				wt := n.fusionWeight(e)
				for i, v := range e {
					sc.textSum[i] += wt * v
				}
				sc.textN += wt
				film = nil
			}
		}
		for i := range row {
			row[i] += p[i]
		}
	}
	return x
}

// step runs new positions through the language model using and extending
// sc, and returns the logits of the last new position and, with wantAttn,
// its attention over the first image's patches averaged over heads and
// layers.
func (n *netWeights) step(sc *seqCache, x []float32, rows int, wantAttn bool) ([]float32, []float32) {
	c := n.cfg
	w := c.Width
	var attn []float32
	var sink func([]float32)
	if wantAttn {
		attn = make([]float32, c.Patches())
		sink = func(a []float32) {
			for i, p := range sc.patchPos {
				attn[i] += a[p] / float32(c.Depth)
			}
		}
	}
	for i := range n.blocks {
		if i == c.Depth-1 && c.GroundReadout {
			n.readout(sc, x, rows)
		}
		blockForward(&n.blocks[i], c.Heads, x, rows, w, sc.k[i], sc.v[i], sc.n, true, sink)
	}
	sc.n += rows
	last := x[(rows-1)*w : rows*w]
	h := make([]float32, w)
	layerNorm(h, last, 1, w, n.lnW, n.lnB)
	logits := make([]float32, c.VocabSize)
	linear(logits, h, 1, w, n.head, nil, c.VocabSize)
	return logits, attn
}

// readout adds Config.GroundReadout's term to rows x [rows, Width] (the
// hidden states entering the last block) in order, as netGraph.readout
// does: a patch row's grounding logit and "ground.ln" state join the
// cache; a text row after a patch adds the "readout" layer of the states
// of the latest patch's image, pooled by the softmax of their logits.
func (n *netWeights) readout(sc *seqCache, x []float32, rows int) {
	w := n.cfg.Width
	pooled := make([]float32, w)
	add := make([]float32, w)
	for r := range rows {
		row := x[r*w : (r+1)*w]
		if img := sc.rowImg[r]; img >= 0 {
			normed := make([]float32, w)
			layerNorm(normed, row, 1, w, n.groundLnW, n.groundLnB)
			z := n.groundB[0]
			for i, v := range normed {
				z += v * n.groundW[i]
			}
			sc.gz, sc.gv, sc.gImg, sc.lastImg = append(sc.gz, z), append(sc.gv, normed), append(sc.gImg, img), img
			continue
		}
		if sc.lastImg < 0 {
			continue
		}
		zmax := float32(math.Inf(-1))
		for j, z := range sc.gz {
			if sc.gImg[j] == sc.lastImg {
				zmax = max(zmax, z)
			}
		}
		clear(pooled)
		var sum float32
		for j, z := range sc.gz {
			if sc.gImg[j] != sc.lastImg {
				continue
			}
			e := float32(math.Exp(float64(z - zmax)))
			sum += e
			for i, v := range sc.gv[j] {
				pooled[i] += e * v
			}
		}
		for i := range pooled {
			pooled[i] /= sum
		}
		linear(add, pooled, 1, w, n.readoutW, nil, w)
		for i, v := range add {
			row[i] += v
		}
	}
}
