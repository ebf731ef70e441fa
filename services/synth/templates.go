package synth

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// A template is an instruction with named slots ("Where is {expr}?"). Slots
// carry everything that must survive verbatim (box text, referring
// expressions, counts); only the words around them may be paraphrased.
type template struct {
	src  string
	lits []string // len(slots)+1 literal pieces
	slot []string
}

func compileTemplate(src string) (template, error) {
	t := template{src: src}
	rest := src
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			t.lits = append(t.lits, rest)
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return template{}, fmt.Errorf("compile template %q: unclosed slot", src)
		}
		name := rest[i+1 : i+j]
		if name == "" || strings.ContainsAny(name, "{ ") {
			return template{}, fmt.Errorf("compile template %q: bad slot name %q", src, name)
		}
		t.lits = append(t.lits, rest[:i])
		t.slot = append(t.slot, name)
		rest = rest[i+j+1:]
	}
	return t, nil
}

// slotSet returns the sorted multiset of slot names, used to check that a
// paraphrase kept every slot.
func (t template) slotSet() string {
	s := append([]string(nil), t.slot...)
	sort.Strings(s)
	return strings.Join(s, ",")
}

// vals maps slot names to values for one render; a short slice beats a map
// in the hot path.
type vals []kv

type kv struct{ k, v string }

func (vs vals) get(k string) string {
	for _, p := range vs {
		if p.k == k {
			return p.v
		}
	}
	return ""
}

func (t *template) appendTo(dst []byte, vs vals) []byte {
	for i, l := range t.lits {
		dst = append(dst, l...)
		if i < len(t.slot) {
			dst = append(dst, vs.get(t.slot[i])...)
		}
	}
	return dst
}

func (t *template) render(vs vals) string { return string(t.appendTo(nil, vs)) }

// Template list keys. Human-side lists may be extended by the rewriter;
// answer-side lists never are (answers are ground truth).
const (
	tInventory    = "inventory"
	tRelationAll  = "relation_all"
	tRelationPair = "relation_pair"
	tCaption      = "caption"
	tRec          = "rec"
	tReg          = "reg"
	tCropName     = "crop_name"
	tCropPick     = "crop_pick"
	tCropLocate   = "crop_locate"
	tBoxPick      = "box_pick"
	tDense        = "dense"
	tQCount       = "q_count"
	tQLocate      = "q_locate"
	tQColor       = "q_color"
	tQWhat        = "q_what"
	tQExists      = "q_exists"
	tQRelation    = "q_relation"
	tQOpen        = "q_open"
	tPope         = "pope"

	aDesc     = "a_desc"
	aPick     = "a_pick"
	aRelation = "a_relation"
	aDenseObj = "a_dense_obj"
	aInvItem  = "a_inventory_item"
	aDenseRel = "a_dense_rel"
	aQRel     = "a_q_relation"
)

// RECPromptTemplates returns a copy of the REC instructions, each with an
// "{expr}" placeholder for the referring expression, for tools that ask
// the way synthesized records do (plugins/gomlx's scene probe).
func RECPromptTemplates() []string { return slices.Clone(promptTemplates[tRec]) }

// promptTemplates are the human-side phrasings, several per task.
var promptTemplates = map[string][]string{
	tInventory: {
		"List every object in the image with its bounding box.",
		"What objects are in this image? Give the box of each one.",
		"Name all the objects you can see and give their coordinates.",
		"Enumerate the objects in the picture, each followed by its bounding box.",
		"Identify each object in the image and provide its box.",
	},
	tRelationAll: {
		"List the relations between the objects in the image, giving the boxes of both objects.",
		"Describe how the objects are placed relative to each other, with both boxes for every pair.",
		"What relations hold between the objects? Give the subject and object boxes.",
		"Write every subject-predicate-object relation you can find, with a box for each object.",
		"Tell me how the objects relate to one another, and give their bounding boxes.",
	},
	tRelationPair: {
		"How is the {subj} positioned relative to the {obj}? Give both boxes.",
		"What is the relation between the {subj} and the {obj}? Include their bounding boxes.",
		"Describe where the {subj} is with respect to the {obj}, with both boxes.",
	},
	tCaption: {
		"Describe the image briefly.",
		"Give a short caption for this image.",
		"Summarize the image in one sentence.",
		"What does this picture show? Answer in one sentence.",
	},
	tRec: {
		"Please provide the bounding box coordinate of the region this sentence describes: {expr}.",
		"Where is {expr}? Answer with a bounding box.",
		"Give the box of {expr}.",
		"Locate {expr} in the image and output its coordinates.",
		"Find {expr} and reply with its bounding box.",
	},
	tReg: {
		"Please provide a short description for this region: {box}.",
		"What is in the region {box}?",
		"Describe the object at {box}.",
		"What object is located at {box}? Name it with its attributes.",
		"Tell me what the region {box} contains.",
	},
	tCropName: {
		"What is the object in the center of this image? Give its name and attributes.",
		"Name the main object shown and describe its attributes.",
		"Identify the central object in this crop.",
		"What do you see in the middle of this image? Answer with the object's name and attributes.",
	},
	tCropPick: {
		"Which of the candidate images is centered on {expr}? Answer with the candidate number.",
		"Pick the image that shows {expr} in its center. Reply with its number.",
		"Among the {k} crops, which one has {expr} at its center?",
	},
	tCropLocate: {
		"The second image is a crop of the first. Give the bounding box of the cropped region in the first image.",
		"Where in the full image was this crop taken? Answer with a bounding box.",
		"Locate the region shown in the second image within the first image.",
		"Find where this crop comes from in the full image and give its box.",
		"Give the coordinates of the area of the first image that the second image shows.",
	},
	tBoxPick: {
		"Which candidate crop shows the region {box} of the image? Answer with the candidate number.",
		"Pick the crop that corresponds to the region {box}.",
		"The box {box} marks an object. Which of the {k} crops is centered on it?",
	},
	tDense: {
		"Describe the image in detail. Give the bounding box of every object you mention.",
		"Provide a detailed, grounded description of the scene: every object with its attributes and box, and how the objects relate.",
		"Tell me everything in this image, with coordinates for each object.",
	},
	tQCount: {
		"How many {plural} are there in the image?",
		"Count the {plural}.",
		"What is the number of {plural} in the picture?",
	},
	tQLocate: {
		"Where is {expr}?",
		"Can you give the box of {expr}?",
		"Point out {expr}.",
	},
	tQColor: {
		"What color is the object at {box}?",
		"Which color does the object in {box} have?",
	},
	tQWhat: {
		"What is the object at {box}?",
		"What can be seen in the region {box}?",
	},
	tQExists: {
		"Is there {a_name} in the image?",
		"Can you see {a_name} here?",
	},
	tQRelation: {
		"How is the {subj} positioned relative to the {obj}?",
		"Where is the {subj} with respect to the {obj}?",
	},
	tQOpen: {
		"What can you see in this image?",
		"What is in this picture?",
	},
	tPope: {
		"Is there {a_name} in the image?",
		"Is there {a_name} in the image? Answer yes or no.",
		"Does the image contain {a_name}?",
		"Can you see {a_name} in this picture? Please answer yes or no.",
	},
}

// answerTemplates are the assistant-side phrasings of text answers.
var answerTemplates = map[string][]string{
	aDesc:     {"{A_desc}.", "It is {a_desc}.", "This is {a_desc}."},
	aPick:     {"{n}", "Candidate {n}.", "It is candidate {n}."},
	aRelation: {"The {subj} {box1} is {pred} the {obj} {box2}.", "The {subj} at {box1} is {pred} the {obj} at {box2}."},
	aInvItem:  {"{desc} {box}", "{desc}: {box}", "{a_desc} at {box}"},
	aDenseObj: {"There is {a_desc} at {box}.", "{A_desc} is at {box}.", "{A_desc} can be seen at {box}."},
	aDenseRel: {"{Subj} {box1} is {pred} {obj} {box2}.", "{Subj} at {box1} is {pred} {obj} at {box2}."},
	aQRel:     {"The {subj} is {pred} the {obj}.", "It is {pred} the {obj}."},
}

type templateSet map[string][]template

func compileAll(src map[string][]string) (templateSet, error) {
	out := make(templateSet, len(src))
	for k, list := range src {
		for _, s := range list {
			t, err := compileTemplate(s)
			if err != nil {
				return nil, err
			}
			out[k] = append(out[k], t)
		}
	}
	return out, nil
}

// article returns "a x" or "an x".
func article(s string) string {
	if s == "" {
		return s
	}
	switch s[0] {
	case 'a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U':
		return "an " + s
	}
	return "a " + s
}

func capitalize(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

// plural makes an English plural good enough for object nouns.
func plural(s string) string {
	switch {
	case strings.HasSuffix(s, "s"), strings.HasSuffix(s, "x"), strings.HasSuffix(s, "ch"), strings.HasSuffix(s, "sh"):
		return s + "es"
	case strings.HasSuffix(s, "y") && len(s) > 1 && !strings.ContainsRune("aeiou", rune(s[len(s)-2])):
		return s[:len(s)-1] + "ies"
	}
	return s + "s"
}

var numberWords = []string{"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"}

func countWord(n int) string {
	if n >= 0 && n < len(numberWords) {
		return numberWords[n]
	}
	return strconv.Itoa(n)
}
